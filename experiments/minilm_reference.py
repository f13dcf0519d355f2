#!/usr/bin/env python3
"""Independent reference values for tests/bert.rs: all-MiniLM-L6-v2 sentence embeddings.

A BERT encoder written from scratch in numpy (float64), reading `model.safetensors` with the
`safetensors` package and tokenising with the `tokenizers` package (the model's own
`tokenizer.json`, padding and truncation switched off so each sentence runs alone, no padding).
Nothing here shares code with src/models/bert.rs.

    python3 -m venv /tmp/oe-venv && /tmp/oe-venv/bin/pip install numpy scipy safetensors tokenizers
    /tmp/oe-venv/bin/python experiments/minilm_reference.py [.models/all-MiniLM-L6-v2]

Measured with numpy 2.4.6, scipy 1.17.1, safetensors 0.8.0, tokenizers 0.23.3.

BERT (Devlin et al. 2019; Hugging Face `BertModel`, post-layer-norm):
  x   = LayerNorm(word[ids] + position[0..T] + token_type[0])
  per layer: a = LayerNorm(x + Dense_o(softmax(Q K^T / sqrt(d_head)) V)),  x = LayerNorm(a + W2 gelu(W1 a))
  with exact (erf) GELU and LayerNorm eps from config.json (1e-12).
Sentence embedding (sentence-transformers Pooling, mean_tokens): the mean of the last hidden states over
the attention mask (all tokens here, [CLS] and [SEP] included). Printed un-normalised (the model card's
final Normalize module is not applied), with its L2 norm.
"""

import json
import sys

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf
from tokenizers import Tokenizer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, a must-see!",
    "Stock markets fell sharply on Tuesday after the announcement.",
]


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def dense(x, p, name):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def encode(ids, p, cfg):
    t = len(ids)
    eps = cfg["layer_norm_eps"]
    h = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    dh = h // nh
    x = p["embeddings.word_embeddings.weight"][ids]
    x = x + p["embeddings.position_embeddings.weight"][:t]
    x = x + p["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        pre = f"encoder.layer.{i}."
        q = dense(x, p, pre + "attention.self.query").reshape(t, nh, dh).transpose(1, 0, 2)
        k = dense(x, p, pre + "attention.self.key").reshape(t, nh, dh).transpose(1, 0, 2)
        v = dense(x, p, pre + "attention.self.value").reshape(t, nh, dh).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(t, h)
        a = layer_norm(
            x + dense(ctx, p, pre + "attention.output.dense"),
            p[pre + "attention.output.LayerNorm.weight"],
            p[pre + "attention.output.LayerNorm.bias"],
            eps,
        )
        f = dense(a, p, pre + "intermediate.dense")
        f = 0.5 * f * (1.0 + erf(f / np.sqrt(2.0)))
        x = layer_norm(
            a + dense(f, p, pre + "output.dense"),
            p[pre + "output.LayerNorm.weight"],
            p[pre + "output.LayerNorm.bias"],
            eps,
        )
    return x


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else ".models/all-MiniLM-L6-v2"
    cfg = json.load(open(f"{d}/config.json"))
    p = {k: v.astype(np.float64) for k, v in load_file(f"{d}/model.safetensors").items()}
    tk = Tokenizer.from_file(f"{d}/tokenizer.json")
    tk.no_padding()
    tk.no_truncation()
    embs = []
    for s in SENTENCES:
        ids = tk.encode(s).ids
        e = encode(np.array(ids), p, cfg).mean(0)
        embs.append(e)
        print(f"// {s!r}")
        print(f"ids: {ids}")
        print("first8: [" + ", ".join(f"{v:.6f}" for v in e[:8]) + "]")
        print(f"norm: {np.linalg.norm(e):.6f}")
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    print(f"cos(0,1): {cos(embs[0], embs[1]):.6f}")
    print(f"cos(0,2): {cos(embs[0], embs[2]):.6f}")
    print(f"cos(2,3): {cos(embs[2], embs[3]):.6f}")


if __name__ == "__main__":
    main()
