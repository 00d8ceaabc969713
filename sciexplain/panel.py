"""A judge panel without the generation stack: the rubric judge over a sheet, the finished-answer rule, the
panel's specs and result shape. :class:`sciexplain.judges.Panel` adds LLM judges (backends, caches, prompts);
a stage that needs only the rubric (the reward model's held-out baselines) uses :class:`Panel` from here and does
not depend on the engines.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from .annotations import Annotation
from .records import UserError
from .rubric import RubricJudge
from .strengths import UNSURE


def rubric_annotations(sheet: Iterable[Mapping], params: Mapping | None = None) -> dict[str, Annotation]:
    """``RubricJudge(**params).judge_pair`` on every sheet item; the comment holds the score difference."""
    judge = RubricJudge(**dict(params or {}))
    out = {}
    for item in sheet:
        res = judge.compare(item["question"], item["answer_a"], item["answer_b"])
        out[item["item_id"]] = Annotation(res["choice"] or "", res["strength"],
                                          f"rubric total A={res['a']['total']:.3f} B={res['b']['total']:.3f}")
    return out


def apply_finished_rule(annotations: Mapping[str, Annotation], sheet: Iterable[Mapping]) -> tuple[dict[str, Annotation], int]:
    """Penalise an unfinished answer in every judge's verdict: one step towards the finished answer.

    Applies only to sheet items whose ``finished_a`` / ``finished_b`` flags differ (one answer stopped on
    its own, the other was cut by the token budget): a win for the unfinished answer becomes a tie
    (``Unsure``), a tie becomes ``Slightly better`` for the finished answer, a win for the finished answer
    stands. So an unfinished answer never wins against a finished one, and is never better off than the
    judge's own reading. Items without both flags, or with equal flags, are left as they are; the flags say
    nothing about which model wrote an answer. Returns the annotations and how many verdicts changed.
    """
    out, changed = dict(annotations), 0
    for item in sheet:
        fa, fb = item.get("finished_a"), item.get("finished_b")
        iid = item["item_id"]
        if fa is None or fb is None or fa == fb or iid not in out:
            continue
        done, cut = ("A", "B") if fa else ("B", "A")
        ann = out[iid]
        if ann.strength != UNSURE and ann.choice == cut:
            new = Annotation("", UNSURE, "")
        elif ann.strength == UNSURE or not ann.choice:
            new = Annotation(done, "Slightly better", "")
        else:
            continue
        note = f"finished rule ({cut} unfinished): {short_call((ann.choice, ann.strength))} -> {short_call((new.choice, new.strength))}"
        out[iid] = new._replace(comment=f"{ann.comment}; {note}" if ann.comment else note)
        changed += 1
    return out, changed


def short_call(v: tuple[str, str] | None) -> str:
    return "unparseable" if v is None else (f"{v[0]}/{v[1]}" if v[0] else v[1])


def validate_panel(panel) -> list[dict]:
    """The ``judge.panel`` list (specs as mappings or as the schema's typed specs) checked, every default filled in:
    :class:`sciexplain.params_schema.JudgeParams` owns the keys and their defaults. A bad entry raises ParamsError
    naming it (``params.yaml: judge.panel[0].name: ...``)."""
    from pydantic import BaseModel

    from . import params_schema as ps

    if isinstance(panel, list):
        panel = [s.model_dump(exclude_unset=True) if isinstance(s, BaseModel) else s for s in panel]
    ps.check_section("judge", {"panel": panel})
    specs = []
    for spec in ps.JudgeParams.model_validate({"panel": panel}).panel or []:
        if spec.type == "rubric":  # the rubric's own settings as written (RubricJudge holds the defaults)
            specs.append({"name": spec.name, "type": "rubric",
                          "params": spec.params.model_dump(exclude_unset=True) if spec.params is not None else {}})
        else:
            specs.append(spec.model_dump())
    return specs


class PanelResult(dict):
    """``{judge_name: {item_id: Annotation}}`` with ``.stats = {judge_name: counts}``."""

    stats: dict


class Panel:
    """A panel of judges built once from specs (``judge.panel``); :meth:`judge` runs every judge on one sheet.

    This class runs ``rubric`` judges; :class:`sciexplain.judges.Panel` adds ``llm`` judges (it needs the
    generation backends, this one does not, so a stage that only needs the rubric does not depend on them).
    """

    def __init__(self, panel_spec, *, progress: bool = True, **_):
        self.specs = validate_panel(panel_spec)
        self.progress = progress

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.specs]

    def _llm_judge(self, spec: dict):
        raise UserError(f"judge {spec['name']!r} is an llm judge: use sciexplain.judges.Panel")

    def judge(self, sheet: Iterable[Mapping], label: str = "") -> PanelResult:
        """Every judge on ``sheet``. Judges see the question and the two answers only; where the items carry
        ``finished_a``/``finished_b``, :func:`apply_finished_rule` then penalises the unfinished answer in
        every judge's verdicts (stats: ``finished_rule`` = how many verdicts it changed)."""
        sheet = list(sheet)
        flagged = any(item.get("finished_a") is not None and item.get("finished_b") is not None for item in sheet)
        out = PanelResult()
        out.stats = {}
        for spec in self.specs:
            name = spec["name"]
            if spec["type"] == "rubric":
                out[name] = rubric_annotations(sheet, spec.get("params"))
                out.stats[name] = {"items": len(sheet)}
            else:
                judge = self._llm_judge(spec)
                out[name] = judge.judge(sheet, desc=f"judge {name} {label}".strip(), progress=self.progress)
                out.stats[name] = dict(judge.last_stats)
            if flagged:
                out[name], out.stats[name]["finished_rule"] = apply_finished_rule(out[name], sheet)
            if spec["type"] == "rubric":
                out.stats[name]["ties"] = sum(a.strength == UNSURE for a in out[name].values())
        return out


