"""Checks that `iai-bench store --json` and `iai-bench locomo --json` printed
well-formed reports. The figures themselves are not judged here (they depend
on the machine); BENCHMARKS.md records them."""

import json
import math
import sys


def number(v, where):
    assert isinstance(v, (int, float)) and math.isfinite(v), f"{where}: {v!r} is not a finite number"
    return v


def check_store(path, corpus):
    store = json.load(open(path))
    assert store["records"] == 1000, store
    assert store["corpus"] == corpus, store
    for part in ("capture", "recall", "unlock_total", "unlock_rebuilding_total", "argon2"):
        for k in ("p50_us", "p95_us", "p99_us"):
            assert number(store[part][k], f"{part}.{k}") > 0
        assert store[part]["p50_us"] <= store[part]["p95_us"] <= store[part]["p99_us"], part
    for k in ("captures_per_s", "storer_peak_rss_mib", "keyholder_peak_rss_mib", "recall_hits_mean",
              "storer_rss_after_unlock_mib", "storer_rss_after_1000_recalls_mib", "text_mb",
              "storer_rss_after_rebuilding_unlock_mib", "rebuild_over_snapshot_unlock"):
        assert number(store[k], k) > 0, k
    for k in ("storer_load_from_snapshot_p50_ms", "storer_load_rebuilding_p50_ms"):
        assert number(store[k], k) >= 0, k


check_store(sys.argv[1], "synthetic")
check_store(sys.argv[3], "realistic")


def check_locomo(path, model, sessions):
    locomo = json.load(open(path))
    assert locomo["model"] is model and locomo["sessions"] is sessions, (path, locomo.get("model"))
    rows = [locomo["overall"], *locomo["per_category"].values(), *locomo["per_conversation"].values()]
    for row in rows:
        assert row["questions"] >= 0
        for k in ("hit@5", "hit@10", "recall@5", "recall@10"):
            assert 0.0 <= number(row[k], k) <= 1.0, row
        assert row["hit@5"] <= row["hit@10"] and row["recall@5"] <= row["recall@10"], row
    assert locomo["overall"]["questions"] > 0
    assert set(locomo["per_category"]) == {"1", "2", "3", "4"}


check_locomo(sys.argv[2], False, True)
check_locomo(sys.argv[4], True, False)
print("4 passed, 0 failed")
