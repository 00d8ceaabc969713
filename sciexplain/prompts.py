"""The quality-metrics teacher prompt (prompts/system.md + prompts/few_shot.jsonl) and answer clean-up.

The teacher sees the system prompt and few-shot examples written as a plan ("Plan:") followed by the
explanation ("Answer:"), a short chain of thought; only the explanation is stored. The student (the model
being fine-tuned) sees the bare question, so SFT distils the prompt's behaviour into the weights.

``teacher.plan`` picks the chain of thought (:data:`PLAN_MODES`):

* ``full``  -- the study's few-shot chain of thought: a three-to-five point plan (``prompts/plan_full.md``,
  the examples' ``plan``), then the explanation. For a strong teacher (GPT-3.5).
* ``short`` -- a one-line plan (``prompts/plan_short.md``, the examples' ``plan_short``).
* ``none``  -- no plan: the quality metrics and the few-shot explanations only. A 135M teacher spends its
  budget on the plan and often never reaches "Answer:" (see bench/RESULTS.md), so the default run uses this.
"""
from __future__ import annotations

import re
from pathlib import Path

from .records import DataError, read_jsonl

PLAN_RE = re.compile(r"^\s*\**\s*plan\s*\**\s*:\s*\**", re.I | re.M)
ANSWER_RE = re.compile(r"^\s*\**\s*(?:answer|explanation)\s*\**\s*:\s*\**\s*", re.I | re.M)
# meta-text the study stripped ("(152 tokens)", "Word count: 140", "[end of answer]")
META_LINE_RE = re.compile(
    r"^\W*(?:\(?\s*(?:approx(?:imately)?\.?\s*)?\d+\s*(?:tokens?|words?)\s*\)?|(?:word|token)\s*count\s*:?\s*\d+.*"
    r"|\[?\s*end of (?:answer|explanation)\s*\]?)\W*$", re.I)
META_INLINE_RE = re.compile(r"\(\s*\d+\s*(?:tokens?|words?)\s*\)|\b(?:as an ai|this prompt|these instructions)\b", re.I)


from .params_schema import PLAN_MODES  # noqa: E402  (the schema owns the allowed values)


def check_plan(plan) -> str:
    if plan not in PLAN_MODES:
        raise DataError("params.yaml", None, "teacher.plan", f"must be one of {', '.join(PLAN_MODES)}, got {plan!r}")
    return plan


def _read_prompt(path: Path) -> str:
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise DataError(path, None, None, "the prompt file is empty")
    return text


def load_system_prompt(prompts_dir: str | Path = "prompts", plan: str = "full") -> str:
    """``system.md`` (the quality metrics), followed by ``plan_<plan>.md`` unless ``plan`` is ``none``."""
    check_plan(plan)
    text = _read_prompt(Path(prompts_dir) / "system.md")
    if plan != "none":
        text += "\n\n" + _read_prompt(Path(prompts_dir) / f"plan_{plan}.md")
    return text


def load_few_shot(prompts_dir: str | Path = "prompts", k: int | None = None, plan: str = "full") -> list[dict]:
    """The few-shot examples (question, plan, answer; ``plan_short`` needed for ``plan: short``)."""
    required = ("question", "answer") + {"full": ("plan",), "short": ("plan_short",), "none": ()}[check_plan(plan)]
    path = Path(prompts_dir) / "few_shot.jsonl"
    examples = read_jsonl(path, required=required)
    if k is None:
        return examples
    # examples[:k] would read -1 as "all but one" and 5 of 3 as 3: refuse both rather than send another count
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(examples):
        raise DataError("params.yaml", None, "teacher.few_shot",
                        f"expected an integer in [0, {len(examples)}] (the examples in {path}), got {k!r}")
    return examples[:k]


def demonstration(example: dict, plan: str = "full") -> str:
    """One few-shot assistant turn in the chosen plan format."""
    if check_plan(plan) == "full":
        return f"Plan:\n{example['plan']}\n\nAnswer:\n{example['answer']}"
    if plan == "short":
        return f"Plan: {example['plan_short']}\n\nAnswer:\n{example['answer']}"
    return example["answer"]


def teacher_messages(question: str, system: str, examples: list[dict], plan: str = "full") -> list[dict]:
    """System prompt, few-shot turns (plan + answer, or the answer alone), then the question."""
    msgs = [{"role": "system", "content": system}]
    for ex in examples:
        msgs.append({"role": "user", "content": ex["question"]})
        msgs.append({"role": "assistant", "content": demonstration(ex, plan)})
    msgs.append({"role": "user", "content": question})
    return msgs


def student_messages(question: str) -> list[dict]:
    """What the fine-tuned model (and the base model it is compared with) sees: the bare question."""
    return [{"role": "user", "content": question}]


def extract_answer(text: str) -> tuple[str, bool]:
    """Drop the plan: keep what follows the last "Answer:" marker. Returns (answer, had_plan_marker)."""
    matches = list(ANSWER_RE.finditer(text))
    if matches:
        return text[matches[-1].end():].strip(), True
    if PLAN_RE.search(text):  # a plan with no answer marker: nothing usable
        return "", True
    return text.strip(), False


def strip_meta(text: str) -> tuple[str, int]:
    """Remove whole lines of meta-text ("(150 tokens)", "Word count: 140"). Returns (text, lines removed)."""
    kept, removed = [], 0
    for line in text.split("\n"):
        if line.strip() and META_LINE_RE.match(line.strip()):
            removed += 1
            continue
        kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip(), removed


def has_meta(text: str) -> bool:
    return bool(META_INLINE_RE.search(text))


SENTENCE_END_RE = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut a truncated answer after its last complete sentence (and drop a dangling list marker or heading)."""
    ends = list(SENTENCE_END_RE.finditer(text))
    return text[: ends[-1].end()].rstrip() if ends else ""


def clean_teacher_answer(raw: str, finished: bool, min_words: int, unfinished: str = "drop") -> tuple[str, str | None]:
    """Plan removed, meta lines stripped; returns (answer, drop_reason or None).

    ``unfinished``: ``drop`` an answer cut by max_new_tokens, or ``trim`` it to its last complete sentence
    (small local teachers rarely stop on their own within budget).
    """
    if unfinished not in ("trim", "drop"):
        raise ValueError(f"teacher.unfinished: expected 'trim' or 'drop', got {unfinished!r}")
    answer, _ = extract_answer(raw)
    answer, _ = strip_meta(answer)
    if not answer:
        return answer, "empty"
    if not finished:
        if unfinished != "trim":
            return answer, "unfinished"
        answer = trim_to_sentence(answer)
        if len(answer.split()) < min_words:
            return answer, "unfinished"
    if has_meta(answer):
        return answer, "meta_text"
    if len(answer.split()) < min_words:
        return answer, "too_short"
    return answer, None
