"""The Python side of experiments/bench_serve.sh: the same model and API as `oe-text serve`, written
the way a PyTorch user would (Starlette on uvicorn, one worker; the request's texts batched by
equal length, so no text runs over padding and every score equals `oe-text serve`'s up to float
rounding; MSP). Reads the `oe` model directory (run.json, vocab.json or tokenizer.json,
model.safetensors) so both services serve the same weights and vocabulary: the paper's GRU, or a
fine-tuned MiniLM (`--model minilm`: a BERT encoder written here with torch.nn.functional, mean
pooling over the tokens and the linear head; tokenised with the `tokenizers` package from the
model directory's tokenizer.json, cut to max_len ids keeping [SEP]).

usage: python3 serve_torch.py MODEL_DIR PORT THREADS   (THREADS 0: PyTorch's default, every core)
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
if threads > 0:
    torch.set_num_threads(threads)
cfg = json.load(open(f"{model_dir}/run.json"))
labels = cfg["labels"]
pretrained = cfg["model"].get("type") == "pretrained"
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


class Bert(torch.nn.Module):
    """Post-layer-norm BERT (Hugging Face names under `bert.`), mean pooling, linear head."""

    def __init__(self, enc, weights):
        super().__init__()
        self.c = enc
        self.w = weights

    def dense(self, x, name):
        return torch.nn.functional.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def ln(self, x, name):
        return torch.nn.functional.layer_norm(
            x, (x.shape[-1],), self.w[name + ".weight"], self.w[name + ".bias"], self.c["layer_norm_eps"])

    def forward(self, ids):  # ids: [batch, time], no padding
        w, c = self.w, self.c
        b, t = ids.shape
        nh = c["num_attention_heads"]
        dh = c["hidden_size"] // nh
        x = w["bert.embeddings.word_embeddings.weight"][ids]
        x = x + w["bert.embeddings.position_embeddings.weight"][:t] + w["bert.embeddings.token_type_embeddings.weight"][0]
        x = self.ln(x, "bert.embeddings.LayerNorm")
        for i in range(c["num_hidden_layers"]):
            p = f"bert.encoder.layer.{i}."
            q, k, v = (self.dense(x, p + "attention.self." + n).view(b, t, nh, dh).transpose(1, 2)
                       for n in ("query", "key", "value"))
            ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
            a = self.ln(x + self.dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            f = torch.nn.functional.gelu(self.dense(a, p + "intermediate.dense"))
            x = self.ln(a + self.dense(f, p + "output.dense"), p + "output.LayerNorm")
        return self.dense(x.mean(1), "classifier")


if pretrained:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.no_truncation()
    max_len = cfg["model"]["head"]["max_len"]
    sep = tok.token_to_id("[SEP]")
    model = Bert(cfg["model"]["encoder"], load_file(f"{model_dir}/model.safetensors"))

    def encode(t):
        ids = tok.encode(t.lower() if lower else t).ids
        return ids if len(ids) <= max_len else ids[:max_len - 1] + [sep]
else:
    tokens = json.load(open(f"{model_dir}/vocab.json"))["tokens"]
    index = {t: i for i, t in enumerate(tokens)}
    model = GRU(len(tokens), len(labels))
    model.load_state_dict(load_file(f"{model_dir}/model.safetensors"))
    model.eval()

    # Cut at the model's longest training text, as `oe-text serve` does (its maximum tokens).
    cut = min([c for c in (cfg["text"].get("max_tokens"), cfg.get("max_train_tokens")) if c] or [None])

    def encode(t):
        return [index.get(w, 0) for w in (t.lower() if lower else t).split()][:cut] or [1]


async def score(request: Request):
    body = await request.json()
    texts = body["texts"]
    ids = [encode(t) for t in texts]
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
