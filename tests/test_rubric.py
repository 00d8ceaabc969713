"""Tests for sciexplain.rubric: the deterministic rubric judge."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sciexplain.rubric import SUBSCORES, RubricJudge, features
from sciexplain.strengths import STRENGTHS

ROOT = Path(__file__).resolve().parents[1]

Q = "Why is the sky blue?"

GOOD = """The sky appears blue because air molecules scatter short (blue) wavelengths of sunlight much more strongly than long (red) wavelengths.

This effect is called Rayleigh scattering. It refers to the scattering of light by particles much smaller than its wavelength, and its strength rises steeply as the wavelength gets shorter. As a result, blue light is redirected across the whole sky, whereas most red and yellow light continues along its original path.

For example, at sunset sunlight crosses a much thicker layer of air. Most of the blue light is therefore scattered away before it reaches the observer, so the remaining direct light typically looks orange or red.

In summary, the blue colour of the sky is a consequence of the stronger scattering of short wavelengths by the molecules of the atmosphere."""

# the same content, as one run-on paragraph wrapped in chit-chat
RUNON = (
    "Great question! I love this one! So basically the sky appears blue because air molecules scatter "
    "short (blue) wavelengths of sunlight much more strongly than long (red) wavelengths and this effect is "
    "called Rayleigh scattering and it refers to the scattering of light by particles much smaller than its "
    "wavelength and its strength rises steeply as the wavelength gets shorter so blue light is redirected "
    "across the whole sky whereas most red and yellow light continues along its original path, and at sunset "
    "sunlight crosses a much thicker layer of air so most of the blue light is scattered away before it "
    "reaches you and the remaining direct light looks orange or red. I hope this helps, let me know if you "
    "have any other questions! 😊"
)

LOOP = "The sky is blue because of Rayleigh scattering. " + (
    "The sky is blue because the blue light is scattered by the air and the sky is blue. " * 8
)

SHORT = "Rayleigh scattering makes the sky blue."

FILLER_PAD = """It is important to note that this is a very important topic, and there are many aspects to consider when it comes to the colour of the sky. Basically, the sky is a really interesting thing to think about, and a lot of people have wondered about it for a very long time.

It is worth noting that light is a kind of wave, and waves are really fascinating when it comes to physics. As mentioned, there are many different factors that play a role, and it is important to keep all of them in mind when thinking about the sky and its colour.

"""

# on-topic but verbose restatement, no filler phrases: only adds words
RESTATE_PAD = """The colour that an observer sees in the sky depends on the light that reaches the eye from the sky. The light that reaches the eye from the sky has been scattered by the air. The air scatters the blue part of the light more than the red part of the light. The blue part of the light therefore reaches the eye from every direction of the sky.

The red part of the light is scattered less by the air. The red part of the light therefore mostly travels in a straight line from the sun. The observer sees the red part of the light mainly when looking towards the sun. The rest of the sky looks blue to the observer.

The same reasoning applies on every clear day. The sky looks blue on every clear day because the blue part of the light is scattered more. The sky looks less blue on a cloudy day because clouds scatter all colours of the light. The colour of the sky therefore depends on the air and on the clouds.

"""


def _with_before_summary(pad: str) -> str:
    head, tail = GOOD.rsplit("\n\n", 1)
    return head + "\n\n" + pad + tail


@pytest.fixture(scope="module")
def judge() -> RubricJudge:
    return RubricJudge()


def test_structured_beats_runon_with_chitchat(judge):
    good, bad = judge.score(Q, GOOD), judge.score(Q, RUNON)
    assert good["total"] > bad["total"] + 0.2
    assert good["structure"] > bad["structure"]
    assert good["register"] > bad["register"]
    assert good["coherence"] > bad["coherence"]
    choice, strength = judge.judge_pair(Q, GOOD, RUNON)
    assert choice == "A" and strength == "Significantly better"


def test_paragraphs_alone_improve_structure(judge):
    one_para = GOOD.replace("\n\n", " ")
    assert features(one_para)["n_paragraphs"] == 1 and features(GOOD)["n_paragraphs"] == 4
    assert judge.score(Q, GOOD)["structure"] > judge.score(Q, one_para)["structure"]
    assert judge.score(Q, GOOD)["total"] > judge.score(Q, one_para)["total"]


def test_missing_summary_and_filler_opening_lower_structure(judge):
    no_summary = GOOD.rsplit("\n\n", 1)[0]
    off_topic_open = "Light is interesting. " + GOOD
    filler_open = GOOD.replace("The sky appears", "Sure, so the sky appears", 1)  # still on topic
    base = judge.score(Q, GOOD)["structure"]
    assert judge.score(Q, no_summary)["structure"] < base
    assert features(off_topic_open, Q)["opening_overlap"] == 0.0
    assert judge.score(Q, off_topic_open)["structure"] < base
    assert features(filler_open, Q)["opening_overlap"] == 1.0
    assert features(filler_open)["opening_filler"] and not features(GOOD)["opening_filler"]
    assert judge.score(Q, filler_open)["structure"] < base


def test_looping_answer_scores_low_on_repetition(judge):
    s = judge.score(Q, LOOP)
    assert s["repetition"] < 0.2
    assert s["total"] < 0.2
    assert features(LOOP)["distinct_3gram"] < 0.5
    assert judge.score(Q, GOOD)["repetition"] == 1.0
    # a good answer that degenerates into a loop at the end
    tail_loop = GOOD + "\n\nThe sky is blue. The sky is blue. The sky is blue. The sky is blue."
    assert judge.score(Q, tail_loop)["repetition"] < 0.7
    assert judge.judge_pair(Q, GOOD, tail_loop)[0] == "A"
    # an answer repeated twice is a loop as well
    assert judge.score(Q, GOOD + "\n\n" + GOOD)["repetition"] < 0.2


@pytest.mark.parametrize(
    "meta",
    [
        "Answer: " + GOOD,
        GOOD + " (150 tokens)",
        "Here is my explanation of why the sky is blue.\n\n" + GOOD,
        GOOD + "\n\nWord count: 130 words.",
    ],
)
def test_meta_text_is_penalised(judge, meta):
    assert features(meta)["n_meta"] >= 1 and features(GOOD)["n_meta"] == 0
    good, bad = judge.score(Q, GOOD), judge.score(Q, meta)
    assert bad["register"] < good["register"] - 0.2
    assert bad["total"] < good["total"] - 0.05
    assert judge.judge_pair(Q, meta, GOOD)[0] == "B"


@pytest.mark.parametrize(
    "prefix",
    ["As an AI, I can explain this. ", "Great question!!! ", "🌈☀️ "],
)
def test_chitchat_ai_and_emoji_penalised(judge, prefix):
    assert judge.score(Q, prefix + GOOD)["register"] < judge.score(Q, GOOD)["register"] - 0.1


def test_chitchat_closing_and_filler_penalised(judge):
    closing = GOOD + "\n\nI hope this helps, and feel free to ask more."
    filler = GOOD.replace("This effect", "Basically, this effect").replace(
        "For example", "It is important to note that, for example"
    )
    base = judge.score(Q, GOOD)
    for text, key in ((closing, "n_chitchat"), (filler, "n_filler")):
        assert features(text)[key] >= 1 and features(GOOD)[key] == 0
        s = judge.score(Q, text)
        assert s["register"] < base["register"] - 0.1
        assert s["total"] < base["total"]


def test_very_short_answer_loses(judge):
    s = judge.score(Q, SHORT)
    assert s["length"] < 0.3
    assert judge.judge_pair(Q, SHORT, GOOD) == ("B", "Significantly better")
    assert judge.judge_pair(Q, GOOD, SHORT) == ("A", "Significantly better")


@pytest.mark.parametrize("pad", [FILLER_PAD, RESTATE_PAD])
def test_padded_answer_does_not_beat_concise_one(judge, pad):
    padded = _with_before_summary(pad)
    assert features(padded)["n_words"] > features(GOOD)["n_words"] + 100
    assert judge.score(Q, padded)["total"] <= judge.score(Q, GOOD)["total"]
    assert judge.judge_pair(Q, padded, GOOD)[0] != "A"


def test_length_factor_is_soft_and_parameterised():
    j = RubricJudge()
    assert j.length_score(0) == 0.0
    assert j.length_score(10) < j.length_score(24) < 0.4 < j.length_score(40) < 1.0
    assert j.length_score(60) == j.length_score(150) == j.length_score(250) == 1.0
    assert 0.6 <= j.length_score(450) < 1.0 and j.length_score(5000) == pytest.approx(0.6)
    custom = RubricJudge(min_words=10, target_lo=20, target_hi=40, max_words=80, long_floor=0.2)
    assert custom.length_score(30) == 1.0 and custom.length_score(100) == pytest.approx(0.2)
    assert custom.length_score(5) < 0.4
    with pytest.raises(ValueError):
        RubricJudge(target_lo=300, target_hi=200)


def test_judge_pair_is_symmetric(judge):
    answers = [GOOD, RUNON, LOOP, SHORT, _with_before_summary(FILLER_PAD), GOOD.replace("\n\n", " ")]
    flip = {"A": "B", "B": "A", None: None}
    for a in answers:
        for b in answers:
            c1, s1 = judge.judge_pair(Q, a, b)
            c2, s2 = judge.judge_pair(Q, b, a)
            assert s1 == s2 and c2 == flip[c1]
            assert s1 in STRENGTHS
            assert (c1 is None) == (s1 == "Unsure")
    assert judge.judge_pair(Q, GOOD, GOOD) == (None, "Unsure")


def test_strength_thresholds():
    j = RubricJudge(t_unsure=0.02, t_slight=0.05, t_better=0.12)
    assert j.strength(0.0) == (None, "Unsure")
    assert j.strength(0.019) == (None, "Unsure")
    assert j.strength(0.03) == ("A", "Slightly better")
    assert j.strength(-0.03) == ("B", "Slightly better")
    assert j.strength(0.08) == ("A", "Better")
    assert j.strength(-0.5) == ("B", "Significantly better")
    assert RubricJudge(t_unsure=0.0).strength(0.0) == (None, "Unsure")  # a tie is never a preference
    wide = RubricJudge(t_unsure=0.9, t_slight=0.95, t_better=0.99)
    assert wide.judge_pair(Q, GOOD, RUNON) == (None, "Unsure")
    with pytest.raises(ValueError):
        RubricJudge(t_unsure=0.1, t_slight=0.05)


def test_scores_in_unit_interval(judge):
    for text in [GOOD, RUNON, LOOP, SHORT, "!!!", "a", "Yes.\n\n- x\n- y", GOOD * 5]:
        s = judge.score(Q, text)
        assert set(s) == set(SUBSCORES) | {"total"}
        assert all(0.0 <= v <= 1.0 for v in s.values()), (text[:30], s)


def test_deterministic_within_and_across_processes(judge):
    texts = [GOOD, RUNON, LOOP, SHORT]
    first = [judge.score(Q, t) for t in texts]
    assert first == [RubricJudge().score(Q, t) for t in texts]
    code = (
        "import json,sys; from sciexplain.rubric import RubricJudge; "
        "texts=json.load(sys.stdin); print(json.dumps([RubricJudge().score(t[0], t[1]) for t in texts]))"
    )
    payload = json.dumps([[Q, t] for t in texts])
    outs = set()
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, text=True,
                           env=env, cwd=ROOT, check=True)
        outs.add(r.stdout)
    assert len(outs) == 1
    assert json.loads(outs.pop()) == first


@pytest.mark.parametrize("empty", ["", "   \n\n  ", None, "😊 !!! ..."])
def test_empty_answer_scores_zero(judge, empty):
    s = judge.score(Q, empty)
    assert s["total"] == 0.0 and all(v == 0.0 for v in s.values())
    assert judge.judge_pair(Q, empty, GOOD) == ("B", "Significantly better")
    assert features(empty)["n_words"] == 0


def test_non_string_answer_rejected(judge):
    with pytest.raises(TypeError):
        judge.score(Q, 42)


def test_features_report_measurable_values():
    f = features(GOOD, Q)
    assert f["n_words"] == len(GOOD.split())
    assert f["n_sentences"] == 7
    assert f["n_paragraphs"] == 4
    assert f["mean_sentence_len"] == pytest.approx(f["n_words"] / 7)
    assert 0.95 < f["distinct_3gram"] <= 1.0
    assert f["n_definitions"] >= 2 and f["summary_cue_end"] and f["opening_overlap"] == 1.0
    assert json.loads(json.dumps(f)) == f  # plain JSON-able values for reports
    # abbreviations and decimals do not end a sentence
    g = features("Light of short wavelength (e.g. blue) scatters 5.5 times more. It is then seen everywhere.")
    assert g["n_sentences"] == 2
    lst = features("Three steps:\n\n1. Light enters the air.\n2. Molecules scatter it.\n3. Blue reaches the eye.")
    assert lst["n_list_items"] == 3 and lst["n_sentences"] == 3


def test_config_roundtrip():
    j = RubricJudge(target_hi=300, t_better=0.2, weights={"structure": 1, "register": 1})
    cfg = j.config()
    assert cfg["target_hi"] == 300 and cfg["weights"]["coherence"] == 0.0
    cfg.pop("version")
    assert RubricJudge.from_config(cfg).config() == j.config()
    with pytest.raises(ValueError):
        RubricJudge(weights={"accuracy": 1.0})


def test_pathological_inputs_are_fast(judge):
    import time

    start = time.perf_counter()
    for text in ["a" * 20000, "a-" * 5000, "(" + "word " * 2000, "x — the " * 1000, GOOD * 20]:
        judge.score(Q, text)
    assert time.perf_counter() - start < 2.0  # no regex backtracking blow-up


def _cut_points(text: str, step: int = 3):
    """Word-boundary prefixes of ``text`` (every ``step``-th word) that stop mid-sentence."""
    import re

    pieces = re.split(r"(\s+)", text)
    for i in range(1, len(pieces), 2 * step):
        cut = "".join(pieces[:i]).rstrip()
        if cut and not features(cut)["ends_cleanly"]:
            yield cut


def test_cut_answer_never_beats_its_trimmed_version(judge):
    """The penalty for a cut-off answer is unconditional: with or without a summary, at every cut point."""
    from sciexplain.prompts import load_few_shot, trim_to_sentence

    texts = [(Q, GOOD), (Q, RUNON)] + [(ex["question"], ex["answer"]) for ex in load_few_shot(ROOT / "prompts")]
    n = 0
    for question, answer in texts:
        for cut in _cut_points(answer):
            trimmed = trim_to_sentence(cut)
            sc, st = judge.score(question, cut), judge.score(question, trimmed)
            assert sc["finished"] == 0.5 and sc["total"] <= st["total"] * 0.5 + 1e-6, cut[-60:]
            assert judge.strength(st["total"] - sc["total"])[0] in ("A", None)  # judge_pair(trimmed, cut)
            n += 1
    assert n > 100


def test_unfinished_penalty_applies_without_a_summary(judge):
    no_summary = GOOD.rsplit("\n\nIn summary", 1)[0]
    cut = no_summary + "\n\nThe same effect also explains why distant mountains look bluish, because the"
    assert not features(no_summary)["summary_cue_end"]
    assert judge.score(Q, cut)["total"] < judge.score(Q, no_summary)["total"]
    assert judge.judge_pair(Q, cut, no_summary) == ("B", "Significantly better")
    assert RubricJudge(unfinished_factor=1.0).score(Q, cut)["total"] == judge.score(Q, no_summary)["total"]
    with pytest.raises(ValueError, match="unfinished_factor"):
        RubricJudge(unfinished_factor=1.5)
