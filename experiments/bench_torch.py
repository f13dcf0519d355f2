#!/usr/bin/env python3
"""The page of PyTorch a user would write instead of `oe`: the paper's GRU text protocol, for the
side-by-side benchmark `experiments/bench_torch.sh`. Same model (embedding 50 with a zero pad
row, 2-layer GRU 128, linear head on the last step), same left padding (the GRU runs over the pad
steps), same batches sizes and number of steps, Adam with the per-epoch cosine, `float(loss)`
every step as the reference. Its inputs are the token ids `oe-text train --export-ids` writes, so
both sides see the same texts with the same vocabulary.

    bench_torch.py train --ids FILE                 # baseline, then OE fine-tuning (if FILE has outliers)
    bench_torch.py eval  --ids FILE --weights W     # the paper's protocol on the test and OOD sets
    bench_torch.py score --run DIR --weights W --output OUT INPUT   # batch scoring of a text file

Each prints one JSON line with its phases' wall-clock seconds, measured inside the process (after
`import torch`, so PyTorch's start-up is not counted against it).
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ClfGRU(nn.Module):
    def __init__(self, vocab, classes, pad, emb=50, hidden=128, layers=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=pad)
        self.gru = nn.GRU(emb, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, classes)

    def forward(self, x):  # x: [B, T] left-padded
        out, _ = self.gru(self.embedding(x))
        return self.linear(out[:, -1])


def left_pad(seqs, pad, fix_len=None):
    t = fix_len or max(1, max(len(s) for s in seqs))
    arr = np.full((len(seqs), t), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[:t]
        if len(s):
            arr[i, t - len(s):] = s
    return torch.from_numpy(arr)


def load_weights(model, path):
    from safetensors.torch import load_file
    state = {k: v for k, v in load_file(path).items() if not k.startswith("__")}
    model.load_state_dict(state)


def build(d):
    m = d["model"]
    return ClfGRU(d["vocab_size"], d["classes"], d["pad_id"], m["embedding_dim"], m["hidden"], m["layers"])


def train_phase(model, d, cfg, oe, rng):
    ids, labels = d["train"]["ids"], np.asarray(d["train"]["labels"])
    pad, fix = d["pad_id"], d["fix_len"]
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    lam = (cfg["oe_loss"] or {}).get("uniform", {}).get("lambda", 1.0) if oe is not None else 0.0
    bs, obs = cfg["batch_size"], cfg["oe_batch_size"]
    steps = 0
    model.train()
    for epoch in range(cfg["epochs"]):
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * (1 + math.cos(math.pi * epoch / cfg["epochs"])) / 2
        order = rng.permutation(len(ids))
        in_batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        if oe is not None:
            oorder = rng.permutation(len(oe))
            oe_batches = [oorder[i:i + obs] for i in range(0, len(oorder), obs)]
            pairs = zip(in_batches, oe_batches)  # the reference's zip: truncates
        else:
            pairs = ((b, None) for b in in_batches)
        for b, ob in pairs:
            x = left_pad([ids[i] for i in b], pad, fix)
            y = torch.from_numpy(labels[b])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if ob is not None:
                ologits = model(left_pad([oe[i] for i in ob], pad))
                loss = loss + lam * -F.log_softmax(ologits, 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            (logits.argmax(1) == y).sum().item()
            steps += 1
    return steps


def cmd_train(a):
    d = json.load(open(a.ids))
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model = build(d)
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    t0 = time.perf_counter()
    out["baseline_steps"] = train_phase(model, d, d["baseline"], None, rng)
    out["baseline training"] = time.perf_counter() - t0
    if d.get("oe"):
        t0 = time.perf_counter()
        out["oe_steps"] = train_phase(model, d, d["oe_train"], d["oe"], rng)
        out["oe-finetune"] = time.perf_counter() - t0
    print(json.dumps(out))


@torch.no_grad()
def msp_scores(model, ids, order, bs, pad, fix=None):
    out = []
    for i in range(0, len(order), bs):
        x = left_pad([ids[j] for j in order[i:i + bs]], pad, fix)
        out.append(-F.softmax(model(x), 1).max(1).values)
    return torch.cat(out).numpy().astype(np.float64)


def metrics(s_in, s_out):
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_out": average_precision_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        "fpr90": float(fpr[np.searchsorted(tpr, 0.9)]),
    }


def cmd_eval(a):
    t_load = time.perf_counter()
    d = json.load(open(a.ids))
    model = build(d)
    load_weights(model, a.weights)
    model.eval()
    t0 = time.perf_counter()
    ev, pad, fix = d["eval"], d["pad_id"], d["fix_len"]
    bs = ev["batch_size"]
    tids = d["test"]["ids"]
    order = list(range(len(tids))) if fix else sorted(range(len(tids)), key=lambda i: len(tids[i]))
    s = msp_scores(model, tids, order, bs, pad, fix)
    s_in = np.empty(len(tids))
    s_in[order] = s
    rng = np.random.default_rng(ev["seed"])
    per = len(tids) // ev["id_per_ood"]
    res = {}
    for st in d["ood"]:
        ids = st["ids"]
        n_ood = min(bs * (per // bs + 1), len(ids))
        fixed = st["order"]
        draws = []
        if fixed is not None:
            so = msp_scores(model, ids, fixed[:n_ood], bs, pad)
            draws = [metrics(s_in, so) for _ in range(ev["repeats"])]
        else:
            for _ in range(ev["repeats"]):
                take = rng.permutation(len(ids))[:n_ood]
                draws.append(metrics(s_in, msp_scores(model, ids, take, bs, pad)))
        res[st["name"]] = {k: float(np.mean([m[k] for m in draws])) for k in draws[0]}
    t1 = time.perf_counter()
    print(json.dumps({"evaluation": t1 - t0, "load": t0 - t_load, "threads": torch.get_num_threads(),
                      "test": len(tids), "sets": res}))


@torch.no_grad()
def cmd_score(a):
    t0 = time.perf_counter()
    run = json.load(open(f"{a.run}/run.json"))
    voc = json.load(open(f"{a.run}/vocab.json"))
    stoi = {t: i for i, t in enumerate(voc["tokens"])}
    unk = stoi[voc["unk"]]
    pad = stoi[voc["pad"]]
    labels = run["labels"]
    lower = run["text"].get("lowercase")
    if lower is None:
        lower = run["in_dataset"] not in ("sst", "sst-fine", "sst-phrases", "sst-fine-phrases")
    cut = run["max_train_tokens"]
    m = run["model"]
    model = ClfGRU(run["vocab_size"], len(labels), pad, m["embedding_dim"], m["hidden"], m["layers"])
    load_weights(model, f"{a.run}/model.safetensors")
    model.eval()
    t1 = time.perf_counter()
    with open(a.input, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    ids = []
    for line in lines:
        toks = (line.lower() if lower else line).split()
        ids.append([stoi.get(w, unk) for w in toks][:cut])
    by_len = {}
    for i, s in enumerate(ids):
        by_len.setdefault(len(s), []).append(i)
    score = np.empty(len(ids), dtype=np.float32)
    cls = np.empty(len(ids), dtype=np.int64)
    prob = np.empty(len(ids), dtype=np.float32)
    for n, idx in by_len.items():
        rows = min(max(8192 // max(n, 1), 8), 256)
        for i in range(0, len(idx), rows):
            part = idx[i:i + rows]
            x = torch.tensor([ids[j] for j in part], dtype=torch.int64).view(len(part), max(n, 1)) \
                if n > 0 else torch.full((len(part), 1), pad, dtype=torch.int64)
            p, c = F.softmax(model(x), 1).max(1)
            score[part] = (-p).numpy()
            cls[part] = c.numpy()
            prob[part] = p.numpy()
    with open(a.output, "w", encoding="utf-8") as f:
        f.write("source\tline\tscore\tclass\tprob\n")
        for i in range(len(ids)):
            f.write(f"{a.input}\t{i + 1}\t{float(score[i])!r}\t{labels[cls[i]]}\t{float(prob[i])!r}\n")
    t2 = time.perf_counter()
    print(json.dumps({"scoring": t2 - t0, "scoring_after_load": t2 - t1, "texts": len(ids),
                      "threads": torch.get_num_threads()}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--ids", required=True)
    t.add_argument("--seed", type=int, default=1)
    e = sub.add_parser("eval")
    e.add_argument("--ids", required=True)
    e.add_argument("--weights", required=True)
    s = sub.add_parser("score")
    s.add_argument("--run", required=True)
    s.add_argument("--output", required=True)
    s.add_argument("input")
    a = p.parse_args()
    {"train": cmd_train, "eval": cmd_eval, "score": cmd_score}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
