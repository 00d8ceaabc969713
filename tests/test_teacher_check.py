"""The teacher must beat its student (sciexplain.teacher_check, the teacher stage's vs_student block), and the
``finished`` flags from generation records to blind sheets (build_sheet, read_sheet, the compare stage)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import read_jsonl, write_params
from openai_server import FakeOpenAIServer
from sciexplain.sheets import build_sheet, read_sheet
from sciexplain.records import DataError
from sciexplain.judges import Panel
from sciexplain.teacher_check import check_items, teacher_vs_student, sentence

GOOD = ("{q} The direct answer is a physical mechanism. Sunlight, water and molecules follow simple laws, and "
        "scientists describe them with measurable quantities.\n\nFirst, the cause acts on a small scale; therefore "
        "the effect typically appears on a large scale, which is called emergence. However, the details depend on "
        "conditions.\n\nIn summary, the mechanism explains the observation in a few clear steps.")
POOR = "Great question!!! I think it's just how things are lol. Hope this helps!!"
RUBRIC = [{"name": "rubric", "type": "rubric"}]


def records(model, text, n, **extra):
    return [{"id": f"q{i}", "question": f"Why does thing {i} happen?", "model": model, "sample": 0,
             "answer": text.format(q=f"Thing {i} happens for a reason."), "finished": True, "keep": True} | extra
            for i in range(n)]


def validation(low, high=0.9):
    return {"judges": {"rubric": {"agreement": (low + high) / 2, "agreement_cluster_ci_low": low,
                                  "agreement_cluster_ci_high": high, "n": 100, "validated": low > 0.5}}}


def test_check_items_keeps_only_kept_answers_with_a_student_answer():
    teacher = records("teacher", GOOD, 4)
    teacher[1] |= {"keep": False, "answer": ""}
    teacher[2] |= {"finished": False}
    student = records("base", POOR, 3) + [{**records("base", POOR, 1)[0], "sample": 1, "answer": "other"}]
    items, counts = check_items(teacher, student)
    assert [i["item_id"] for i in items] == ["q0", "q2"]
    assert counts == {"teacher_kept": 3, "missing_student": 1, "teacher_unfinished": 1, "student_unfinished": 0}
    assert items[0]["answer_2"] == POOR and items[1]["finished_1"] is False


@pytest.mark.parametrize("teacher_text, student_text, val, verdict", [
    (GOOD, POOR, validation(0.6), "better"),
    (POOR, GOOD, validation(0.6), "worse"),
    (GOOD, POOR, validation(0.45), "judge not validated"),
    (GOOD, POOR, None, "judge not validated"),
])
def test_teacher_vs_student_verdicts(teacher_text, student_text, val, verdict):
    panel = Panel(RUBRIC, progress=False)
    v = teacher_vs_student(records("teacher", teacher_text, 12), records("base", student_text, 12), panel, val)
    assert v["verdict"] == verdict and v["judge"] == "rubric" and v["n"] == 12
    assert v["teacher_better"] == (verdict == "better")
    wins = 12 if teacher_text == GOOD else 0
    assert (v["wins"], v["losses"], v["ties"]) == (wins, 12 - wins, 0)
    assert v["win_rate"] == wins / 12 and v["ci_low"] <= v["win_rate"] <= v["ci_high"] and v["p"] < 0.001
    assert 0.5 < v["detectable_win_rate"] < 1 and v["detectable_difference"] == pytest.approx(v["detectable_win_rate"] - 0.5, abs=1e-3)
    assert v["judge_ci_low"] == (val["judges"]["rubric"]["agreement_cluster_ci_low"] if val else None)
    assert set(v["judges"]) == {"rubric"} and v["finished_rule"] == {"rubric": 0} and "teacher" in sentence(v)


def test_teacher_vs_student_small_n_and_unfinished_student():
    panel = Panel(RUBRIC, progress=False)
    v = teacher_vs_student(records("teacher", GOOD, 3), records("base", POOR, 3), panel, validation(0.6))
    assert v["verdict"] == "cannot tell at this n" and v["wins"] == 3 and not v["teacher_better"]
    # a cut student answer never beats a finished teacher answer, even a better-written one
    cut = records("base", GOOD, 4, finished=False)
    v = teacher_vs_student(records("teacher", POOR, 4), cut, panel, validation(0.6))
    assert v["student_unfinished"] == 4 and v["losses"] == 0 and v["finished_rule"]["rubric"] == 4
    empty = teacher_vs_student([], cut, panel, None)
    assert empty["n"] == 0 and empty["verdict"] is None and "not compared" in sentence(empty)


# --------------------------------------------------------------------------- the teacher stage


@pytest.fixture()
def project(workdir):
    import shutil

    from conftest import ROOT

    prepared = workdir / "data/prepared"
    prepared.mkdir(parents=True)
    qs = ["Why is the sky blue?", "What is photosynthesis?", "How do magnets work?"]
    (prepared / "sft.jsonl").write_text("".join(json.dumps({"id": f"sft{i}", "question": q}) + "\n" for i, q in enumerate(qs)))
    shutil.copytree(ROOT / "prompts", workdir / "prompts")
    write_params(workdir / "params.yaml", {"teacher": {"splits": ["sft"], "min_words": 3, "model": "gpt-test",
                                                       "backend": "openai", "api_key_env": "none"},
                                           "judge": {"panel": RUBRIC}})
    return workdir


def test_teacher_stage_writes_vs_student_and_warns(project):
    from stages import teacher

    student = project / "data/generations/base/sft.jsonl"
    student.parent.mkdir(parents=True)
    student.write_text("".join(json.dumps({"id": f"sft{i}", "question": "q", "model": "base", "sample": 0,
                                           "answer": GOOD.format(q="It is so."), "finished": True}) + "\n" for i in range(3)))
    (project / "metrics").mkdir()
    (project / "metrics/validate.json").write_text(json.dumps(validation(0.6)))
    with FakeOpenAIServer() as server:
        write_params(project / "params.yaml", {"teacher": {"base_url": server.base_url, "plan": "full"}})
        r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 0, r.output
    m = json.loads((project / "metrics/teacher.json").read_text())
    assert m["plan"] == "full" and m["empty_fraction"] == 0 and m["max_new_tokens"] == 384
    v = m["vs_student"]
    assert v["n"] == 3 and v["judge"] == "rubric" and v["teacher_better"] is False
    assert v["verdict"] == "cannot tell at this n" and v["judge_ci_low"] == 0.6
    assert "WARNING: the teacher is not shown to be better" in r.stderr
    # without the student's answers the check is skipped, with a warning
    student.unlink()
    with FakeOpenAIServer() as server:
        write_params(project / "params.yaml", {"teacher": {"base_url": server.base_url}})
        r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 0 and "was not compared with its student" in r.stderr
    assert json.loads((project / "metrics/teacher.json").read_text())["vs_student"] is None


# --------------------------------------------------------------------------- finished flags on sheets


def test_build_and_read_sheet_carry_finished_flags(tmp_path):
    pairs = [{"item_id": f"i{n}", "question": "q", "answer_1": "one", "answer_2": "two", "model_1": "x", "model_2": "y",
              "finished_1": True, "finished_2": False} for n in range(20)]
    sheet, key = build_sheet(pairs + [{**pairs[0], "item_id": "nf", "finished_2": None}], seed=0)
    for item, k in zip(sheet, key):
        if item["item_id"] == "nf":
            assert "finished_a" not in item
            continue
        x_side = "a" if k["a_model"] == "x" else "b"
        y_side = "b" if x_side == "a" else "a"
        assert item[f"finished_{x_side}"] is True and item[f"finished_{y_side}"] is False
        assert item[f"answer_{x_side}"] == "one"
    path = tmp_path / "sheet.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in sheet))
    assert read_sheet(path) == sheet
    with pytest.raises(DataError, match="finished_1"):
        build_sheet([{**pairs[0], "finished_1": "yes"}], seed=0)
    path.write_text(json.dumps({**sheet[0], "finished_a": 1}) + "\n")
    with pytest.raises(DataError, match="finished_a"):
        read_sheet(path)


def test_compare_stage_carries_finished(workdir):
    from stages import compare

    prepared = [{"id": f"q{i}", "question": f"Question {i}?"} for i in range(3)]
    (workdir / "data/prepared").mkdir(parents=True)
    (workdir / "data/prepared/eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prepared))
    for model, finished in (("base", False), ("sft", True)):
        d = workdir / "data/generations" / model
        d.mkdir(parents=True)
        d.joinpath("eval.jsonl").write_text("".join(json.dumps({"id": q["id"], "model": model, "sample": 0, "answer": model,
                                                                "finished": finished}) + "\n" for q in prepared))
    write_params(workdir / "params.yaml", {"compare": {"pairs": None}})
    write_params(workdir / "params.yaml", {"compare": {"pairs": {"base_vs_sft": ["base", "sft"]}, "seed": 0}})
    r = CliRunner().invoke(compare.main, [])
    assert r.exit_code == 0, r.output
    sheet = read_jsonl(workdir / "data/compare/base_vs_sft/sheet.jsonl")
    for item in sheet:
        for side in "ab":
            assert item[f"finished_{side}"] == (item[f"answer_{side}"] == "sft")
