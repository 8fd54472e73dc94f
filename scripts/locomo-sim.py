"""The storer's ranking re-implemented in NumPy, to try ranking changes on the
LoCoMo dev split in seconds (BENCHMARKS.md, "Recall quality on LoCoMo").

It reproduces `iai-bench locomo` (the real processes) to the question on the
configurations checked (hit@10 0.743 and 0.800 without a model, 0.739 with
the static model), and lets a model that iai-mcp cannot run yet (a
transformer) be measured fused with the rest of the ranking. Words: UAX #29
approximated by a regex, our stop words, Snowball English; BM25; the
semantic list fused as in `index.rs`; the cue's dates; the neighbouring
turns. Recency and reinforcement are left out (they do not move LoCoMo:
every turn is years old and none is reinforced).

Usage: python locomo-sim.py LOCOMO_DIR [STATIC_DIR [MINILM_DIR]]
  prints hit@10 (overall, per category) for each configuration in CONFIGS,
  without a model, with the static model (STATIC_DIR, scripts/test-model.sh)
  and with all-MiniLM-L6-v2 (MINILM_DIR, as for compare-embeddings.py).
Needs numpy, tokenizers, safetensors, snowballstemmer (pip). Measurement
only: nothing here runs in iai-mcp.
"""

import datetime
import importlib.util
import math
import os
import re
import sys

import numpy as np
import snowballstemmer

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("ce", os.path.join(HERE, "compare-embeddings.py"))
ce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ce)

# storer/src/index.rs STOP_WORDS
STOP = set(
    "a about after all also am an and any are as at be been before being both but by can could did do does doing "
    "during each for from had has have having he her here hers him his how i if in into is it its just me my of on "
    "or our she so some than that the their them then there these they this those to too us very was we were what "
    "when where which while who whom why will with would you your".split()
)
WORD = re.compile(r"\w+(?:['’.:]\w+)*")
STEM = snowballstemmer.stemmer("english")
MONTHS = "january february march april may june july august september october november december".split()
DATE = re.compile(r"\b(?:(\d{1,2})\s+(%s),?\s+(\d{4})|(%s)\s+(\d{1,2}),?\s+(\d{4}))\b" % ("|".join(MONTHS), "|".join(MONTHS)), re.I)

# Each step of the ranking as it grew (the last is the current one).
CONFIGS = [
    ("BM25 (k1 1.2, b 0.75)", dict(k1=1.2, b=0.75, reach=0, dates=False)),
    ("+ the turn either side (weight 0.3)", dict(k1=1.2, b=0.75, reach=1, dates=False)),
    ("+ two turns either side", dict(k1=1.2, b=0.75, reach=2, dates=False)),
    ("+ dates in the cue", dict(k1=1.2, b=0.75, reach=2, dates=True)),
    ("+ BM25 k1 0.9, b 0.4 (current)", dict(k1=0.9, b=0.4, reach=2, dates=True)),
]


def terms(text, cache={}):
    out = []
    for w in WORD.findall(text):
        w = w.lower()
        if w not in STOP:
            if w not in cache:
                cache[w] = STEM.stemWord(w) if w.isascii() else w
            out.append(cache[w])
    return out


def days(cue):
    out = []
    for m in DATE.finditer(cue):
        d, mo, y = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(5), m.group(4), m.group(6))
        try:
            out.append(datetime.date(int(y), MONTHS.index(mo.lower()) + 1, int(d)))
        except ValueError:
            pass
    return out


def turn_days(path):
    import json

    c = json.load(open(path))
    out = []
    for s in sorted({int(k.split("_")[1]) for k in c if k.startswith("session_") and k.split("_")[1].isdigit()}):
        m = re.search(r"(\d{1,2}) (\w+), (\d{4})", c.get(f"session_{s}_date_time", ""))
        day = datetime.date(int(m.group(3)), MONTHS.index(m.group(2).lower()) + 1, int(m.group(1)))
        out += [day] * len(c.get(f"session_{s}") or [])
    return out


def bm25(docs, k1, b):
    n = len(docs)
    df = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    avg = sum(map(len, docs)) / n
    post = {}
    for i, d in enumerate(docs):
        for t in set(d):
            post.setdefault(t, []).append((i, d.count(t)))

    def score(q):
        s = np.zeros(n)
        for t in set(q):
            idf = math.log(1 + (n - df.get(t, 0) + 0.5) / (df.get(t, 0) + 0.5))
            for i, tf in post.get(t, []):
                s[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(docs[i]) / avg))
        return s

    return score


def evaluate(convs, cfg, vectors=None):
    hits, per_cat = 0, {}
    for name, turns, dias, qs, cats, tdays in convs:
        score = bm25([terms(t) for t in turns], cfg["k1"], cfg["b"])
        for qi, (q, ev) in enumerate(qs):
            s = score(terms(q))
            if vectors is not None:
                # index.rs: both lists' best 100, BM25 / best + 0.3 x cosine
                # above 0.25 / the best's.
                tv, qv = vectors[name]
                lex, sem = np.zeros(len(turns)), np.zeros(len(turns))
                top = [i for i in np.argsort(-s)[:100] if s[i] > 0]
                if top:
                    lex[top] = s[top] / s[top[0]]
                cos = tv @ qv[qi]
                top = [i for i in np.argsort(-cos)[:100] if cos[i] >= 0.25]
                if top and cos[top[0]] > 0.25:
                    sem[top] = (cos[top] - 0.25) / (cos[top[0]] - 0.25)
                s = lex + 0.3 * sem
            named = days(q) if cfg["dates"] else []
            if named:
                s = s * np.array([2.0 if any(abs((d - x).days) <= 1 for x in named) else 1.0 for d in tdays])
            spread = s.copy()
            for d in range(1, cfg["reach"] + 1):
                spread[d:] += 0.3 * s[:-d]
                spread[:-d] += 0.3 * s[d:]
            top = {dias[i] for i in np.argsort(-spread, kind="stable")[:10] if spread[i] > 0}
            hit = any(e in top for e in ev)
            hits += hit
            c = per_cat.setdefault(cats[qi], [0, 0])
            c[0] += 1
            c[1] += hit
    n = sum(c[0] for c in per_cat.values())
    return hits / n, {k: round(v[1] / v[0], 3) for k, v in sorted(per_cat.items())}


def main():
    import glob
    import json

    locomo = sys.argv[1]
    convs = []
    for (name, turns, dias, qs), path in zip(ce.conversations(locomo), sorted(glob.glob(os.path.join(locomo, "*.json")))):
        cats = [q["category"] for q in json.load(open(path))["qa"] if 1 <= q.get("category", 0) <= 4 and any(e.strip() for x in q.get("evidence", []) for e in x.split(";"))]
        convs.append((name, turns, dias, qs, cats, turn_days(path)))
    models = [("no model", None)]
    if len(sys.argv) > 2:
        models.append(("static model", ce.Static(sys.argv[2], 128)))
    if len(sys.argv) > 3:
        models.append(("all-MiniLM-L6-v2", ce.MiniLM(sys.argv[3])))
    for label, m in models:
        vectors = None
        if m is not None:
            vectors = {name: (np.stack([m.embed(t) for t in turns]), np.stack([m.embed(q) for q, _ in qs])) for name, turns, _, qs, _, _ in convs}
        for step, cfg in CONFIGS if m is None else CONFIGS[-1:]:
            hit10, cats = evaluate(convs, cfg, vectors)
            print(f"{label:<18} {step:<38} hit@10 {hit10:.3f}  per category {cats}", flush=True)


if __name__ == "__main__":
    main()
