#!/usr/bin/env python3
"""The PyTorch side of experiments/bench_vision.sh: the same WRN training and evaluation steps as
`oe-vision bench --data ... --oe-data ...`, written the way a PyTorch user would.

Data, as oe reads it: the in-distribution classes of an image folder archive (`ARCHIVE#a+b+...`)
decoded once into memory, the outlier classes decoded from their JPEG bytes on demand. Training
batches: 128 in-distribution images (random crop 32 with 4 zero-padding + horizontal flip, CIFAR
normalisation) and 256 outliers (flip + crop) from two DataLoaders with one worker each (the
augmentation runs off the main thread, like oe's prefetch thread), concatenated into one forward
pass; cross-entropy + 0.5 * cross-entropy to the uniform distribution; SGD (momentum 0.9, Nesterov,
weight decay 5e-4); `float(loss)` every step. Evaluation: batches of 200 in eval mode under
no_grad, logits to the CPU. Prints one JSON line with images/s and the share of the time the model
waited for data.
"""
import argparse, io, json, os, sys, tarfile, time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench_torch import WideResNet  # noqa: E402

MEAN = torch.tensor([125.3, 123.0, 113.9]).view(3, 1, 1) / 255
STD = torch.tensor([63.0, 62.1, 66.7]).view(3, 1, 1) / 255


def members(archive, classes):
    """{class: [jpeg bytes, ...]} for the wanted class folders, in sorted file order."""
    out = {c: [] for c in classes}
    with tarfile.open(archive) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            parts = m.name.strip("./").split("/")
            if m.isfile() and len(parts) >= 2 and parts[-2] in out:
                out[parts[-2]].append(t.extractfile(m).read())
    return out


def decode(b):
    return np.array(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.uint8)


def augment(hwc, gen):
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, on one image."""
    x = torch.from_numpy(hwc).permute(2, 0, 1).float() / 255
    x = F.pad(x, (4, 4, 4, 4))
    i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
    x = x[:, i:i + 32, j:j + 32]
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(2)
    return (x - MEAN) / STD


class InMemory(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.gen = torch.Generator().manual_seed(1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return augment(self.images[i], self.gen), self.labels[i]


class Encoded(torch.utils.data.Dataset):
    """Outliers kept as JPEG bytes, decoded per access (as an ImageFolder would read files)."""

    def __init__(self, blobs):
        self.blobs = blobs
        self.gen = torch.Generator().manual_seed(2)

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        return augment(decode(self.blobs[i]), self.gen)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", required=True)
    ap.add_argument("--in-classes", required=True, help="a+b+c")
    ap.add_argument("--oe-classes", required=True, help="d+e")
    ap.add_argument("--depth", type=int, default=40)
    ap.add_argument("--widen", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--oe-batch-size", type=int, default=256)
    ap.add_argument("--eval-batch-size", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers per loader")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    in_classes = sorted(a.in_classes.split("+"))
    t0 = time.perf_counter()
    by_class = members(a.archive, in_classes)
    images, labels = [], []
    for c, name in enumerate(in_classes):
        for b in by_class[name]:
            images.append(decode(b))
            labels.append(c)
    # The training split: the same 4/5 share oe keeps (the split itself does not change the speed).
    keep = np.random.default_rng(0).permutation(len(images))[: len(images) * 4 // 5]
    images = [images[i] for i in keep]
    labels = [labels[i] for i in keep]
    load_s = time.perf_counter() - t0
    oe_blobs = [b for bs in members(a.archive, a.oe_classes.split("+")).values() for b in bs]
    mk = lambda ds, bs: torch.utils.data.DataLoader(
        ds, batch_size=bs, shuffle=True, drop_last=True, num_workers=a.workers,
        persistent_workers=a.workers > 0, prefetch_factor=3 if a.workers > 0 else None)
    in_loader = mk(InMemory(images, torch.tensor(labels)), a.batch_size)
    oe_loader = mk(Encoded(oe_blobs), a.oe_batch_size)

    net = WideResNet(a.depth, len(in_classes), a.widen, 0.3)
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def batches():
        while True:
            for b in zip(in_loader, oe_loader):
                yield b

    it = batches()
    n = a.batch_size
    waited, t_start = 0.0, None
    for k in range(a.warmup + a.steps):
        tw = time.perf_counter()
        (x_in, y_in), x_out = next(it)
        if k > a.warmup:
            waited += time.perf_counter() - tw
        if k == a.warmup:
            t_start = time.perf_counter()
        net.train()
        x = net(torch.cat([x_in, x_out], 0))
        loss = F.cross_entropy(x[:n], y_in)
        loss = loss + 0.5 * -(x[n:].mean(1) - torch.logsumexp(x[n:], dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        float(loss.detach())
    train_s = time.perf_counter() - t_start
    # Stop the loaders' worker processes so they do not compete with the evaluation below.
    del it, in_loader, oe_loader

    x_eval = torch.randn(a.eval_batch_size, 3, 32, 32)
    net.eval()

    def ev():
        with torch.no_grad():
            return net(x_eval).cpu()

    for _ in range(max(a.warmup, 1)):
        ev()
    t = time.perf_counter()
    for _ in range(a.eval_steps):
        ev()
    eval_s = time.perf_counter() - t
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": f"wrn-{a.depth}-{a.widen}",
        "train_pipeline_ips": (a.batch_size + a.oe_batch_size) * a.steps / train_s,
        "data_wait_share": waited / train_s,
        "load_seconds": load_s,
        "eval_ips": a.eval_batch_size * a.eval_steps / eval_s,
    }))


if __name__ == "__main__":
    main()
