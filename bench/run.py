"""``make bench``: every performance figure as a ratio measured side by side in one run, on the real model.

    python -m bench.run                      # models/base (run `dvc repro base_model` first); writes bench/results.json
    python -m bench.run --only generation    # one bench (generation, scoring, training)
    python -m bench.run --tiny --quick       # a tiny random model, a smaller work load (seconds; checks the harness)

Absolute times move on a shared machine; the ratios (same run, same work) are what the targets are about:
generation >= 10x the study's loop and >= 50% of the fp32 matmul roofline, scoring >= 3x one at a time,
training >= 60% of the matmul peak. Each run prints one table and rewrites ``bench/results.json``; what was
tried, predicted and measured goes into ``bench/RESULTS.md`` by hand.
"""
from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import click

from .common import RESULTS_JSON, table, write_results

BENCHES = ("generation", "teacher", "scoring", "training", "precision")


def _embedded_gguf() -> Path | None:
    try:
        from sciexplain.models import embedded_gguf

        return Path(embedded_gguf())
    except Exception:  # noqa: BLE001 -- no embedded model: the llama.cpp contender is left out
        return None


@click.command()
@click.option("--only", type=click.Choice(BENCHES), multiple=True, help="run only these benches")
@click.option("--tiny", is_flag=True, help="a tiny random model instead of models/base (checks the harness)")
@click.option("--quick", is_flag=True, help="fewer contenders and questions")
@click.option("--compile", "compile_lever", is_flag=True, help="also try a static KV cache with torch.compile")
@click.option("--out", "out_path", default=str(RESULTS_JSON), show_default=True)
def main(only, tiny, quick, compile_lever, out_path):
    from sciexplain.machine import cpu_model, facts

    from . import generation, precision, scoring, teacher, training

    # a SIGTERM (a time limit, `kill`) unwinds like Ctrl-C: the llama.cpp server a bench started is stopped on the way
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    base, reward, gguf = "models/base", "models/reward", _embedded_gguf()
    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import save_tiny_base

        base, reward, gguf = str(save_tiny_base(Path(tempfile.mkdtemp()) / "base")), None, None
    elif not Path(base).exists():
        raise click.ClickException(f"{base} not found: run `dvc repro base_model` first (or --tiny)")
    todo = only or BENCHES
    f = facts(engine=True)
    print(f"machine: {cpu_model()}, {f['cores']} cores, "
          f"{', '.join(k for k, v in f['features'].items() if v) or 'no AVX2'}; torch {f.get('torch')}", flush=True)
    results = {}
    if "generation" in todo:
        print("generation:", flush=True)
        results["generation"] = generation.run(base, gguf, n_questions=4 if quick else 16, new_tokens=32 if quick else 128,
                                               loop_sequences=2 if quick else 8, compile_lever=compile_lever, quick=quick)
    if "teacher" in todo and not tiny:  # the real GGUF and the real prompt: no tiny variant
        print("teacher:", flush=True)
        results["teacher"] = teacher.run(base, n=4 if quick else 8, max_new_tokens=64 if quick else 384)
    if "scoring" in todo:
        if reward is None or not Path(reward).exists():
            print("scoring: skipped (no reward adapter: run `dvc repro reward_model`)")
        else:
            print("scoring:", flush=True)
            results["scoring"] = scoring.run(base, reward, n=16 if quick else 48)
    if "training" in todo:
        print("training:", flush=True)
        results["training"] = training.run(base, n=4 if quick else 16)

    if "precision" in todo:
        print("precision (fp32 vs bf16):", flush=True)
        have_reward = reward is not None and Path(reward).exists()
        results["precision"] = precision.run(base, reward if have_reward else None, quick=quick)

    rows = [("bench", "contender", "tokens/s", "ratio", "target", "met")]
    g = results.get("generation")
    if g:
        for name, r in g["contenders"].items():
            if "error" in r:
                rows.append(("generation", name, "-", r["error"][:40], "", ""))
                continue
            rows.append(("generation", name, r["tokens_per_s"], f"{r['vs_study_loop']}x loop, {r['of_roofline']:.0%} roofline", "", ""))
        rows.append(("generation", f"best: {g['best']}", "", f"{g['ratio_vs_study_loop']}x", ">= 10x",
                     "yes" if g["ratio_vs_study_loop"] >= 10 else "no"))
        rows.append(("generation", f"roofline {g['roofline_tokens_per_s']} tokens/s ({g['matmul_peak_gflops']} GFLOP/s)", "",
                     f"{g['share_of_roofline']:.0%}", ">= 50%", "yes" if g["share_of_roofline"] >= 0.5 else "no"))
        for name, r in g.get("stopping_work", {}).get("contenders", {}).items():
            rows.append(("generation (stopping)", name, r["tokens_per_s"], f"{r['vs_generate']}x generate", "", ""))
    te = results.get("teacher")
    if te:
        for name, r in te["contenders"].items():
            rows.append(("teacher", name, r["tokens_per_s"], f"{r['kept']}/{r['answers']} kept, {r['kept_per_minute']}/min",
                         "", ""))
        if "ratio_kept_per_minute" in te:
            rows.append(("teacher", "kept answers per minute, llamacpp / local", "", f"{te['ratio_kept_per_minute']}x",
                         ">= 3x", "yes" if te["ratio_kept_per_minute"] >= 3 else "no"))
    s = results.get("scoring")
    if s:
        for name, r in s["contenders"].items():
            rows.append(("scoring", name, r["tokens_per_s"], f"{r['vs_one_at_a_time']}x, {r['of_peak']:.0%} peak", "", ""))
        rows.append(("scoring", f"best: {s['best']}", "", f"{s['ratio_vs_one_at_a_time']}x", ">= 3x",
                     "yes" if s["ratio_vs_one_at_a_time"] >= 3 else "no"))
    t = results.get("training")
    if t:
        for name, r in t["contenders"].items():
            rows.append(("training", f"LoRA SFT (TRL), {name}", r["tokens_per_s"], f"{r['share_of_peak']:.0%} of peak",
                         "", ""))
        rows.append(("training", f"the default, pad share {t['pad_share_random_order']:.0%} random / "
                                 f"{t['pad_share_length_grouped']:.0%} grouped", t["tokens_per_s"],
                     f"{t['share_of_peak']:.0%} of peak ({t['ratio_vs_before']}x before)", ">= 60%",
                     "yes" if t["share_of_peak"] >= 0.6 else "no"))
    pr = results.get("precision")
    if pr:
        for name, r in pr["contenders"].items():
            extra = (f", rewards move <= {r['max_abs_reward_diff']}, {r['pair_order_flips']:.1%} of pairs flip"
                     if "max_abs_reward_diff" in r else "")
            rows.append((f"precision on {cpu_model()[:28]}", name,
                         f"{r['float32']['tokens_per_s']} fp32 / {r['bfloat16']['tokens_per_s']} bf16",
                         f"bf16 {r['bf16_speedup']}x{extra}", "", ""))
    print()
    print(table(rows))
    if not tiny:
        write_results(results, Path(out_path), merge=bool(only))  # --only: the other benches' figures stay
        print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
