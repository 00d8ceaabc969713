"""The reward model against people: losses, the held-out evaluation with baselines, and the gate every stage that
uses the reward model passes (score_samples, select, score_eval). No model: scorers here are plain functions."""
from __future__ import annotations

import json
import logging
import math

import pytest
from click.testing import CliRunner

from conftest import write_params
from sciexplain.records import DataError, UserError, stable_id
from sciexplain.reward import constant_loss, pair_loss
from sciexplain.reward_eval import heldout_eval
from sciexplain.rm_gate import check, figure, require_validated, validation_block
from stages import score_eval, score_samples, select


# --------------------------------------------------------------------------- losses

def test_constant_predictor_loss_on_a_constructed_case():
    # r_chosen = r_rejected: -logsigmoid(-m) = log(1 + e^m) per pair
    margins = [0.0, 1.0, 0.5, 0.25]
    want = (math.log(2) + math.log(1 + math.e) + math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(0.25))) / 4
    assert constant_loss(margins) == pytest.approx(want, rel=1e-12)
    assert constant_loss([0.0] * 3) == pytest.approx(math.log(2))
    assert constant_loss([]) is None
    # the model's loss on the same pairs: -logsigmoid(c - r - m)
    c, r = [2.0, 0.0, -1.0, 0.3], [0.0, 0.5, 1.0, 0.3]
    want = sum(math.log1p(math.exp(-(a - b - m))) for a, b, m in zip(c, r, margins)) / 4
    assert pair_loss(c, r, margins) == pytest.approx(want, rel=1e-12)
    assert pair_loss([50.0], [0.0], [1.0]) == pytest.approx(math.exp(-49), rel=1e-6)  # stable for large gaps
    assert pair_loss([0.0], [50.0], [1.0]) == pytest.approx(51.0, rel=1e-9)
    with pytest.raises(ValueError):
        pair_loss([1.0], [], [0.0])


# --------------------------------------------------------------------------- held-out evaluation

class FakeScorer:
    """Duck-typed RewardScorer: ``score(questions, answers, batch_size, progress)`` -> fn(answer)."""

    def __init__(self, fn):
        self.fn = fn

    def score(self, questions, answers, batch_size=8, progress=False):
        return [float(self.fn(a)) for a in answers]


GOOD = "Light scatters off molecules, and blue light scatters most; therefore the sky looks blue. In summary, Rayleigh."
SHORT_BAD = "lol idk"
LONG_BAD = "I think " + "it is just like that and nobody knows really " * 4


def _pairs(n_questions=12):
    """Per question: GOOD > SHORT_BAD (the longer answer wins) and GOOD > LONG_BAD (the shorter answer wins)."""
    out = []
    for i in range(n_questions):
        q = f"Why is thing {i} blue?"
        for j, bad in enumerate((SHORT_BAD, LONG_BAD)):
            out.append({"id": stable_id(q), "pair_id": f"{i}-{j}", "question": q, "chosen": GOOD + f" {i}",
                        "rejected": bad, "margin": 0.5 if j else None, "strength": None, "source": "t"})
    return out


def test_heldout_eval_good_predictor_clears_and_is_compared_with_the_baselines():
    pairs = _pairs()
    ev = heldout_eval(pairs, FakeScorer(lambda a: 1.0 if a.startswith("Light") else -1.0), n_resamples=300)
    h = ev["heldout"]
    assert h["accuracy"] == 1.0 and h["n"] == 24 and h["questions"] == 12 and h["cluster_ci95_low"] == 1.0
    lg = ev["baselines"]["longer_answer"]
    assert lg["accuracy"] == 0.5 and lg["n"] == 24
    assert set(ev["baselines"]) == {"longer_answer", "rubric_judge", "random"}
    mc = ev["vs_longer"]["reward_model"]
    assert mc == {"model_only_right": 12, "longer_only_right": 0, "discordant": 12,
                  "p": pytest.approx(2 * 0.5 ** 12, rel=1e-3), "p_holm": mc["p_holm"]}
    assert set(ev["vs_longer"]) == {"reward_model", "rubric"} and mc["p_holm"] >= mc["p"]
    # losses on the same pairs, margins included (a null margin is 0)
    margins = [0.0, 0.5] * 12
    assert ev["loss"]["constant"] == pytest.approx(constant_loss(margins), abs=1e-4)
    assert ev["loss"]["heldout"] == pytest.approx(pair_loss([1.0] * 24, [-1.0] * 24, margins), abs=1e-4)
    assert ev["loss"]["beats_constant"] is True
    v = validation_block(h["accuracy"], h["cluster_ci95_low"], h["cluster_ci95_high"], n=h["n"],
                         questions=h["questions"], allow_unvalidated=False)
    assert v["cleared"] is True and "message" not in v
    assert check({"validation": v}, False, "select")["cleared"] is True


def test_heldout_eval_length_predictor_equals_the_longer_rule_and_learns_nothing():
    pairs = _pairs()
    ev = heldout_eval(pairs, FakeScorer(lambda a: len(a.split()) / 100), n_resamples=300)
    assert ev["heldout"]["accuracy"] == ev["baselines"]["longer_answer"]["accuracy"] == 0.5
    assert ev["vs_longer"]["reward_model"]["discordant"] == 0 and ev["vs_longer"]["reward_model"]["p"] == 1.0
    h = ev["heldout"]
    assert h["cluster_ci95_low"] <= 0.5 <= h["cluster_ci95_high"]
    # a constant scorer: loss equals the constant predictor's exactly
    flat = heldout_eval(pairs, FakeScorer(lambda a: 0.3), n_resamples=50)
    assert flat["loss"]["heldout"] == flat["loss"]["constant"] and flat["loss"]["beats_constant"] is False
    assert flat["heldout"]["n"] == 0 and flat["heldout"]["ties"] == 24  # all ties: no decisive pick


# --------------------------------------------------------------------------- the gate

def _block(acc=0.52, lo=0.43, hi=0.61, n=118):
    return validation_block(acc, lo, hi, n=n, questions=64, allow_unvalidated=False)


def test_gate_refuses_with_the_figure():
    with pytest.raises(UserError) as e:
        check({"validation": _block()}, False, "select")
    msg = str(e.value)
    assert "\n" not in msg
    assert "held-out human-pair accuracy 0.52, 95% CI 0.43–0.61" in msg and "does not clear 0.5" in msg
    assert "select refuses" in msg and "reward_model.allow_unvalidated: true" in msg
    # exactly 0.5 at the lower end does not clear; neither does a missing interval
    assert _block(0.6, 0.5, 0.7)["cleared"] is False and _block(None, None, None, 0)["cleared"] is False
    with pytest.raises(UserError, match="no validation on human pairs"):
        check({"heldout": {"accuracy": 0.9}}, False, "score")
    with pytest.raises(DataError, match="allow_unvalidated"):
        check({"validation": _block()}, "yes", "score")


def test_gate_passes_with_the_param_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        v = check({"validation": _block()}, True, "evaluate")
    assert v["cleared"] is False
    assert "0.52" in caplog.text and "evaluate uses it anyway" in caplog.text


def test_require_validated_reads_the_metrics_file(tmp_path):
    path = tmp_path / "reward_model.json"
    with pytest.raises(UserError, match="missing"):
        require_validated(path, True, "score")
    path.write_text(json.dumps({"validation": _block(0.8, 0.7, 0.9)}))
    assert require_validated(path, False, "score")["cleared"] is True
    assert figure(0.8, 0.7, 0.9, 10).startswith("reward model's held-out human-pair accuracy 0.80")


# --------------------------------------------------------------------------- the stages refuse

def _metrics(workdir, block, allow):
    (workdir / "metrics").mkdir(exist_ok=True)
    (workdir / "metrics/reward_model.json").write_text(json.dumps({"validation": block, "used_unvalidated": allow}))
    write_params(workdir / "params.yaml", {"reward_model": {"allow_unvalidated": allow}})


def _scored(workdir):
    recs = [{"id": "q1", "question": "Why?", "sample": i, "answer": f"Because {i}.", "finished": True, "reward": r}
            for i, r in enumerate((0.1, 0.9, 0.5))]
    (workdir / "data/rs").mkdir(parents=True, exist_ok=True)
    (workdir / "data/rs/scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (workdir / "data/rs/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_select_and_score_refuse_an_unvalidated_reward_model(workdir):
    _scored(workdir)
    _metrics(workdir, _block(), False)
    for mod, name in ((select, "select"), (score_samples, "score_samples")):
        r = CliRunner().invoke(mod.main, [])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert "accuracy 0.52, 95% CI 0.43–0.61" in r.output and f"{name} refuses" in r.output
        assert "reward_model.allow_unvalidated: true" in r.output
    assert not (workdir / "data/rs/selected.jsonl").exists() and not (workdir / "metrics/score_samples.json").exists()
    # allowed: select runs and its metrics say the model was not cleared
    _metrics(workdir, _block(), True)
    r = CliRunner().invoke(select.main, [])
    assert r.exit_code == 0, r.output
    assert json.loads((workdir / "metrics/select.json").read_text())["reward_model_cleared"] is False
    # a validated model: no param needed
    _metrics(workdir, _block(0.8, 0.7, 0.9), False)
    r = CliRunner().invoke(select.main, [])
    assert r.exit_code == 0, r.output
    assert json.loads((workdir / "metrics/select.json").read_text())["reward_model_cleared"] is True


def test_rewards_refuses_before_scoring(workdir):
    q = {"id": "q1", "question": "Why?", "domain": "physics"}
    (workdir / "data/prepared").mkdir(parents=True)
    (workdir / "data/prepared/eval.jsonl").write_text(json.dumps(q) + "\n")
    for m in ("base", "sft"):
        (workdir / f"data/generations/{m}").mkdir(parents=True)
        (workdir / f"data/generations/{m}/eval.jsonl").write_text(json.dumps({**q, "answer": "Because.", "sample": 0}) + "\n")
    _metrics(workdir, _block(), False)
    write_params(workdir / "params.yaml", {"evaluate": {"models": ["base", "sft"]}})
    r = CliRunner().invoke(score_eval.main, ["--model", "sft", "--base", "nowhere", "--reward", "nowhere",
                                          "--out", "data/eval_scores/sft.json"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "accuracy 0.52" in r.output and "score_eval refuses" in r.output
    assert not (workdir / "data/eval_scores").exists()
