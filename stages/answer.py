"""Stage answer@<model>: a model (base, or base + a LoRA adapter) answers the questions of some splits.

Writes data/generations/<model>/<split>.jsonl: {id, question, model, sample, answer, completion_tokens,
finished}. The model sees the bare question (the student prompt). Cached like every generation.
"""
from pathlib import Path

import click

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.io import read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--model-name", required=True, help="name recorded in the outputs (base, sft, rs, dpo, ...)")
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--adapter", default=None, help="LoRA adapter folder (none: the base model)")
@click.option("--prepared", default="data/prepared", show_default=True)
@click.option("--splits", default="eval", show_default=True, help="comma-separated split names")
@click.option("--out", "out_dir", required=True, help="output folder, e.g. data/generations/sft")
@click.option("--cache", "cache_path", default=None, help="response cache (default data/cache/answer-<model>.jsonl)")
@click.option("--metrics", "metrics_path", default=None, help="metrics JSON (default metrics/answer_<model>.json)")
@params_option
@stage
def main(model_name, base_dir, adapter, prepared, splits, out_dir, cache_path, metrics_path, params_path):
    from sciexplain.cache import generate_cached
    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.local_backend import LocalBackend
    from sciexplain.prompts import student_messages

    p = read_params(params_path)
    sampling = SamplingParams(max_new_tokens=get(p, "generate.max_new_tokens"), temperature=get(p, "generate.temperature"),
                              top_p=get(p, "generate.top_p"), seed=get(p, "generate.seed"))
    names = [s.strip() for s in splits.split(",") if s.strip()]
    questions = {s: read_jsonl(Path(prepared) / f"{s}.jsonl") for s in names}
    requests = [GenRequest.from_messages(q["id"], student_messages(q["question"])) for s in names for q in questions[s]]
    backend = LocalBackend(base_dir, adapter=adapter, quantize_4bit=get(p, "model.quantize_4bit"),
                           batch_size=get(p, "generate.batch_size"))
    results = generate_cached(backend, requests, sampling, cache_path or f"data/cache/answer-{model_name}.jsonl",
                              desc=f"answer {model_name}")
    it = iter(results)
    for s in names:
        recs = []
        for q in questions[s]:
            r = next(it)
            recs.append({"id": q["id"], "question": q["question"], "model": model_name, "sample": 0, "answer": r.text,
                         "completion_tokens": r.completion_tokens, "finished": r.finished})
        write_jsonl(Path(out_dir) / f"{s}.jsonl", recs)
    n = len(results)
    write_json(metrics_path or f"metrics/answer_{model_name}.json", {
        "model": model_name, "adapter": adapter, "answers": n,
        "mean_completion_tokens": round(sum(r.completion_tokens for r in results) / max(n, 1), 1),
        "finished_fraction": round(sum(r.finished for r in results) / max(n, 1), 4),
        "tokens_per_s": round(backend.tokens_per_second(), 2) if backend.stats["seconds"] else None,
    })
    click.echo(f"{model_name}: {n} answers for {names}")


if __name__ == "__main__":
    main()
