"""Performance benchmarks (not timed tests): print throughput and speed-up ratios.

    python -m bench.run                 # on models/base (the real model; run `dvc repro base_model` first)
    python -m bench.run --tiny          # on a tiny random model (seconds)

Targets (ratios, so they hold on any machine): batched generation >= 4x the tokens/s of one-at-a-time
generation at 16 sequences; batched reward scoring >= 1x one-at-a-time scoring on a CPU (a forward pass is
compute-bound there, so batching only saves overhead; expect >= 2x on a GPU). Measured on 2 CPU cores with
SmolLM2-135M: generation 100 vs 17.6 tokens/s (ratio 5.7), scoring ratio 1.24.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_generation(base_dir, n: int, max_new_tokens: int) -> float:
    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.local_backend import LocalBackend
    from sciexplain.prompts import student_messages

    questions = [l for l in Path("data/raw/questions.jsonl").read_text().splitlines()][:n]
    import json

    reqs = [GenRequest.from_messages(str(i), student_messages(json.loads(q)["question"])) for i, q in enumerate(questions)]
    sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    backend = LocalBackend(base_dir, batch_size=n)
    backend.generate(reqs[:1], sp)  # warm-up
    res, t_batch = _time(lambda: backend.generate(reqs, sp))
    tok_batch = sum(r.completion_tokens for r in res)
    singles, t_single = _time(lambda: [backend.generate([r], sp)[0] for r in reqs[:4]])
    tok_single = sum(r.completion_tokens for r in singles)
    ratio = (tok_batch / t_batch) / (tok_single / t_single)
    print(f"generation: batched {n}x{max_new_tokens}: {tok_batch / t_batch:.1f} tokens/s; one at a time: "
          f"{tok_single / t_single:.1f} tokens/s; ratio {ratio:.2f} (target >= 4)")
    return ratio


def bench_scoring(base_dir, reward_dir, n: int) -> float | None:
    if reward_dir is None or not Path(reward_dir).exists():
        print("scoring: skipped (no reward adapter; run `dvc repro reward_model`)")
        return None
    from sciexplain.reward import RewardScorer

    qs = [f"Why does question {i} matter?" for i in range(n)]
    ans = [("An explanation with a mechanism and an example. " * (1 + i % 5)).strip() for i in range(n)]
    scorer = RewardScorer(base_dir, reward_dir)
    _, t_batch = _time(lambda: scorer.score_ids([scorer.encode(q, a) for q, a in zip(qs, ans)], batch_size=8))
    _, t_single = _time(lambda: [scorer.score_ids([scorer.encode(q, a)], batch_size=1) for q, a in zip(qs, ans)])
    ratio = t_single / t_batch
    print(f"scoring: {n} answers batched {t_batch:.2f} s, one at a time {t_single:.2f} s; ratio {ratio:.2f} (target >= 1 on CPU, >= 2 on GPU)")
    return ratio


@click.command()
@click.option("--tiny", is_flag=True, help="use a tiny random model instead of models/base")
@click.option("--n", default=16, show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True)
def main(tiny, n, max_new_tokens):
    base, reward = "models/base", "models/reward"
    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import save_tiny_base

        base = save_tiny_base(Path(tempfile.mkdtemp()) / "base")
        reward = None
    bench_generation(base, n, max_new_tokens)
    bench_scoring(base, reward, n)


if __name__ == "__main__":
    main()
