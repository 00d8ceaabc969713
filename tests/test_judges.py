"""The judge panel: rubric judge output, LLM judge parsing and order swapping, backends (fake, local, openai)."""
from __future__ import annotations

import re

import pytest

import openai_server
from conftest import ROOT
from openai_server import FakeOpenAIServer
from sciexplain.annotation_store import write_annotations
from sciexplain.annotations import STRENGTHS, Annotation, read_annotations
from sciexplain.generation import GenResult
from sciexplain.records import DataError
from sciexplain.judges import (LLMJudge, Panel, combine_calls, load_template, parse_call, render_prompt,
                               run_panel, swap_call, validate_panel)

PROMPT = ROOT / "prompts" / "judge.md"

GOOD = ("Rayleigh scattering explains why the sky is blue. Sunlight contains every visible wavelength, and the "
        "nitrogen and oxygen molecules of the air scatter short wavelengths far more strongly than long ones.\n\n"
        "Because scattering grows steeply as the wavelength shrinks, blue light is redirected across the whole sky, "
        "so light reaches the eye from every direction. Violet is scattered even more, however the Sun emits less "
        "violet and the eye is less sensitive to it.\n\n"
        "In summary, the sky looks blue because air molecules scatter blue sunlight much more than red sunlight.")
POOR = "Great question!!! I think it's blue because the ocean is blue lol. Hope this helps!!"


def sheet_items(n=4):
    """Items whose GOOD answer alternates between A and B."""
    return [{"item_id": f"item{i}", "question": f"Why is the sky blue? (case {i})",
             "answer_a": GOOD if i % 2 == 0 else POOR, "answer_b": POOR if i % 2 == 0 else GOOD} for i in range(n)]


def good_side(i):
    return "A" if i % 2 == 0 else "B"


# --------------------------------------------------------------------------- rubric


def test_rubric_panel_output_format(tmp_path):
    sheet = sheet_items(4) + [{"item_id": "same", "question": "Why is the sky blue?", "answer_a": GOOD, "answer_b": GOOD}]
    out = run_panel(sheet, [{"name": "rubric", "type": "rubric"}])
    assert list(out) == ["rubric"] and list(out["rubric"]) == [s["item_id"] for s in sheet]
    for i in range(4):
        ann = out["rubric"][f"item{i}"]
        assert isinstance(ann, Annotation) and ann.choice == good_side(i) and ann.strength == "Significantly better"
        assert ann.comment.startswith("rubric total")
    assert out["rubric"]["same"] == Annotation("", "Unsure", out["rubric"]["same"].comment)
    assert out.stats["rubric"] == {"items": 5, "ties": 1}
    # the human annotation file format: written and read back unchanged
    write_annotations(tmp_path / "judge-rubric.jsonl", out["rubric"])
    assert read_annotations(tmp_path / "judge-rubric.jsonl", [s["item_id"] for s in sheet]) == out["rubric"]


def test_rubric_params_are_used():
    sheet = sheet_items(2)
    strict = run_panel(sheet, [{"name": "r", "type": "rubric", "params": {"t_unsure": 0.99, "t_slight": 0.99, "t_better": 0.99}}])
    assert {a.strength for a in strict["r"].values()} == {"Unsure"}


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ("Verdict: A, Strength: Better", ("A", "Better")),
    ("verdict: b; strength: slightly   better", ("B", "Slightly better")),
    ("**Verdict: B**, **Strength: Significantly better**", ("B", "Significantly better")),
    ("A is clearer than B.\nVerdict: A, Strength: Slightly better\n", ("A", "Slightly better")),
    ("Verdict: B, Strength: Better\nOn reflection:\nVerdict: A, Strength: Better", ("A", "Better")),
    ("Verdict: Tie, Strength: Unsure", ("", "Unsure")),
    ("Verdict: Tie", ("", "Unsure")),
    ("Verdict: A, Strength: Unsure", ("", "Unsure")),
])
def test_parse_valid(text, expected):
    assert parse_call(text) == expected


@pytest.mark.parametrize("text", [
    "", None, "A", "I prefer answer A.", "Verdict: A", "Verdict: C, Strength: Better", "Strength: Better",
    "Verdict: A, Strength: Much better", "A\n\nA\n\nB",
])
def test_parse_malformed(text):
    assert parse_call(text) is None


def test_combine_and_swap():
    assert swap_call(("A", "Better")) == ("B", "Better") and swap_call(("", "Unsure")) == ("", "Unsure")
    assert swap_call(None) is None
    assert combine_calls(("A", "Significantly better"), ("A", "Slightly better")) == (Annotation("A", "Slightly better", ""), "agree")
    assert combine_calls(("B", "Better"), ("B", "Significantly better")) == (Annotation("B", "Better", ""), "agree")
    assert combine_calls(("A", "Better"), ("B", "Better"))[1] == "disagree"
    assert combine_calls(("A", "Better"), ("", "Unsure")) == (Annotation("", "Unsure", ""), "disagree")
    assert combine_calls(("", "Unsure"), ("", "Unsure"))[1] == "tie"
    assert combine_calls(None, ("A", "Better")) == (Annotation("", "Unsure", ""), "unparseable")


def test_template_and_render(tmp_path):
    template = load_template(PROMPT)
    text = render_prompt(template, "Q?", "first {answer_b} answer", "")
    assert "Q?" in text and "first {answer_b} answer" in text and "(empty answer)" in text
    assert "{question}" not in text and text.index("first") < text.index("(empty answer)")
    (tmp_path / "bad.md").write_text("Only {question} and {answer_a}")
    with pytest.raises(DataError, match="answer_b"):
        load_template(tmp_path / "bad.md")


# --------------------------------------------------------------------------- LLM judge, fake backend


class FakeBackend:
    """Deterministic judge: reads which answer (A or B section of the prompt) holds the GOOD text.

    mode "good": picks the good answer, "Significantly better" when it is shown first, else "Slightly better";
    mode "first": always picks A (position bias); mode "junk": replies without a verdict.
    """

    name = "fake"

    def __init__(self, mode="good"):
        self.mode, self.model, self.calls = mode, f"fake-{mode}", 0

    def generate(self, requests, sampling):
        out = []
        for r in requests:
            self.calls += 1
            prompt = r.messages[-1][1]
            section_a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", prompt, re.S).group(1)
            if self.mode == "junk":
                text = "Both answers have merits."
            elif self.mode == "first":
                text = "Verdict: A, Strength: Better"
            else:
                side = "A" if "Rayleigh" in section_a else "B"
                text = f"Verdict: {side}, Strength: " + ("Significantly better" if side == "A" else "Slightly better")
            out.append(GenResult(id=r.id, sample=r.sample, text=text, completion_tokens=5))
        return out


LLM_SPEC = [{"name": "fake", "type": "llm"}]


def _panel(tmp_path, mode, **kw):
    return Panel(LLM_SPEC, cache_dir=tmp_path / "cache", prompt_path=PROMPT, backends={"fake": FakeBackend(mode)},
                 progress=False, **kw)


def test_llm_judge_swaps_order_and_keeps_weaker_strength(tmp_path):
    panel = _panel(tmp_path, "good")
    out = panel.judge(sheet_items(4))
    for i in range(4):
        ann = out["fake"][f"item{i}"]
        assert (ann.choice, ann.strength) == (good_side(i), "Slightly better"), ann
        assert ann.comment.startswith("agree")
    assert out.stats["fake"]["calls"] == 8 and out.stats["fake"]["agree"] == 4 and out.stats["fake"]["unparseable"] == 0
    assert (tmp_path / "cache" / "fake.jsonl").exists()


def test_llm_judge_position_bias_is_unsure(tmp_path):
    out = _panel(tmp_path, "first").judge(sheet_items(4))
    assert all(a.strength == "Unsure" and a.choice == "" for a in out["fake"].values())
    assert out.stats["fake"]["disagree"] == 4 and out.stats["fake"]["unparseable"] == 0


def test_llm_judge_unparseable_is_unsure_and_counted(tmp_path):
    out = _panel(tmp_path, "junk").judge(sheet_items(3))
    assert {a.strength for a in out["fake"].values()} == {"Unsure"}
    assert out.stats["fake"]["unparseable"] == 6 and out.stats["fake"]["unparseable_items"] == 3


def test_llm_judge_cache_no_second_call(tmp_path):
    fake = FakeBackend("good")
    judge = LLMJudge(fake, load_template(PROMPT), cache_path=tmp_path / "c.jsonl")
    first = judge.judge(sheet_items(2), progress=False)
    assert fake.calls == 4
    assert judge.judge(sheet_items(2), progress=False) == first and fake.calls == 4
    assert judge.last_stats["hits"] == 4 and judge.last_stats["misses"] == 0


@pytest.mark.parametrize("spec, field", [
    ([{"name": "x", "type": "nope"}], "type"),
    ([{"name": "x", "type": "rubric"}, {"name": "x", "type": "rubric"}], "name"),
    ([{"name": "bad/name", "type": "rubric"}], "name"),
    ([{"name": "x", "type": "rubric", "backend": "local"}], "backend"),
    ([{"name": "x", "type": "rubric", "params": {"t_unsure": 5}}], "params"),
    ([{"name": "x", "type": "llm", "backend": "openai"}], "model"),
    ([{"name": "x", "type": "llm", "backend": "local", "model": "gpt"}], "model"),
    ([{"name": "x", "type": "llm", "backend": "tgi"}], "backend"),
    ([{"name": "x", "type": "llm", "backend": "vllm", "model": "gpt"}], "model"),
    ([{"name": "x", "type": "llm", "max_new_tokens": 0}], "max_new_tokens"),
    ({"name": "x"}, "judge.panel"),
])
def test_validate_panel_errors_name_the_entry(spec, field):
    from sciexplain.params_schema import ParamsError

    with pytest.raises(ParamsError) as e:
        validate_panel(spec)
    assert str(e.value).startswith("params.yaml: judge.panel") and field in str(e.value), str(e.value)


# --------------------------------------------------------------------------- real backends


def test_local_backend_judge_runs(tiny_base, tmp_path):
    spec = [{"name": "tiny", "type": "llm", "backend": "local", "max_new_tokens": 6, "batch_size": 8},
            {"name": "rubric", "type": "rubric"}]
    out = run_panel(sheet_items(3), spec, base_dir=tiny_base, cache_dir=tmp_path / "cache", prompt_path=PROMPT,
                    progress=False)
    assert list(out) == ["tiny", "rubric"] and set(out["tiny"]) == {"item0", "item1", "item2"}
    for ann in out["tiny"].values():
        assert ann.strength in STRENGTHS and ann.choice in ("A", "B", "")
        assert (ann.choice == "") == (ann.strength == "Unsure")
    st = out.stats["tiny"]
    assert st["calls"] == 6 and st["misses"] >= 1
    assert st["unparseable_items"] + st["disagree"] + st["ties"] + st["agree"] == 3
    assert len((tmp_path / "cache" / "tiny.jsonl").read_text().splitlines()) == st["misses"]


def test_openai_backend_judge(tmp_path, monkeypatch):
    """The openai judge through a real local HTTP server; the reply picks the answer shown first."""
    monkeypatch.setattr(openai_server, "answer_text", lambda body: "Thinking...\nVerdict: A, Strength: Better")
    with FakeOpenAIServer() as srv:
        spec = [{"name": "gpt", "type": "llm", "backend": "openai", "model": "judge-test", "base_url": srv.base_url,
                 "api_key_env": None, "max_new_tokens": 50}]
        out = run_panel(sheet_items(2), spec, cache_dir=tmp_path / "cache", prompt_path=PROMPT, progress=False)
        assert srv.total_served == 4 and all(b["temperature"] == 0.0 and b["max_tokens"] == 50 for b in srv.bodies)
        assert {a.strength for a in out["gpt"].values()} == {"Unsure"} and out.stats["gpt"]["disagree"] == 2


# --------------------------------------------------------------------------- unfinished answers


def test_finished_rule_moves_every_verdict_towards_the_finished_answer():
    from sciexplain.judges import apply_finished_rule

    sheet = [{"item_id": i, "question": "q", "answer_a": "a", "answer_b": "b", "finished_a": fa, "finished_b": fb}
             for i, fa, fb in (("cut_b_wins", True, False), ("cut_a_tie", False, True), ("fin_a_wins", True, False),
                               ("both_cut", False, False), ("both_fin", True, True))]
    sheet.append({"item_id": "no_flags", "question": "q", "answer_a": "a", "answer_b": "b"})
    anns = {"cut_b_wins": Annotation("B", "Significantly better", "x"), "cut_a_tie": Annotation("", "Unsure", ""),
            "fin_a_wins": Annotation("A", "Better", ""), "both_cut": Annotation("B", "Better", ""),
            "both_fin": Annotation("A", "Better", ""), "no_flags": Annotation("B", "Better", "")}
    out, changed = apply_finished_rule(anns, sheet)
    assert changed == 2
    assert out["cut_b_wins"][:2] == ("", "Unsure") and out["cut_b_wins"].comment.startswith("x; finished rule (B unfinished)")
    assert out["cut_a_tie"][:2] == ("B", "Slightly better")
    for same in ("fin_a_wins", "both_cut", "both_fin", "no_flags"):
        assert out[same] == anns[same]


def test_panel_never_lets_an_unfinished_answer_win(tmp_path):
    """Every judge of the panel (rubric and LLM) goes through the rule; LLM judges never see the flags."""
    sheet = sheet_items(4)
    for item in sheet:  # the GOOD answer is the one cut by the budget
        item["finished_a"], item["finished_b"] = item["answer_a"] != GOOD, item["answer_b"] != GOOD
    backend = FakeBackend("good")
    seen = []
    generate = backend.generate
    backend.generate = lambda reqs, sampling: seen.extend(reqs) or generate(reqs, sampling)
    panel = Panel(LLM_SPEC + [{"name": "rubric", "type": "rubric"}], cache_dir=tmp_path / "cache", prompt_path=PROMPT,
                  backends={"fake": backend}, progress=False)
    out = panel.judge(sheet)
    for name in ("fake", "rubric"):
        assert all(a.strength == "Unsure" for a in out[name].values()), name
        assert out.stats[name]["finished_rule"] == 4
    assert seen and not any("finished" in content.lower() for r in seen for _, content in r.messages)
    # without the flags nothing changes, and no finished_rule count appears
    plain = Panel([{"name": "rubric", "type": "rubric"}], progress=False).judge(sheet_items(4))
    assert "finished_rule" not in plain.stats["rubric"] and {a.strength for a in plain["rubric"].values()} != {"Unsure"}
