#!/usr/bin/env python3
"""Reference throughput of the same WRN steps in PyTorch (README, "The paper's protocol: vision").

Train step: 128 in-distribution + 256 outlier images (32x32) concatenated in one forward pass,
cross-entropy + 0.5 * cross-entropy-to-uniform, SGD(lr, momentum 0.9, nesterov, wd 5e-4),
`float(loss)` every step (as the reference's loss_avg). Eval: batches of 200 in eval mode under
no_grad, softmax to the CPU. Inputs are random tensors already on the device. Prints one JSON line.
"""
import argparse, json, math, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, drop):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = F.relu(self.bn1(x))
            out = x
        else:
            out = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(out)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        out = self.conv2(out)
        return (x if self.equal else self.convShortcut(x)) + out


class WideResNet(nn.Module):
    def __init__(self, depth, classes, widen, drop):
        super().__init__()
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        layers = []
        for g, stride in enumerate([1, 2, 2]):
            for i in range(n):
                layers.append(BasicBlock(ch[g] if i == 0 else ch[g + 1], ch[g + 1], stride if i == 0 else 1, drop))
        self.blocks = nn.Sequential(*layers)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / k))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x):
        out = F.relu(self.bn1(self.blocks(self.conv1(x))))
        out = F.avg_pool2d(out, 8)
        return self.fc(out.view(out.size(0), -1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=40)
    ap.add_argument("--widen", type=int, default=2)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--oe-batch-size", type=int, default=256)
    ap.add_argument("--eval-batch-size", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch.cuda.is_available() is False")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = WideResNet(a.depth, a.classes, a.widen, 0.3).to(dev)
    opt = torch.optim.SGD(net.parameters(), 0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x_in = torch.randn(a.batch_size, 3, 32, 32, device=dev)
    y_in = torch.randint(0, a.classes, (a.batch_size,), device=dev)
    x_out = torch.randn(a.oe_batch_size, 3, 32, 32, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        net.train()
        x = net(torch.cat([x_in, x_out], 0))
        loss = F.cross_entropy(x[: a.batch_size], y_in)
        loss = loss + 0.5 * -(x[a.batch_size:].mean(1) - torch.logsumexp(x[a.batch_size:], dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    for _ in range(a.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    train_s = time.perf_counter() - t
    x_eval = torch.randn(a.eval_batch_size, 3, 32, 32, device=dev)
    net.eval()

    def ev():
        with torch.no_grad():
            return F.softmax(net(x_eval), dim=1).cpu()

    for _ in range(max(a.warmup, 1)):
        ev()
    sync()
    t = time.perf_counter()
    for _ in range(a.eval_steps):
        ev()
    sync()
    eval_s = time.perf_counter() - t
    print(json.dumps({
        "device": str(dev) + (" " + torch.cuda.get_device_name(0) if dev.type == "cuda" else ""),
        "torch": torch.__version__,
        "model": f"wrn-{a.depth}-{a.widen}",
        "train_ips": (a.batch_size + a.oe_batch_size) * a.steps / train_s,
        "train_step_ms": 1000 * train_s / a.steps,
        "eval_ips": a.eval_batch_size * a.eval_steps / eval_s,
    }))


if __name__ == "__main__":
    main()
