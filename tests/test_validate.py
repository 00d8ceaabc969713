"""Judges vs people: agreement statistics, McNemar + Holm, verdicts, and the validate stage end to end."""
import json
import re

import pytest
import scipy.stats
from click.testing import CliRunner

from conftest import ROOT, write_params
from sciexplain.generation import GenResult
from sciexplain.records import stable_id
from sciexplain.judges import Panel
from sciexplain.validation import choices_from_scores, make_sheet, validate
from sciexplain.stats import (_critical_k, cluster_bootstrap_ci, cohen_kappa, detectable_win_rate, holm, mcnemar_exact,
                              sign_test_power)
from sciexplain.verdicts import SUBJECT_BETTER, CANNOT_TELL, NOT_VALIDATED, VERDICTS, SUBJECT_WORSE, comparison_verdict

PROMPT = ROOT / "prompts" / "judge.md"


# --------------------------------------------------------------------------- statistics
def test_mcnemar_exact_on_constructed_cases():
    # 8 items only the judge gets right, 1 only the baseline, 6 both, 5 neither
    judge = [True] * 8 + [False] + [True] * 6 + [False] * 5
    base = [False] * 8 + [True] + [True] * 6 + [False] * 5
    t = mcnemar_exact(judge, base)
    assert (t["only_1"], t["only_2"], t["discordant"]) == (8, 1, 9)
    assert t["p"] == pytest.approx(scipy.stats.binomtest(8, 9, 0.5).pvalue) and t["p"] == pytest.approx(20 / 512)
    assert mcnemar_exact([True, False], [True, False])["p"] == 1.0  # no discordant item
    assert mcnemar_exact(base, judge)["p"] == t["p"]
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_holm_on_constructed_cases():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    # sorted .01, .03, .04 -> 3*.01 = .03, 2*.03 = .06, max(.06, 1*.04) = .06 (monotone)
    assert adj["a"] == pytest.approx(0.03) and adj["c"] == pytest.approx(0.06) and adj["b"] == pytest.approx(0.06)
    assert adj["d"] is None
    assert holm({"x": 0.7, "y": 0.6}) == {"x": 1.0, "y": 1.0}
    assert holm({"only": 0.02}) == {"only": 0.02}


def test_cohen_kappa():
    assert cohen_kappa(list("ABAB"), list("ABAB")) == 1.0
    # 2x2 textbook case: po = 0.7, pe = 0.5*0.6 + 0.5*0.4 = 0.5 -> 0.4
    r1 = list("AAAAABBBBB")
    r2 = list("AAAAB") + list("AABBB")
    assert cohen_kappa(r1, r2) == pytest.approx((0.7 - 0.5) / 0.5)
    assert cohen_kappa(["A", "tie", "B"], ["A", "A", "B"]) == pytest.approx((2 / 3 - 1 / 3) / (1 - 1 / 3))  # pe = 1/3*2/3 + 1/3*1/3
    assert cohen_kappa([], []) is None and cohen_kappa(["A", "A"], ["A", "A"]) is None


def test_cluster_bootstrap_is_wider_than_wilson_when_questions_cluster():
    # 20 questions, 5 pairs each, every question all right or all wrong: 60% agreement
    hits = {q: (5 if q < 12 else 0) for q in range(20)}
    totals = {q: 5 for q in range(20)}
    lo, hi = cluster_bootstrap_ci(hits, totals, 2000, seed=0)
    w = scipy.stats.binomtest(60, 100).proportion_ci(method="wilson")
    assert lo < 0.6 < hi and (hi - lo) > 1.5 * (w.high - w.low)
    assert cluster_bootstrap_ci({0: 3}, {0: 3}) == (1.0, 1.0)
    assert cluster_bootstrap_ci({}, {0: 0}) == (None, None)
    assert cluster_bootstrap_ci(hits, totals, 500, seed=1) == cluster_bootstrap_ci(hits, totals, 500, seed=1)


def test_detectable_win_rate_is_the_exact_sign_test_at_80_percent_power():
    for n in (6, 17, 40, 100):
        k = _critical_k(n, 0.05)
        assert scipy.stats.binomtest(k, n).pvalue <= 0.05 < scipy.stats.binomtest(k + 1, n).pvalue
        p = detectable_win_rate(n)
        assert sign_test_power(n, p) == pytest.approx(0.8, abs=1e-4) and sign_test_power(n, p - 0.01) < 0.8
    assert detectable_win_rate(5) is None  # the smallest two-sided p at n=5 is 0.0625
    assert 0.63 < detectable_win_rate(100) < 0.66 and detectable_win_rate(400) < detectable_win_rate(100)


def test_every_verdict_category_on_constructed_data():
    good_judge = (0.62, 0.80)
    v = comparison_verdict(40, 10, 5, good_judge)
    assert v["verdict"] == SUBJECT_BETTER and v["n"] == 55 and v["decisive"] == 50 and v["win_rate"] == 0.8 and v["p"] < 0.05
    assert 0.5 < v["detectable_win_rate"] < 0.8 and v["detectable_difference"] == pytest.approx(v["detectable_win_rate"] - 0.5, abs=1e-4)
    assert comparison_verdict(10, 40, 0, good_judge)["verdict"] == SUBJECT_WORSE
    small = comparison_verdict(7, 3, 2, good_judge)  # 70% but n too small
    assert small["verdict"] == CANNOT_TELL and small["p"] > 0.05 and small["detectable_win_rate"] > 0.7
    assert comparison_verdict(3, 1, 0, good_judge)["detectable_win_rate"] is None  # no share detectable at 4 votes
    assert comparison_verdict(0, 0, 9, good_judge)["verdict"] == CANNOT_TELL
    for ci in ((0.45, 0.70), (0.30, 0.48), (None, None), None):  # includes 0.5, below it, missing
        assert comparison_verdict(40, 10, 5, ci)["verdict"] == NOT_VALIDATED
    assert comparison_verdict(40, 10, 5, None, human=True)["verdict"] == SUBJECT_BETTER
    assert {comparison_verdict(w, l, 0, ci)["verdict"] for w, l, ci in
            [(40, 10, good_judge), (10, 40, good_judge), (6, 5, good_judge), (40, 10, (0.4, 0.6))]} == set(VERDICTS)


# --------------------------------------------------------------------------- validate()
def _pairs(n_questions=12, per_q=2, longer_chosen_every=3):
    """Chosen answers hold GOOD; every third pair the chosen answer is the shorter one."""
    out = []
    for q in range(n_questions):
        for k in range(per_q):
            i = q * per_q + k
            short, long_ = f"GOOD answer {i}.", f"GOOD answer {i} " + "with many more words " * 3 + "."
            chosen = short if i % longer_chosen_every == 0 else long_
            rejected_base = f"weak reply {i}"
            rejected = rejected_base + (" padded out with many words " * 4 if chosen is short else ".")
            question = f"Question number {q}?"
            out.append({"id": stable_id(question), "pair_id": f"p{i:03d}", "question": question,
                        "chosen": chosen, "rejected": rejected})
    return out


class GoodBackend:
    """An LLM judge that picks the answer holding GOOD (asked in both orders by LLMJudge)."""

    name = "fake"
    model = "fake-good"

    def generate(self, requests, sampling):
        out = []
        for r in requests:
            a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", r.messages[-1][1], re.S).group(1)
            side = "A" if "GOOD" in a else "B"
            out.append(GenResult(id=r.id, sample=r.sample, text=f"Verdict: {side}, Strength: Better", completion_tokens=5))
        return out


def test_validate_scores_judges_baselines_and_extra_predictors(tmp_path):
    pairs = _pairs()
    panel = Panel([{"name": "rubric", "type": "rubric"}, {"name": "good", "type": "llm"}], cache_dir=tmp_path / "cache",
                  prompt_path=PROMPT, backends={"good": GoodBackend()}, progress=False)
    sheet_data = make_sheet(pairs, seed=0)
    sheet, human, _q = sheet_data
    assert {it["item_id"] for it in sheet} == {p["pair_id"] for p in pairs}
    assert 0 < sum(s == "A" for s in human.values()) < len(pairs)  # a seeded A/B order, not always A
    # the reward-model hook: a scorer that always prefers answer A -> agreement = share of human A
    scores = {it["item_id"]: (1.0, 0.0) for it in sheet}
    m = validate(pairs, panel, seed=0, n_resamples=300, extra={"always_a": choices_from_scores(scores)},
                 sheet_data=sheet_data)
    j = m["judges"]
    assert set(j) == {"rubric", "good", "always_a", "longer", "random"}
    assert j["good"]["agreement"] == 1.0 and j["good"]["kappa"] == 1.0 and j["good"]["validated"]
    assert j["good"]["agreement_cluster_ci_low"] > 0.5 and j["good"]["questions"] == 12
    assert j["longer"]["agreement"] == pytest.approx(16 / 24, abs=1e-4) and j["longer"]["longer_share"] == 1.0
    assert j["always_a"]["agreement"] == pytest.approx(sum(s == "A" for s in human.values()) / 24, abs=1e-4)
    assert j["random"]["ties"] == 0 and j["rubric"]["n"] == 24
    assert j["good"]["panel"]["disagree"] == 0 and "hits" not in j["good"]["panel"]
    assert m["pairs"]["human_prefers_longer"] == pytest.approx(16 / 24, abs=1e-4)
    # McNemar vs longer: the perfect judge is right on the 8 pairs the longer rule gets wrong
    t = m["vs_longer"]["good"]
    assert (t["judge_only_right"], t["longer_only_right"]) == (8, 0)
    assert t["p"] == pytest.approx(2 / 256, rel=1e-3)
    assert set(m["vs_longer"]) == {"rubric", "good", "always_a"}  # baselines are not tested against themselves
    ps = {k: v["p"] for k, v in m["vs_longer"].items()}
    assert m["vs_longer"]["good"]["p_holm"] == pytest.approx(min(ps.values()) * 3, rel=1e-3)
    json.dumps(m, allow_nan=False)
    with pytest.raises(ValueError, match="taken"):
        validate(pairs, None, extra={"longer": {}})


# --------------------------------------------------------------------------- the stage
def test_validate_stage_end_to_end(workdir):
    from stages.validate import main

    pairs = _pairs(n_questions=10)
    (workdir / "pairs.jsonl").write_text("".join(json.dumps({k: p[k] for k in ("question", "chosen", "rejected")}) + "\n"
                                                 for p in pairs))
    prepared = workdir / "prepared"
    prepared.mkdir()
    (prepared / "eval.jsonl").write_text(json.dumps({"id": stable_id("Question number 4?")}) + "\n")
    write_params(workdir / "params.yaml", {"validate": {"sources": [{"type": "pairs", "path": "pairs.jsonl"}],
                                                        "test_fraction": 0.5, "bootstrap": 200}})
    args = ["--prepared", "prepared", "--out", "out/human_pairs", "--metrics", "metrics/validate.json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    m = json.loads((workdir / "metrics/validate.json").read_text())
    assert m["pairs"]["read"] == 20 and m["pairs"]["dropped"]["in_prepared_split"] == 2
    assert m["pairs"]["train"] + m["pairs"]["test"] == 18 and m["pairs"]["n"] == m["pairs"]["test"]
    assert m["pairs"]["test_questions"] == round(0.5 * 9)
    assert set(m["judges"]) == {"rubric", "longer", "random"} and set(m["vs_longer"]) == {"rubric"}
    for name, j in m["judges"].items():
        assert j["n"] == m["pairs"]["test"] and j["decisive"] + j["ties"] == j["n"], name
    train = [json.loads(x) for x in (workdir / "out/human_pairs/train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (workdir / "out/human_pairs/test.jsonl").read_text().splitlines()]
    assert not {p["id"] for p in train} & {p["id"] for p in test}
    assert stable_id("Question number 4?") not in {p["id"] for p in train + test}
    assert "rubric: agreement" in res.output
    # unchanged inputs -> identical metrics (a DVC rerun changes nothing)
    before = (workdir / "metrics/validate.json").read_bytes()
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (workdir / "metrics/validate.json").read_bytes() == before
    # a bad param stops with one line naming it, before any output changes
    write_params(workdir / "params.yaml", {"validate": {"max_pairs": 0}})
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "validate.max_pairs" in res.output
    assert (workdir / "metrics/validate.json").read_bytes() == before


def test_default_params_validate_the_shipped_pairs(workdir):
    """The default validate params read the shipped human pairs (no prepared split overlaps them)."""
    from sciexplain.cli import read_params
    from sciexplain.records import Drops
    from sciexplain.human_pairs import load_pairs, split_pairs

    p = read_params("params.yaml", "validate")
    drops = Drops()
    pairs = load_pairs([s.model_dump(exclude_unset=True) for s in p.validate.sources], drops)
    train, test = split_pairs(pairs, p.validate.test_fraction, p.validate.seed)
    assert len(pairs) >= 150 and len(test) >= 50 and not {x["id"] for x in train} & {x["id"] for x in test}
    bank = [json.loads(x) for x in (ROOT / "data/raw/questions.jsonl").read_text().splitlines()]
    assert not {stable_id(b["question"]) for b in bank} & {x["id"] for x in pairs}
