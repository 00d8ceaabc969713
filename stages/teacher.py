"""Stage teacher: answers written under the quality-metrics prompt (plan removed, filtered), per split.

Backends (sciexplain/backends.py): ``llamacpp`` (llama.cpp in-process on a GGUF, default the embedded model
= the base model itself: context distillation, offline; the shared system prompt and few-shot turns are computed
once), ``local`` (the same with transformers on models/base), ``vllm`` (the same model on vLLM's offline engine, GPU),
``openai`` (OpenAI or any OpenAI-compatible server via ``teacher.base_url``; key from the environment;
``teacher.weights`` names the local weights a self-hosted server was started from, for the cache key),
``batch-export`` / ``batch-import`` (the OpenAI Batch API file format). Every call goes through the
append-only response cache, so a rerun or a resumed crash never repeats a finished call.

``teacher.plan`` (full | short | none) picks the chain of thought of the prompt (sciexplain/prompts.py).

The teacher must beat its student: after filtering, the kept sft answers are judged against the student's own
answers to the bare questions (``--student``, the base model's sft answers from ``answer_base``) by the judge
panel, with the judge's human agreement from ``--validation`` (metrics/validate.json)
(:mod:`sciexplain.teacher_check`); the result is the ``vs_student`` block of metrics/teacher.json, and a
warning goes to stderr when the teacher is not better. The stage runs before ``sft``.
"""
import json
import sys
from pathlib import Path

import click

from sciexplain.cli import generation_outputs, params_option, read_params, stage
from sciexplain.records import read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--prepared", default="data/prepared", show_default=True, help="folder of split files")
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--prompts", "prompts_dir", default="prompts", show_default=True)
@generation_outputs("data/generations/teacher", "data/cache/teacher.jsonl", "metrics/teacher.json", out_dest="out_dir")
@click.option("--student", "student_path", default="data/generations/base/sft.jsonl", show_default=True,
              help="the student's (base model's) answers to the sft questions; the check is skipped when missing")
@click.option("--validation", "validation_path", default="metrics/validate.json", show_default=True,
              help="judges' human agreement (validate stage)")
@click.option("--judge-prompt", "judge_prompt", default="prompts/judge.md", show_default=True)
@click.option("--judge-cache", "judge_cache", default="data/cache/judge", show_default=True)
@params_option
@stage
def main(prepared, base_dir, prompts_dir, out_dir, cache_path, metrics_path, student_path, validation_path,
         judge_prompt, judge_cache, params_path):
    from sciexplain import models, teacher
    from sciexplain.batch_api import export_batch, import_batch
    from sciexplain.backends import make_backend
    from sciexplain.cache import generate_cached
    from sciexplain.generation import SamplingParams

    p = read_params(params_path, "teacher")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    t = p.teacher
    sampling = SamplingParams(max_new_tokens=t.max_new_tokens, temperature=t.temperature, top_p=t.top_p,
                              seed=t.seed, repetition_penalty=t.repetition_penalty)
    questions, requests, shots = teacher.requests(t, prompts_dir, prepared)
    model_name = t.model if t.backend not in teacher.LOCAL_BACKENDS else None
    if t.backend == "batch-export":
        n = export_batch(requests, sampling, model_name, t.batch_file)
        raise click.ClickException(f"wrote {n} Batch API requests to {t.batch_file}: submit it, download the output, "
                                   f"then set teacher.backend=batch-import and teacher.batch_file=<output> and rerun")
    if t.backend == "batch-import":
        results, log = import_batch(t.batch_file, requests), "batch import"
    else:
        backend = make_backend(t.backend, base_dir=base_dir, batch_size=t.batch_size, model=model_name,
                               quantize_4bit=p.model.quantize_4bit, base_url=t.base_url, api_key_env=t.api_key_env,
                               max_concurrency=t.max_concurrency, max_retries=t.max_retries, weights=t.weights,
                               vllm=p.vllm.model_dump() if t.backend == "vllm" else None, gguf=t.gguf,
                               where="teacher.backend")
        results = generate_cached(backend, requests, sampling, cache_path, desc="teacher")
        speed = backend.tokens_per_second() if hasattr(backend, "tokens_per_second") else None
        log = f"cache {results.stats.as_dict()}; {round(speed, 2) if speed else '-'} tokens/s"
    source = teacher.label(t, base_dir)
    out, kept, drops = teacher.keep_answers(questions, results, t, source, cache_path)
    for s, recs in out.items():
        write_jsonl(Path(out_dir) / f"{s}.jsonl", recs)
    metrics = teacher.teacher_metrics(t, source, results, kept, drops, len(shots), sampling.max_new_tokens)
    metrics["vs_student"] = check_student(out.get("sft"), student_path, validation_path, base_dir, judge_prompt,
                                          judge_cache, p.judge.panel, t.seed)
    write_json(metrics_path, {**metrics, **models.run_facts("generate", t.backend)})
    click.echo(f"teacher: {log}", err=True)  # run-time counters go to the log only: a cached rerun changes no metric
    click.echo(f"teacher: {sum(kept.values())}/{len(results)} answers kept; filtered {metrics['filtered']}")


def check_student(teacher_sft, student_path, validation_path, base_dir, judge_prompt, judge_cache, panel_spec, seed):
    """The ``vs_student`` block (sciexplain.teacher_check); a warning on stderr unless the teacher is better."""
    from sciexplain.judges import Panel
    from sciexplain.teacher_check import sentence, teacher_vs_student

    if teacher_sft is None:
        return None
    if not Path(student_path).exists():
        click.echo(f"WARNING: {student_path} not found: the teacher was not compared with its student", err=True)
        return None
    validation = json.loads(Path(validation_path).read_text()) if Path(validation_path).exists() else None
    panel = Panel(panel_spec, base_dir=base_dir, cache_dir=judge_cache, prompt_path=judge_prompt, progress=sys.stderr.isatty())
    v = teacher_vs_student(teacher_sft, read_jsonl(student_path), panel, validation, seed=seed)
    click.echo(f"teacher vs student: {sentence(v)}")
    if not v.get("teacher_better"):
        click.echo(f"WARNING: the teacher is not shown to be better than its student (verdict: {v.get('verdict')}); "
                   "SFT on its answers may not improve the student", err=True)
    return v


if __name__ == "__main__":
    main()
