"""The teacher stage's work: its prompts, the answers it keeps (filtered), and what it records.

:func:`requests` builds one chat request per question under the quality-metrics prompt (:mod:`sciexplain.prompts`);
the stage sends them through a backend (or the Batch API files) and the response cache; :func:`keep_answers` cleans
and filters each answer (plan removed, too short or unfinished dropped or trimmed: ``teacher.min_words``,
``teacher.unfinished``) into the per-split records SFT trains on; :func:`teacher_metrics` is metrics/teacher.json.
:func:`label` is the one name of what answered (``llamacpp:embedded``, ``openai:gpt-3.5-turbo``), which the report
reads from these metrics.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from . import prompts
from .records import DataError, read_jsonl

LOCAL_BACKENDS = ("local", "vllm", "llamacpp")


def label(t, base_dir: str) -> str:
    """What answered, from the typed ``teacher`` params: the backend and its model."""
    return {"local": f"local:{base_dir}", "vllm": f"vllm:{base_dir}",
            "llamacpp": f"llamacpp:{t.gguf}"}.get(t.backend, f"{t.backend}:{t.model}")


def requests(t, prompts_dir, prepared) -> tuple[dict[str, list[dict]], list, list]:
    """``(questions per split, GenRequests in split order, the few-shot turns)`` of the typed ``teacher`` params."""
    from .generation import GenRequest

    plan = prompts.check_plan(t.plan)
    system = prompts.load_system_prompt(prompts_dir, plan)
    shots = prompts.load_few_shot(prompts_dir, t.few_shot, plan)
    questions = {s: read_jsonl(Path(prepared) / f"{s}.jsonl") for s in t.splits}
    reqs = [GenRequest.from_messages(q["id"], prompts.teacher_messages(q["question"], system, shots, plan))
            for s in t.splits for q in questions[s]]
    return questions, reqs, shots


def keep_answers(questions: Mapping[str, Sequence[dict]], results, t, source: str, cache_path) -> tuple[dict, Counter, Counter]:
    """``({split: records}, kept per split, reasons)``: every answer cleaned, kept or dropped with its reason."""
    drops, kept, out = Counter(), Counter(), {}
    it = iter(results)
    for s, qs in questions.items():
        recs = []
        for q in qs:
            r = next(it)
            answer, reason = prompts.clean_teacher_answer(r.text, r.finished, t.min_words, t.unfinished)
            drops[reason or "kept"] += 1
            kept[s] += reason is None
            recs.append({"id": q["id"], "question": q["question"], "model": "teacher", "sample": 0, "answer": answer,
                         "completion_tokens": r.completion_tokens, "finished": r.finished,
                         "keep": reason is None, "drop_reason": reason, "source": source})
        out[s] = recs
    if kept.get("sft", 1) == 0 and "sft" in out:
        raise DataError(cache_path, None, None, f"every teacher answer for the sft split was filtered out ({dict(drops)}); "
                        "check the teacher backend and teacher.min_words")
    return out, kept, drops


def teacher_metrics(t, source: str, results, kept: Counter, drops: Counter, n_shots: int, max_new_tokens: int) -> dict:
    n = len(results)
    return {
        "backend": t.backend, "model": source, "plan": t.plan, "few_shot": n_shots, "answers": n,
        "kept": dict(kept), "filtered": {k: v for k, v in sorted(drops.items()) if k != "kept"},
        "kept_fraction": round(sum(kept.values()) / max(n, 1), 4),
        "mean_completion_tokens": round(sum(r.completion_tokens for r in results) / max(n, 1), 1),
        "finished_fraction": round(sum(r.finished for r in results) / max(n, 1), 4),
        "empty_fraction": round(drops["empty"] / max(n, 1), 4),
        "max_new_tokens": max_new_tokens,
    }
