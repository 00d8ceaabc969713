"""The final evaluation: every model's eval answers (the ``rewards`` stages score them), reward statistics vs
base, and the report's opening (warnings, one verdict per comparison of the ``winrate`` stages).

Answers a stage's own filter dropped (a record with ``keep: false``, e.g. a teacher answer that came back
empty or unfinished, with its ``drop_reason``) are not answers: they are left out of the reward statistics
and of every comparison with that model, and counted (:class:`EvalAnswers` ``dropped``).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, NamedTuple

from .records import DataError, first_answers
from .stats import _pval, paired_wilcoxon, reward_summary
from .verdicts import NOT_VALIDATED, holm


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


def reward_statistics(rewards: Mapping[str, Mapping[str, float]], baseline: str = "base", n_resamples: int = 2000) -> dict:
    """reward_summary per model + a paired Wilcoxon signed-rank test against the baseline on the questions
    both answered (``rewards = {model: {question_id: reward}}``); the Wilcoxon p-values are Holm-adjusted
    across the models (``wilcoxon.p_holm``)."""
    out = {}
    for m, values in rewards.items():
        entry = reward_summary(list(values.values()), n_resamples=n_resamples)
        if m != baseline and baseline in rewards:
            common = [i for i in values if i in rewards[baseline]]
            entry["wilcoxon"] = (paired_wilcoxon([values[i] for i in common], [rewards[baseline][i] for i in common])
                                 if common else None)
        else:
            entry["wilcoxon"] = None
        out[m] = entry
    adjusted = holm({m: e["wilcoxon"]["p_value"] for m, e in out.items() if e["wilcoxon"]})
    for m, p in adjusted.items():
        out[m]["wilcoxon"]["p_holm"] = _pval(p)
    return out


# --------------------------------------------------------------------------- the report's opening

def _truthy(d: Mapping, *path):
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def teacher_warning(teacher_check: Mapping | None) -> str | None:
    """A warning when the teacher-vs-student check (``metrics/teacher.json``'s ``vs_student`` block, written by
    :mod:`sciexplain.teacher_check`; ``teacher_vs_student`` or a bare block also read) does not say the teacher
    is better than its student: a verdict other than "better", ``teacher_better`` false, or no comparison at
    all (verdict None). No block (or no file): no warning."""
    if not isinstance(teacher_check, Mapping):
        return None
    block = teacher_check.get("vs_student", teacher_check.get("teacher_vs_student"))
    if block is None and ("verdict" in teacher_check or "teacher_better" in teacher_check):
        block = teacher_check
    if not isinstance(block, Mapping):
        return None
    verdict = block.get("verdict")
    if isinstance(verdict, Mapping):
        verdict = verdict.get("verdict")
    if verdict == "better" or block.get("teacher_better") is True:
        return None
    rate = block.get("win_rate", block.get("teacher_win_rate"))
    if isinstance(rate, Mapping):
        rate = rate.get("teacher")
    rate_txt = f" (teacher win rate {100 * rate:.0f}% of decisive votes)" if isinstance(rate, (int, float)) else ""
    what = (f"the check says {verdict!r}" if verdict else "the check made no comparison")
    why = f" {block['sentence']}" if isinstance(block.get("sentence"), str) else ""
    return (f"Warning: the teacher is not shown to write better than its student{rate_txt}; {what}. Training on "
            f"its answers (sft, rs) has no premise to stand on.{why}")


def reward_model_warning(rm: Mapping | None) -> str | None:
    """A warning when the reward model is used although it did not clear validation on human pairs.

    Recognised (any one): ``validation.cleared`` / ``human_validation.cleared`` / ``validated`` false with
    ``allow_unvalidated`` (or ``used_unvalidated``) true; or ``used_unvalidated: true`` alone. No flag, no warning."""
    if not isinstance(rm, Mapping):
        return None
    cleared = None
    for path in (("validation", "cleared"), ("human_validation", "cleared"), ("validated",), ("validation_cleared",)):
        v = _truthy(rm, *path)
        if isinstance(v, bool):
            cleared = v
            break
    used_anyway = any(_truthy(rm, *p) is True for p in (("allow_unvalidated",), ("used_unvalidated",),
                                                        ("validation", "allow_unvalidated"),
                                                        ("human_validation", "allow_unvalidated")))
    if cleared is False or (cleared is None and _truthy(rm, "used_unvalidated") is True):
        acc = _truthy(rm, "validation", "accuracy") or _truthy(rm, "human_validation", "accuracy")
        acc_txt = f" (held-out human-pair accuracy {100 * acc:.0f}%)" if isinstance(acc, (int, float)) else ""
        how = " and a param allowed it to be used anyway" if used_anyway else ""
        return (f"Warning: the reward model did not clear validation on human pairs{acc_txt}{how}: the reward "
                "statistics, rejection sampling and DPO pairs rest on a predictor people do not back.")
    return None


def opening(winrates: Mapping[str, Mapping], family: Mapping, power: Mapping, dropped: Mapping[str, Mapping],
            warnings: list[str]) -> dict:
    """The report's first section: warnings, one verdict per comparison in plain words, what the eval
    split's n can detect, which tests were adjusted, what the filters dropped."""
    verdicts = []
    for pair, m in winrates.items():
        v = m.get("verdict")
        if not v:
            continue
        beside = [f"{name}: {j['verdict']['verdict']}" for name, j in (m.get("judges") or {}).items()
                  if m.get("headline_source") != name]
        verdicts.append({"comparison": pair.replace("_vs_", " vs "), "verdict": v["verdict"], "sentence": v["sentence"],
                         "source": m.get("headline_source"), "n": v["n"],
                         "detectable_win_rate": v.get("detectable_win_rate"), "beside": beside})
    n_not_validated = sum(v["verdict"] == NOT_VALIDATED for v in verdicts)
    return {"warnings": [w for w in warnings if w], "verdicts": verdicts, "multiple_testing": family, "power": power,
            "dropped": {m: d for m, d in dropped.items() if d.get("n")}, "not_validated": n_not_validated}
