"""Reward scoring: one at a time vs length-sorted batches (what ``score`` does), on real answers of mixed length.

A CPU forward pass is compute-bound: batching saves only per-call overhead (Python, kernel launches, small
matmuls that do not fill the cores), so the ratio is bounded by how far one-at-a-time already is from the
matmul peak; the share of the peak is reported beside the ratio to show that bound.
"""
from __future__ import annotations

import glob

from sciexplain.records import read_jsonl

from .common import flops_per_token, matmul_peak_gflops, timed


def answers(n: int) -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(glob.glob("data/generations/*/eval.jsonl")):
        for r in read_jsonl(path, allow_empty=True):
            if r.get("answer"):
                pairs.append((r["question"], r["answer"]))
    if not pairs:  # no generations yet: synthetic answers of mixed length
        pairs = [(f"Why does question {i} matter?", "An explanation with a mechanism and an example. " * (1 + i % 9))
                 for i in range(n)]
    return pairs[:n]


def run(base_dir: str, reward_dir: str, n: int = 48) -> dict:
    import torch

    from sciexplain.reward import RewardScorer

    scorer = RewardScorer(base_dir, reward_dir)
    seqs = [scorer.encode(q, a) for q, a in answers(n)]
    tokens = sum(len(s) for s in seqs)
    peak = matmul_peak_gflops(threads=torch.get_num_threads())
    per_token = flops_per_token(scorer.model)
    scorer.score_ids(seqs[:2], batch_size=2)  # warm-up
    rows = {}
    for name, fn in [
        ("one at a time", lambda: [scorer.score_ids([s], batch_size=1) for s in seqs]),
        ("length-sorted batches of 8 (today)", lambda: scorer.score_ids(seqs, batch_size=8)),
        ("length-sorted batches of 32", lambda: scorer.score_ids(seqs, batch_size=32)),
    ]:
        _, dt = timed(fn)
        rows[name] = {"seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1),
                      "of_peak": round(tokens / dt * per_token / (peak * 1e9), 3)}
        print(f"  scoring, {name}: {dt:.2f} s, {tokens / dt:.0f} tokens/s", flush=True)
    single = rows["one at a time"]["seconds"]
    for r in rows.values():
        r["vs_one_at_a_time"] = round(single / r["seconds"], 2)
    best = max(rows, key=lambda k: rows[k]["vs_one_at_a_time"])
    return {"answers": len(seqs), "tokens": tokens, "matmul_peak_gflops": round(peak, 1), "contenders": rows,
            "best": best, "ratio_vs_one_at_a_time": rows[best]["vs_one_at_a_time"], "target": 3.0}
