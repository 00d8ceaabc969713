"""Stage teacher: answers written under the quality-metrics prompt (plan removed, filtered), per split.

Backends (sciexplain/backends.py): ``local`` (a transformers model, default the base model itself: context
distillation, offline), ``vllm`` (the same model on vLLM's offline engine, GPU),
``openai`` (OpenAI or any OpenAI-compatible server via ``teacher.base_url``; key from the environment;
``teacher.weights`` names the local weights a self-hosted server was started from, for the cache key),
``batch-export`` / ``batch-import`` (the OpenAI Batch API file format). Every call goes through the
append-only response cache, so a rerun or a resumed crash never repeats a finished call.
"""
from collections import Counter
from pathlib import Path

import click

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.io import DataError, read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--prepared", default="data/prepared", show_default=True, help="folder of split files")
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--prompts", "prompts_dir", default="prompts", show_default=True)
@click.option("--out", "out_dir", default="data/generations/teacher", show_default=True)
@click.option("--cache", "cache_path", default="data/cache/teacher.jsonl", show_default=True,
              help="response cache (kept outside DVC outs so it survives reruns)")
@click.option("--metrics", "metrics_path", default="metrics/teacher.json", show_default=True)
@params_option
@stage
def main(prepared, base_dir, prompts_dir, out_dir, cache_path, metrics_path, params_path):
    from sciexplain import prompts
    from sciexplain.batch_api import export_batch, import_batch
    from sciexplain.cache import generate_cached
    from sciexplain.backends import make_backend
    from sciexplain.generation import GenRequest, SamplingParams

    p = read_params(params_path)
    kind = get(p, "teacher.backend")
    system = prompts.load_system_prompt(prompts_dir)
    shots = prompts.load_few_shot(prompts_dir, get(p, "teacher.few_shot"))
    sampling = SamplingParams(max_new_tokens=get(p, "teacher.max_new_tokens"), temperature=get(p, "teacher.temperature"),
                              top_p=get(p, "teacher.top_p"), seed=get(p, "teacher.seed"))
    splits = get(p, "teacher.splits")
    questions = {s: read_jsonl(Path(prepared) / f"{s}.jsonl") for s in splits}
    requests = [GenRequest.from_messages(q["id"], prompts.teacher_messages(q["question"], system, shots))
                for s in splits for q in questions[s]]
    model_name = get(p, "teacher.model") if kind not in ("local", "vllm") else None

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
                               where="teacher.backend")
        results = generate_cached(backend, requests, sampling, cache_path, desc="teacher")
        cache_stats = results.stats.as_dict()
        tokens_per_s = round(backend.tokens_per_second(), 2) if hasattr(backend, "tokens_per_second") else None

    label = f"{kind}:{base_dir}" if kind in ("local", "vllm") else f"{kind}:{model_name}"
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
        "backend": kind, "model": label, "answers": n,
        "kept": dict(kept), "filtered": {k: v for k, v in sorted(drops.items()) if k != "kept"},
        "kept_fraction": round(sum(kept.values()) / max(n, 1), 4),
        "mean_completion_tokens": round(sum(r.completion_tokens for r in results) / max(n, 1), 1),
        "finished_fraction": round(sum(r.finished for r in results) / max(n, 1), 4),
        "tokens_per_s": tokens_per_s, "cache": cache_stats,
    }
    write_json(metrics_path, metrics)
    click.echo(f"teacher: {sum(kept.values())}/{n} answers kept; filtered {metrics['filtered']}")


if __name__ == "__main__":
    main()
