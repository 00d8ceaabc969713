"""Stage answer@<model>: a model of ``answer.models`` (base, or base + its LoRA adapter) answers the questions of
its splits (``answer.models.<model>.splits``; ``--adapter`` / ``--splits`` override the params).

Writes data/generations/<model>/<split>.jsonl: {id, question, model, sample, answer, completion_tokens,
finished}. The model sees the bare question (the student prompt). Cached like every generation.
The backend comes from params ``engine`` (local transformers, vLLM's offline engine, or an OpenAI-compatible
server that serves the model under its name; see sciexplain/backends.py).
"""
from pathlib import Path

import click

from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import DataError, read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--model-name", required=True, help="name recorded in the outputs (base, sft, rs, dpo, ...)")
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--adapter", default=None, help="LoRA adapter folder (default: answer.models.<model>.adapter; none: the base model)")
@click.option("--prepared", default="data/prepared", show_default=True)
@click.option("--splits", default=None, help="comma-separated split names (default: answer.models.<model>.splits)")
@click.option("--out", "out_dir", required=True, help="output folder, e.g. data/generations/sft")
@click.option("--cache", "cache_path", default=None, help="response cache (default data/cache/answer-<model>.jsonl)")
@click.option("--metrics", "metrics_path", default=None, help="metrics JSON (default metrics/answer_<model>.json)")
@params_option
@stage
def main(model_name, base_dir, adapter, prepared, splits, out_dir, cache_path, metrics_path, params_path):
    from sciexplain.answering import answer_questions
    from sciexplain.backends import engine_backend
    from sciexplain.generation import SamplingParams

    from sciexplain import models
    p = read_params(params_path, f"answer@{model_name}")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    sampling = SamplingParams(max_new_tokens=p.generate.max_new_tokens, temperature=p.generate.temperature,
                              top_p=p.generate.top_p, seed=p.generate.seed,
                              repetition_penalty=p.generate.repetition_penalty)
    spec = p.answer.models.get(model_name)
    if splits is None and spec is None:
        raise DataError(params_path, None, f"answer.models.{model_name}", "no such model: add it, or give --splits")
    adapter = adapter if adapter is not None else (spec.adapter if spec else None)
    names = [s.strip() for s in splits.split(",") if s.strip()] if splits is not None else list(spec.splits)
    questions = {s: read_jsonl(Path(prepared) / f"{s}.jsonl") for s in names}
    backend = engine_backend(p, model_name, base_dir, adapter, batch_size=p.generate.batch_size)
    records, summary = answer_questions(backend, [q for s in names for q in questions[s]], sampling,
                                        cache_path or f"data/cache/answer-{model_name}.jsonl", model_name)
    it = iter(records)
    for s in names:
        write_jsonl(Path(out_dir) / f"{s}.jsonl", [next(it) for _ in questions[s]])
    summary["adapter"] = adapter
    summary["backend"] = backend.name
    write_json(metrics_path or f"metrics/answer_{model_name}.json", {**summary, **models.run_facts("generate", p.engine.backend)})
    click.echo(f"{model_name}: {summary['answers']} answers for {names}")


if __name__ == "__main__":
    main()
