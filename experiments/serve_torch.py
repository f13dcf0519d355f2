"""The Python side of experiments/bench_serve.sh: the same GRU and API as `oe-text serve`, written
the way a PyTorch user would (Starlette on uvicorn, one worker; the request's texts batched by
equal length, so no text runs over padding and every score equals `oe-text serve`'s; the paper's
GRU, MSP). Reads the `oe` model directory (run.json, vocab.json,
model.safetensors) so both services serve the same weights and vocabulary.

usage: python3 serve_torch.py MODEL_DIR PORT THREADS
"""
import json
import sys

import torch
import uvicorn
from safetensors.torch import load_file
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

model_dir, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
cfg = json.load(open(f"{model_dir}/run.json"))
labels = cfg["labels"]
tokens = json.load(open(f"{model_dir}/vocab.json"))["tokens"]
index = {t: i for i, t in enumerate(tokens)}
lower = cfg["text"].get("lowercase")
lower = (cfg["in_dataset"] not in ("sst", "sst-fine")) if lower is None else lower


class GRU(torch.nn.Module):
    def __init__(self, vocab, classes):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 50, padding_idx=1)
        self.gru = torch.nn.GRU(50, 128, num_layers=2)
        self.linear = torch.nn.Linear(128, classes)

    def forward(self, x):  # x: [batch, time], left-padded
        e = self.embedding(x.t())
        out, _ = self.gru(e)
        return self.linear(out[-1])


model = GRU(len(tokens), len(labels))
model.load_state_dict(load_file(f"{model_dir}/model.safetensors"))
model.eval()


async def score(request: Request):
    body = await request.json()
    texts = body["texts"]
    ids = [[index.get(w, 0) for w in (t.lower() if lower else t).split()] or [1] for t in texts]
    by_len = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    conf, cls = [0.0] * len(ids), [0] * len(ids)
    with torch.no_grad():
        for idx in by_len.values():
            p = torch.softmax(model(torch.tensor([ids[i] for i in idx])), dim=-1)
            c, k = p.max(dim=-1)
            for i, cc, kk in zip(idx, c.tolist(), k.tolist()):
                conf[i], cls[i] = cc, kk
    return JSONResponse({"score": "msp", "results": [
        {"score": -c, "class": labels[k], "prob": c} for c, k in zip(conf, cls)
    ]})


app = Starlette(routes=[Route("/v1/score", score, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", workers=1)
