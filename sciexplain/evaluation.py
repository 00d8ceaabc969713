"""The final evaluation's answers: every model's eval answers, as the ``rewards`` stages score them (reward
statistics and the report's opening are :mod:`sciexplain.study_report`'s).

Answers a stage's own filter dropped (a record with ``keep: false``, e.g. a teacher answer that came back
empty or unfinished, with its ``drop_reason``) are not answers: they are left out of the reward statistics
and of every comparison with that model, and counted (:class:`EvalAnswers` ``dropped``).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

from .records import DataError, first_answers


class EvalAnswers(NamedTuple):
    answers: dict[str, dict[str, dict]]  # {model: {question_id: record}}, kept answers only
    dropped: dict[str, dict]  # {model: {"n": int, "reasons": {reason: n}, "ids": [...]}}


def load_eval_answers(generations_dir, models: list[str], eval_ids: list[str]) -> EvalAnswers:
    """Sample 0 of each model's eval answers, covering every eval id; records with ``keep: false`` are
    counted in ``dropped`` and left out of ``answers``."""
    out, dropped = {}, {}
    for m in models:
        path = Path(generations_dir) / m / "eval.jsonl"
        if not path.exists():
            raise DataError(path, None, None, f"no eval answers for model {m!r}: build it or drop it from evaluate.models")
        recs = first_answers(path, required=("id", "question"))
        missing = [i for i in eval_ids if i not in recs]
        if missing:
            raise DataError(path, None, "id", f"no answer for eval question {missing[0]!r} ({len(missing)} missing)")
        gone = [i for i in eval_ids if recs[i].get("keep") is False]
        dropped[m] = {"n": len(gone), "reasons": dict(sorted(Counter(str(recs[i].get("drop_reason")) for i in gone).items())),
                      "ids": gone}
        out[m] = {i: recs[i] for i in eval_ids if i not in set(gone)}
    return EvalAnswers(out, dropped)
