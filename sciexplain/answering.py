"""A model answers questions (N samples each) through a backend and the response cache."""
from __future__ import annotations

import logging

from .cache import generate_cached
from .generation import GenRequest, SamplingParams
from .prompts import student_messages

log = logging.getLogger(__name__)


def answer_questions(backend, questions: list[dict], sampling: SamplingParams, cache_path, model_name: str,
                     n_samples: int = 1, desc: str | None = None) -> tuple[list[dict], dict]:
    """Records {id, question, model, sample, answer, completion_tokens, finished}, in question then sample order."""
    requests = [GenRequest.from_messages(q["id"], student_messages(q["question"]), sample=s)
                for q in questions for s in range(n_samples)]
    results = generate_cached(backend, requests, sampling, cache_path, desc=desc or f"answer {model_name}")
    by_id = {q["id"]: q for q in questions}
    records = [{"id": r.id, "question": by_id[r.id]["question"], "model": model_name, "sample": r.sample,
                "answer": r.text, "completion_tokens": r.completion_tokens, "finished": r.finished} for r in results]
    n = len(results)
    summary = {
        "model": model_name, "answers": n, "samples_per_question": n_samples,
        "mean_completion_tokens": round(sum(r.completion_tokens for r in results) / max(n, 1), 1),
        "finished_fraction": round(sum(r.finished for r in results) / max(n, 1), 4),
    }
    # run-time counters go to the log, not the metrics: a fully cached rerun must write identical metrics
    speed = f", {backend.tokens_per_second():.1f} tokens/s" if getattr(backend, "stats", {}).get("seconds") else ""
    log.info("%s: %d answers, %d from the cache, %d generated%s", model_name, n, results.stats.hits,
             results.stats.misses, speed)
    return records, summary
