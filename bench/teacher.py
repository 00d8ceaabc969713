"""The teacher: kept answers per minute, transformers (``local``, what the default ran before) vs llama.cpp in-process
(``llamacpp``, the default now), on the same questions, the real quality prompt and the default budget.

A kept answer is what the teacher stage keeps: finished (end of turn within ``max_new_tokens``) or trimmed to its
last sentence, and at least ``min_words`` long (:func:`sciexplain.prompts.clean_teacher_answer`). The prompts are
~740 tokens of system prompt and few-shot turns shared by every question + the question: transformers computes
that prefix again for every question (and attends over it in every batch row); llama.cpp computes it once per
engine and keeps its KV cache (:mod:`sciexplain.llamacpp_backend`).
"""
from __future__ import annotations

from pathlib import Path

from sciexplain.records import read_jsonl

from .common import timed


def teacher_questions(n: int) -> list[tuple[str, str]]:
    for path in ("data/prepared/sft.jsonl", "data/raw/questions.jsonl"):
        if Path(path).exists():
            rows = read_jsonl(path, required=("question",))
            return [(r.get("id", str(i)), r["question"]) for i, r in enumerate(rows[:n])]
    raise FileNotFoundError("no questions: data/prepared/sft.jsonl or data/raw/questions.jsonl")


def run(base_dir: str | None, n: int = 8, max_new_tokens: int = 384, gguf="embedded", local: bool = True) -> dict:
    import yaml

    from sciexplain import prompts
    from sciexplain.backends import make_backend
    from sciexplain.generation import GenRequest, SamplingParams

    t = yaml.safe_load(Path("params.yaml").read_text())["teacher"]
    system = prompts.load_system_prompt("prompts", t["plan"])
    shots = prompts.load_few_shot("prompts", t["few_shot"], t["plan"])
    reqs = [GenRequest.from_messages(i, prompts.teacher_messages(q, system, shots, t["plan"]))
            for i, q in teacher_questions(n)]
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=t["temperature"], top_p=t["top_p"],
                              seed=t["seed"], repetition_penalty=t["repetition_penalty"])
    rows = {}
    contenders = [("llamacpp (in-process, prefix once, 1 engine per core)", "llamacpp")]
    if local and base_dir:
        contenders.insert(0, (f"local (transformers, batch {t['batch_size']})", "local"))
    for name, kind in contenders:
        backend = make_backend(kind, base_dir=base_dir, batch_size=t["batch_size"], gguf=gguf, where="teacher.backend")
        results, dt = timed(lambda: backend.generate(reqs, sampling))
        kept = sum(prompts.clean_teacher_answer(r.text, r.finished, t["min_words"], t["unfinished"])[1] is None
                   for r in results)
        tokens = sum(r.completion_tokens for r in results)
        rows[name] = {"answers": len(results), "kept": kept, "finished": sum(r.finished for r in results),
                      "completion_tokens": tokens, "seconds": round(dt, 1), "tokens_per_s": round(tokens / dt, 1),
                      "kept_per_minute": round(kept / dt * 60, 2)}
        print(f"  teacher, {name}: {kept}/{len(results)} kept in {dt:.0f} s = {kept / dt * 60:.2f} kept/min, "
              f"{tokens / dt:.1f} tokens/s", flush=True)
        del backend
    out = {"questions": len(reqs), "max_new_tokens": max_new_tokens, "contenders": rows, "target": 3.0}
    if len(rows) == 2:
        a, b = rows.values()
        out["ratio_kept_per_minute"] = round(b["kept_per_minute"] / max(a["kept_per_minute"], 1e-9), 2)
    return out
