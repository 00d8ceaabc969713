from pathlib import Path

import pytest

from sciexplain import prompts
from sciexplain.records import DataError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_prompts_load_and_build_messages():
    system = prompts.load_system_prompt(ROOT / "prompts")
    shots = prompts.load_few_shot(ROOT / "prompts")
    assert "Plan:" in system and "Answer:" in system and len(shots) >= 2
    msgs = prompts.teacher_messages("Why is the sky blue?", system, shots[:2])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"].startswith("Plan:") and "\n\nAnswer:\n" in msgs[2]["content"]
    assert prompts.student_messages("Why?") == [{"role": "user", "content": "Why?"}]
    for ex in shots:  # the few-shot answers themselves pass the filters
        assert prompts.clean_teacher_answer(f"Plan:\n{ex['plan']}\n\nAnswer:\n{ex['answer']}", True, 40) == (ex["answer"], None)


@pytest.mark.parametrize("raw, expect", [
    ("Plan:\n- a\n- b\n\nAnswer:\nIce floats.", ("Ice floats.", True)),
    ("**Plan:** x\n**Answer:** Ice floats.", ("Ice floats.", True)),
    ("Ice floats because it is light.", ("Ice floats because it is light.", False)),
    ("Plan:\n- a\n- b", ("", True)),
])
def test_extract_answer_drops_plan(raw, expect):
    assert prompts.extract_answer(raw) == expect


def test_meta_text_stripped_or_flagged():
    text, n = prompts.strip_meta("Ice floats.\n\n(152 tokens)\nWord count: 40")
    assert text == "Ice floats." and n == 2
    assert prompts.clean_teacher_answer("Answer: " + "word " * 50 + "(120 tokens) more", True, 10)[1] == "meta_text"
    assert prompts.clean_teacher_answer("Answer: short one", True, 10)[1] == "too_short"
    assert prompts.clean_teacher_answer("Answer: " + "word " * 50, False, 10)[1] == "unfinished"
    assert prompts.clean_teacher_answer("Plan: only a plan", True, 10)[1] == "empty"


def test_missing_prompt_files(tmp_path):
    with pytest.raises(DataError, match="system.md"):
        prompts.load_system_prompt(tmp_path)
    (tmp_path / "few_shot.jsonl").write_text('{"question": "q", "plan": "p"}\n')
    with pytest.raises(DataError, match="field 'answer'"):
        prompts.load_few_shot(tmp_path)


def test_unfinished_answers_trimmed_to_last_sentence():
    raw = "Plan:\n- x\n\nAnswer:\nIce floats because it is less dense. Water expands on freezing (about 9%). The lattice is"
    assert prompts.clean_teacher_answer(raw, False, 5, "drop")[1] == "unfinished"
    text, reason = prompts.clean_teacher_answer(raw, False, 5, "trim")
    assert reason is None and text == "Ice floats because it is less dense. Water expands on freezing (about 9%)."
    assert prompts.clean_teacher_answer(raw, False, 30, "trim")[1] == "unfinished"  # too little left


@pytest.mark.parametrize("plan", prompts.PLAN_MODES)
def test_plan_modes_build_their_own_demonstrations(plan):
    system = prompts.load_system_prompt(ROOT / "prompts", plan)
    shots = prompts.load_few_shot(ROOT / "prompts", 2, plan)
    msgs = prompts.teacher_messages("Why is the sky blue?", system, shots, plan)
    demo = msgs[2]["content"]
    assert "quality metrics" in system and "80 and 180 words" in system
    if plan == "none":
        assert "Plan:" not in system and demo == shots[0]["answer"]
    else:
        assert "Plan:" in system and "Answer:" in system
        assert demo.startswith("Plan:") and demo.endswith(shots[0]["answer"])
        assert (shots[0]["plan"] in demo) == (plan == "full") and (shots[0]["plan_short"] in demo) == (plan == "short")
    # whatever the format, the stored answer is the explanation alone
    assert prompts.clean_teacher_answer(demo, True, 40) == (shots[0]["answer"], None)
    # the short plan is short: under two thirds of the full plan's characters
    assert all(len(ex["plan_short"]) < len(ex["plan"]) / 1.5 for ex in prompts.load_few_shot(ROOT / "prompts"))


def test_plan_param_checked(tmp_path):
    with pytest.raises(DataError, match="teacher.plan"):
        prompts.load_system_prompt(ROOT / "prompts", "long")
    (tmp_path / "system.md").write_text("Be clear.")
    assert prompts.load_system_prompt(tmp_path, "none") == "Be clear."
    with pytest.raises(DataError, match="plan_short.md"):
        prompts.load_system_prompt(tmp_path, "short")
    (tmp_path / "few_shot.jsonl").write_text('{"question": "q", "plan": "p", "answer": "a"}\n')
    assert prompts.load_few_shot(tmp_path, plan="none")[0]["answer"] == "a"
    with pytest.raises(DataError, match="field 'plan_short'"):
        prompts.load_few_shot(tmp_path, plan="short")


def test_clean_teacher_answer_refuses_an_unknown_unfinished_rule():
    """`keep` once acted as drop: any value but trim or drop is an error, whoever calls."""
    from sciexplain.prompts import clean_teacher_answer

    with pytest.raises(ValueError, match="teacher.unfinished: expected 'trim' or 'drop', got 'keep'"):
        clean_teacher_answer("An answer that was cut off in the middle of", False, 1, "keep")
