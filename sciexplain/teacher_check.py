"""The teacher must beat its student: the premise of the study (GPT-3.5 teaching Llama-2-7b), checked before SFT.

On the sft questions, each *kept* teacher answer (what SFT trains on) is put on a blind A/B sheet beside the
student's own answer to the bare question (the base model, ``data/generations/base/sft.jsonl`` from the
``answer_base`` stage), with both answers' ``finished`` flags. The judge panel (``judge.panel``) judges the
sheet like any other (the unfinished-answer rule included); :func:`sciexplain.comparisons.summarize` un-blinds
it with each judge's human agreement from ``metrics/validate.json`` and gives the verdict on the teacher
(better / worse / cannot tell at this n / judge not validated) with n and the detectable difference.

:func:`teacher_vs_student` returns the ``vs_student`` block of ``metrics/teacher.json``:

* ``n`` (items judged), ``teacher_kept`` (kept teacher answers on the split), ``missing_student`` (kept answers
  with no student answer: left out), ``student_unfinished`` / ``teacher_unfinished`` (answers cut by the budget)
* ``judge`` (the headline judge: the one whose human-agreement interval has the highest lower end),
  ``wins``, ``losses``, ``ties``, ``decisive``, ``win_rate`` (teacher wins / decisive), ``ci_low``,
  ``ci_high`` (Wilson 95%), ``p`` (two-sided binomial), ``verdict``, ``detectable_win_rate``,
  ``detectable_difference``, ``judge_agreement`` / ``judge_ci_low`` / ``judge_ci_high`` / ``judge_validated``
  (from validate.json; None where the judge has no figure), ``teacher_better`` (verdict == "better"),
  ``sentence`` (the verdict in plain words)
* ``judges``: the same figures for every judge of the panel, ``finished_rule``: verdicts changed by the
  unfinished-answer rule per judge.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .sheets import build_sheet
from .comparisons import summarize, verdict_sentence

PAIR = "teacher_vs_base"
TEACHER, STUDENT = "teacher", "base"


def check_items(teacher: Sequence[Mapping], student: Sequence[Mapping]) -> tuple[list[dict], dict]:
    """Pair items ``{item_id, question, answer_1 (teacher), answer_2 (student), finished_1, finished_2, ...}``
    for every kept teacher answer that has a student answer (sample 0), and counts."""
    answers = {r["id"]: r for r in student if r.get("sample", 0) == 0}
    kept = [r for r in teacher if r.get("keep", True) and r.get("answer")]
    items = []
    for r in kept:
        s = answers.get(r["id"])
        if s is None:
            continue
        items.append({"item_id": r["id"], "question": r["question"], "answer_1": r["answer"],
                      "answer_2": s["answer"], "model_1": TEACHER, "model_2": STUDENT,
                      "finished_1": bool(r.get("finished", True)), "finished_2": bool(s.get("finished", True))})
    counts = {"teacher_kept": len(kept), "missing_student": len(kept) - len(items),
              "teacher_unfinished": sum(not i["finished_1"] for i in items),
              "student_unfinished": sum(not i["finished_2"] for i in items)}
    return items, counts


def _figures(summary: Mapping) -> dict:
    v = summary["verdict"]
    t = summary["models"][TEACHER]
    ha = v.get("human_agreement") or {}
    return {"n": v["n"], "wins": v["wins"], "losses": v["losses"], "ties": v["ties"], "decisive": v["decisive"],
            "win_rate": v["win_rate"], "ci_low": t["ci95_low"], "ci_high": t["ci95_high"], "p": v["p"],
            "verdict": v["verdict"], "detectable_win_rate": v["detectable_win_rate"],
            "detectable_difference": v["detectable_difference"], "judge_agreement": ha.get("agreement"),
            "judge_ci_low": ha.get("ci_low"), "judge_ci_high": ha.get("ci_high"),
            "judge_validated": bool(v["judge_validated"])}


def teacher_vs_student(teacher: Sequence[Mapping], student: Sequence[Mapping], panel, validation: Mapping | None,
                       seed: int = 0) -> dict:
    """Judge the kept teacher answers against the student's on the same questions (see the module doc)."""
    items, counts = check_items(teacher, student)
    out = {"pair": PAIR, "n": len(items), **counts}
    if not items or not panel.names:
        why = "no_student_answers" if not items else "empty_panel"
        return out | {"judge": None, "verdict": None, "teacher_better": None, "win_rate": None, "not_compared": why,
                      "judges": {}}
    sheet, key_rows = build_sheet(items, seed)
    key = {k["item_id"]: {"a_model": k["a_model"], "b_model": k["b_model"]} for k in key_rows}
    result = panel.judge(sheet, label="teacher vs student")
    summary = summarize(PAIR, sheet, key, dict(result), {}, validation)
    judges = {name: _figures(js) for name, js in summary["judges"].items()}
    head = summary["headline_source"]
    out |= {"judge": head, **judges[head], "teacher_better": judges[head]["verdict"] == "better",
            "judges": judges,
            "finished_rule": {n: s.get("finished_rule", 0) for n, s in result.stats.items()}}
    return out


NOT_COMPARED = {"no_student_answers": "no kept teacher answer has a student answer",
                "empty_panel": "judge.panel is empty"}


def sentence(block: Mapping) -> str:
    """The ``vs_student`` block in plain words (metrics hold its numbers and codes; logs and the report say this)."""
    if block.get("verdict") is None:
        why = NOT_COMPARED.get(block.get("not_compared"), block.get("not_compared") or "not run")
        return f"The teacher was not compared with its student: {why}."
    agreement = {"agreement": block.get("judge_agreement"), "ci_low": block.get("judge_ci_low"),
                 "ci_high": block.get("judge_ci_high")}
    return verdict_sentence({**block, "subject": TEACHER, "opponent": STUDENT, "source": block["judge"], "human": False,
                             "human_agreement": agreement})
