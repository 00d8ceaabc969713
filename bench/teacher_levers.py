"""Which lever makes the local teacher finish its answers: plan format, token budget, number of few-shot examples.

Each condition ``plan:shots:max_new_tokens`` answers the first ``--n`` questions of a prepared split with the
local backend (the real base model), through its own response cache, and is summarised with the teacher
stage's own clean-up (:func:`sciexplain.prompts.clean_teacher_answer`): finished share, empty share, kept
share, completion tokens. ``--student`` adds the base model on the bare question (what ``answer_base`` does)
at each listed budget, for the evaluation-answer length distribution.

    python -m bench.teacher_levers --n 16 full:2:192 full:2:384 none:2:256 short:2:256 --student 384
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import click


def summarise(results, clean, tok=None) -> dict:
    toks = sorted(r.completion_tokens for r in results)
    n = len(results)
    reasons = [clean(r)[1] for r in results] if clean else []
    out = {
        "n": n,
        "finished": round(sum(r.finished for r in results) / n, 3),
        "tokens_mean": round(statistics.mean(toks), 1),
        "tokens_median": statistics.median(toks),
        "tokens_p90": toks[min(n - 1, int(0.9 * n))],
        "tokens_max": toks[-1],
        "finished_tokens_max": max((r.completion_tokens for r in results if r.finished), default=None),
    }
    if clean:
        out |= {"empty": round(reasons.count("empty") / n, 3), "kept": round(reasons.count(None) / n, 3),
                "drops": {k: reasons.count(k) for k in sorted(set(reasons) - {None})}}
    return out


@click.command()
@click.argument("conditions", nargs=-1)
@click.option("--split", default="data/prepared/sft.jsonl", show_default=True)
@click.option("--n", "n_questions", default=16, show_default=True)
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--prompts", "prompts_dir", default="prompts", show_default=True)
@click.option("--student", "student_budgets", default="", help="comma-separated budgets for the bare-question base model")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--cache-dir", default="/tmp/teacher_levers", show_default=True)
@click.option("--out", "out_path", default="bench/teacher_levers.jsonl", show_default=True, help="appends one line per condition")
def main(conditions, split, n_questions, base_dir, prompts_dir, student_budgets, batch_size, cache_dir, out_path):
    from sciexplain import prompts
    from sciexplain.backends import make_backend
    from sciexplain.cache import generate_cached
    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.records import read_jsonl

    questions = read_jsonl(split)[:n_questions]
    backend = make_backend("local", base_dir=base_dir, batch_size=batch_size)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    jobs = [("teacher", c) for c in conditions] + [("student", b) for b in student_budgets.split(",") if b]
    for kind, cond in jobs:
        if kind == "teacher":
            plan, shots, budget = cond.split(":")
            system = prompts.load_system_prompt(prompts_dir, plan)
            examples = prompts.load_few_shot(prompts_dir, int(shots), plan)
            reqs = [GenRequest.from_messages(q["id"], prompts.teacher_messages(q["question"], system, examples, plan))
                    for q in questions]
            def clean(r):
                return prompts.clean_teacher_answer(r.text, r.finished, 30, "trim")
        else:
            plan, shots, budget = "-", 0, cond
            reqs = [GenRequest.from_messages(q["id"], prompts.student_messages(q["question"])) for q in questions]
            clean = None
        sampling = SamplingParams(max_new_tokens=int(budget), temperature=0.7, top_p=0.9, seed=0)
        t0 = time.time()
        res = generate_cached(backend, reqs, sampling, Path(cache_dir) / f"{kind}-{cond.replace(':', '_')}.jsonl",
                              desc=f"{kind} {cond}")
        row = {"kind": kind, "plan": plan, "shots": int(shots), "max_new_tokens": int(budget), "split": split,
               "seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d")} | summarise(res, clean)
        click.echo(json.dumps(row))
        with open(out_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
