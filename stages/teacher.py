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
from collections import Counter
from pathlib import Path

import click

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.records import DataError, read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--prepared", default="data/prepared", show_default=True, help="folder of split files")
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--prompts", "prompts_dir", default="prompts", show_default=True)
@click.option("--out", "out_dir", default="data/generations/teacher", show_default=True)
@click.option("--cache", "cache_path", default="data/cache/teacher.jsonl", show_default=True,
              help="response cache (kept outside DVC outs so it survives reruns)")
@click.option("--metrics", "metrics_path", default="metrics/teacher.json", show_default=True)
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
    from sciexplain import prompts
    from sciexplain.batch_api import export_batch, import_batch
    from sciexplain.cache import generate_cached
    from sciexplain.backends import make_backend
    from sciexplain.generation import GenRequest, SamplingParams

    from sciexplain import models
    p = read_params(params_path)
    models.set_compute_dtype(get(p, "model.compute_dtype"))  # bf16 or fp32, by CPU and work
    kind = get(p, "teacher.backend")
    plan = prompts.check_plan(get(p, "teacher.plan"))
    system = prompts.load_system_prompt(prompts_dir, plan)
    shots = prompts.load_few_shot(prompts_dir, get(p, "teacher.few_shot"), plan)
    sampling = SamplingParams(max_new_tokens=get(p, "teacher.max_new_tokens"), temperature=get(p, "teacher.temperature"),
                              top_p=get(p, "teacher.top_p"), seed=get(p, "teacher.seed"),
                              repetition_penalty=get(p, "teacher.repetition_penalty"))
    splits = get(p, "teacher.splits")
    questions = {s: read_jsonl(Path(prepared) / f"{s}.jsonl") for s in splits}
    requests = [GenRequest.from_messages(q["id"], prompts.teacher_messages(q["question"], system, shots, plan))
                for s in splits for q in questions[s]]
    model_name = get(p, "teacher.model") if kind not in ("local", "vllm", "llamacpp") else None

    if kind == "batch-export":
        path = get(p, "teacher.batch_file")
        n = export_batch(requests, sampling, model_name, path)
        raise click.ClickException(f"wrote {n} Batch API requests to {path}: submit it, download the output, "
                                   f"then set teacher.backend=batch-import and teacher.batch_file=<output> and rerun")
    if kind == "batch-import":
        results = import_batch(get(p, "teacher.batch_file"), requests)
        tokens_per_s = None
        cache_stats = {}
    else:
        backend = make_backend(kind, base_dir=base_dir, batch_size=get(p, "teacher.batch_size"), model=model_name,
                               quantize_4bit=get(p, "model.quantize_4bit"),
                               base_url=get(p, "teacher.base_url"), api_key_env=get(p, "teacher.api_key_env"),
                               max_concurrency=get(p, "teacher.max_concurrency"), max_retries=get(p, "teacher.max_retries"),
                               weights=get(p, "teacher.weights"), vllm=get(p, "vllm") if kind == "vllm" else None,
                               gguf=get(p, "teacher.gguf"), where="teacher.backend")
        results = generate_cached(backend, requests, sampling, cache_path, desc="teacher")
        cache_stats = results.stats.as_dict()
        tokens_per_s = round(backend.tokens_per_second(), 2) if hasattr(backend, "tokens_per_second") else None

    label = {"local": f"local:{base_dir}", "vllm": f"vllm:{base_dir}",
             "llamacpp": f"llamacpp:{get(p, 'teacher.gguf')}"}.get(kind, f"{kind}:{model_name}")
    min_words = get(p, "teacher.min_words")
    unfinished = get(p, "teacher.unfinished")
    drops, kept, out = Counter(), Counter(), {}
    it = iter(results)
    for s in splits:
        recs = []
        for q in questions[s]:
            r = next(it)
            answer, reason = prompts.clean_teacher_answer(r.text, r.finished, min_words, unfinished)
            drops[reason or "kept"] += 1
            kept[s] += reason is None
            recs.append({"id": q["id"], "question": q["question"], "model": "teacher", "sample": 0, "answer": answer,
                         "completion_tokens": r.completion_tokens, "finished": r.finished,
                         "keep": reason is None, "drop_reason": reason, "source": label})
        out[s] = recs
    if kept.get("sft", 1) == 0 and "sft" in splits:
        raise DataError(cache_path, None, None, f"every teacher answer for the sft split was filtered out ({dict(drops)}); "
                        "check the teacher backend and teacher.min_words")
    for s, recs in out.items():
        write_jsonl(Path(out_dir) / f"{s}.jsonl", recs)
    n = len(results)
    metrics = {
        "backend": kind, "model": label, "plan": plan, "few_shot": len(shots), "answers": n,
        "kept": dict(kept), "filtered": {k: v for k, v in sorted(drops.items()) if k != "kept"},
        "kept_fraction": round(sum(kept.values()) / max(n, 1), 4),
        "mean_completion_tokens": round(sum(r.completion_tokens for r in results) / max(n, 1), 1),
        "finished_fraction": round(sum(r.finished for r in results) / max(n, 1), 4),
        "empty_fraction": round(drops["empty"] / max(n, 1), 4),
        "max_new_tokens": sampling.max_new_tokens,
        "vs_student": check_student(out.get("sft"), student_path, validation_path, base_dir, judge_prompt, judge_cache,
                                    get(p, "judge.panel"), get(p, "teacher.seed")),
    }
    write_json(metrics_path, {**metrics, **models.run_facts("generate", kind)})
    # run-time counters go to the log only: a fully cached rerun must leave the metrics unchanged
    click.echo(f"teacher: cache {cache_stats or '-'}; {tokens_per_s or '-'} tokens/s", err=True)
    click.echo(f"teacher: {sum(kept.values())}/{n} answers kept; filtered {metrics['filtered']}; "
               f"{metrics['finished_fraction']:.0%} finished within {sampling.max_new_tokens} tokens")


def check_student(teacher_sft, student_path, validation_path, base_dir, judge_prompt, judge_cache, panel_spec, seed):
    """The ``vs_student`` block (sciexplain.teacher_check); a warning on stderr unless the teacher is better."""
    from sciexplain.judges import Panel
    from sciexplain.teacher_check import teacher_vs_student

    if teacher_sft is None:
        return None
    if not Path(student_path).exists():
        click.echo(f"WARNING: {student_path} not found: the teacher was not compared with its student", err=True)
        return None
    validation = json.loads(Path(validation_path).read_text()) if Path(validation_path).exists() else None
    panel = Panel(panel_spec, base_dir=base_dir, cache_dir=judge_cache, prompt_path=judge_prompt, progress=sys.stderr.isatty())
    v = teacher_vs_student(teacher_sft, read_jsonl(student_path), panel, validation, seed=seed)
    click.echo(f"teacher vs student: {v['sentence']}")
    if not v.get("teacher_better"):
        click.echo(f"WARNING: the teacher is not shown to be better than its student (verdict: {v.get('verdict')}); "
                   "SFT on its answers may not improve the student", err=True)
    return v


if __name__ == "__main__":
    main()
