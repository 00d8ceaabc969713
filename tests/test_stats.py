"""Tests for sciexplain.stats. Expected numbers are worked out by hand in the comments."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from sciexplain.records import DataError
from sciexplain.stats import (
    STRENGTH_MARGIN,
    STRENGTHS,
    binom_p,
    fleiss_kappa,
    majority_vote,
    paired_wilcoxon,
    reward_summary,
    wilson_interval,
)
from sciexplain.comparisons import summarize_pair

SIG, BET, SLI, UNS = STRENGTHS


def test_strength_contract():
    assert STRENGTHS == ("Significantly better", "Better", "Slightly better", "Unsure")
    assert STRENGTH_MARGIN == pytest.approx({SIG: 1.0, BET: 2 / 3, SLI: 1 / 3, UNS: 0.0})


# ------------------------------------------------------------------ Wilson, binomial, Fleiss

def test_wilson_hand_computed():
    # p=0.8, n=10, z=1.96: centre (0.8 + z²/20)/(1 + z²/10) = 0.71674,
    # half-width z/(1 + z²/10) * sqrt(0.016 + z²/400) = 0.22658
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)


def test_wilson_edges():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    lo, hi = wilson_interval(0, 5)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0 < hi < 1
    lo90, hi90 = wilson_interval(8, 10, confidence=0.90)
    assert 0.4902 < lo90 and hi90 < 0.9433  # a lower confidence gives a narrower interval
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_binom_p_known_values():
    # two-sided, 9 of 10: 2 * (C(10,9) + C(10,10)) / 2^10 = 22/1024
    assert binom_p(9, 10) == pytest.approx(22 / 1024)
    # 0 of 5: 2 * 1/32
    assert binom_p(0, 5) == pytest.approx(1 / 16)
    assert binom_p(5, 10) == pytest.approx(1.0)
    assert math.isnan(binom_p(0, 0))
    with pytest.raises(ValueError):
        binom_p(-1, 3)


# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories.
WIKI_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_wikipedia_example():
    assert fleiss_kappa(WIKI_TABLE) == pytest.approx(0.210, abs=5e-4)
    d = fleiss_kappa(WIKI_TABLE, details=True)
    assert d["P_bar"] == pytest.approx(0.378, abs=5e-4)
    assert d["P_e"] == pytest.approx(0.213, abs=5e-4)
    assert (d["n_items"], d["n_raters"]) == (10, 14)


def test_fleiss_kappa_perfect_and_degenerate():
    assert fleiss_kappa([[3, 0], [0, 3], [3, 0]]) == pytest.approx(1.0)
    assert math.isnan(fleiss_kappa([[3, 0], [3, 0]]))  # one category only: undefined


def test_fleiss_kappa_rejects_unequal_rows():
    with pytest.raises(ValueError, match="same number of raters"):
        fleiss_kappa([[2, 1], [1, 1]])
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 0], [0, 1]])  # one rater per item


# ------------------------------------------------------------------ majority vote

@pytest.mark.parametrize("verdicts, expected", [
    ([("A", SIG), ("A", SLI), ("B", SIG)], "A"),       # votes count, strength does not
    ([("B", SLI), ("B", SLI), ("A", SIG)], "B"),
    ([("A", BET), ("B", BET)], "tie"),
    ([("A", BET), (None, UNS), (None, UNS)], "A"),     # Unsure abstains
    ([("B", BET), ("A", UNS), ("A", UNS)], "B"),       # choice on an Unsure is ignored
    ([(None, UNS), (None, UNS)], "tie"),
    ([], "tie"),
    ([["A", SIG]], "A"),                               # lists (from JSON) work too
])
def test_majority_vote(verdicts, expected):
    assert majority_vote(verdicts) == expected


@pytest.mark.parametrize("bad", [(None, SIG), ("C", BET), ("A", "Much better"), ("A",)])
def test_majority_vote_rejects_bad_verdicts(bad):
    with pytest.raises(DataError):
        majority_vote([("A", SIG), bad])


# ------------------------------------------------------------------ summarize_pair

def example():
    """Six items, three annotators (ann3 skipped i6). In model space (t = tuned, b = base):

    item  A      ann1        ann2        ann3        winner
    i1    base   t (SIG)     t (BET)     b (SLI)     tuned
    i2    tuned  t (BET)     t (SLI)     tie         tuned
    i3    base   b (SIG)     b (BET)     b (SIG)     base
    i4    tuned  tie         b (SLI)     b (SLI)     base
    i5    base   b (BET)     t (BET)     tie         tie
    i6    tuned  t (SIG)     t (BET)     -           tuned
    """
    key = {
        "i1": {"a_model": "base", "b_model": "tuned"},
        "i2": {"a_model": "tuned", "b_model": "base"},
        "i3": {"a_model": "base", "b_model": "tuned"},
        "i4": {"a_model": "tuned", "b_model": "base"},
        "i5": {"a_model": "base", "b_model": "tuned"},
        "i6": {"a_model": "tuned", "b_model": "base"},
    }
    annotations = {
        "ann1": {"i1": ("B", SIG), "i2": ("A", BET), "i3": ("A", SIG), "i4": (None, UNS), "i5": ("A", BET),
                 "i6": ("A", SIG)},
        "ann2": {"i1": ("B", BET), "i2": ("A", SLI), "i3": ("A", BET), "i4": ("B", SLI), "i5": ("B", BET),
                 "i6": ("A", BET)},
        "ann3": {"i1": ("A", SLI), "i2": (None, UNS), "i3": ("A", SIG), "i4": ("B", SLI), "i5": (None, UNS)},
    }
    # longer side: i1 B, i2 A, i3 B, i4 equal, i5 A, i6 B
    lengths = {"i1": {"A": 100, "B": 200}, "i2": {"A": 300, "B": 100}, "i3": {"A": 50, "B": 80},
               "i4": {"A": 120, "B": 120}, "i5": {"A": 90, "B": 60}, "i6": {"A": 10, "B": 500}}
    return annotations, key, lengths


def test_summarize_pair_counts_and_rates():
    annotations, key, lengths = example()
    s = summarize_pair(annotations, key, lengths)
    assert (s["n_items"], s["n_decisive"], s["n_annotators"]) == (6, 5, 3)
    assert s["annotators"] == ["ann1", "ann2", "ann3"]
    assert s["ties"] == {"count": 1, "rate": 0.1667}
    tuned, base = s["models"]["tuned"], s["models"]["base"]
    assert (tuned["wins"], base["wins"]) == (3, 2)
    assert (tuned["win_rate"], base["win_rate"]) == (0.5, 0.3333)
    assert (tuned["win_rate_decisive"], base["win_rate_decisive"]) == (0.6, 0.4)
    # Wilson 3/5 by hand: centre 0.98415/1.76829 = 0.55655, half 1.10839*sqrt(0.08641) = 0.32583
    assert (tuned["ci95_low"], tuned["ci95_high"]) == pytest.approx((0.2307, 0.8824), abs=1e-4)
    assert (base["ci95_low"], base["ci95_high"]) == pytest.approx((0.1176, 0.7693), abs=1e-4)
    assert tuned["p_value"] == base["p_value"] == 1.0  # 3 of 5 vs 0.5: every outcome is at least as likely


def test_summarize_pair_strength_distribution():
    annotations, key, lengths = example()
    s = summarize_pair(annotations, key)
    # tuned won i1 (SIG, BET), i2 (BET, SLI), i6 (SIG, BET); ann3's SLI for base on i1 is not counted
    assert s["strength"]["tuned"] == {SIG: 2, BET: 3, SLI: 1}
    # base won i3 (SIG, BET, SIG), i4 (SLI, SLI); the tie i5 counts for nobody
    assert s["strength"]["base"] == {SIG: 2, BET: 1, SLI: 2}


def test_summarize_pair_agreement():
    annotations, key, _ = example()
    a = summarize_pair(annotations, key)["agreement"]
    # agreeing pairs per item: i1 1/3, i2 1/3, i3 3/3, i4 1/3, i5 0/3, i6 1/1 -> 7/16
    assert (a["pairwise"], a["n_pairs"]) == (0.4375, 16)
    # items i1..i5, counts (base, tuned, tie): (1,2,0) (0,2,1) (3,0,0) (2,0,1) (1,1,1)
    # P_bar = (1/3 + 1/3 + 1 + 1/3 + 0)/5 = 0.4; P_e = (7² + 5² + 3²)/15² = 83/225
    # kappa = (90 - 83)/(225 - 83) = 7/142
    assert a["kappa_items"] == 5
    assert a["fleiss_kappa"] == pytest.approx(7 / 142, abs=1e-4)


def test_summarize_pair_leave_one_out():
    annotations, key, _ = example()
    loo = summarize_pair(annotations, key)["agreement"]["leave_one_out"]
    # ann1: i1 others split (skip); i2 t=t; i3 b=b; i4 tie!=b; i5 b!=t; i6 t=t -> 3/5
    # ann2: i1 skip; i2 ok; i3 ok; i4 b=b; i5 t!=b; i6 ok                 -> 4/5
    # ann3: i1 b!=t; i2 tie!=t; i3 ok; i4 b=b; i5 others split (skip)      -> 2/4
    assert loo == {"ann1": {"agreement": 0.6, "n": 5}, "ann2": {"agreement": 0.8, "n": 5},
                   "ann3": {"agreement": 0.5, "n": 4}}
    assert summarize_pair(annotations, key)["agreement"]["leave_one_out_mean"] == pytest.approx(0.6333, abs=1e-4)


def test_summarize_pair_length_preference():
    annotations, key, lengths = example()
    lp = summarize_pair(annotations, key, lengths)["length_preference"]
    # ann1 decisive: i1 B(longer) i2 A(longer) i3 A(shorter) i5 A(longer) i6 A(shorter) -> 3/5
    # ann2: i1 yes, i2 yes, i3 no, (i4 equal lengths: skipped), i5 B no, i6 no        -> 2/5
    # ann3: i1 A no, i3 A no (i4 equal, Unsures skipped)                               -> 0/2
    assert lp == {"ann1": {"prefers_longer": 0.6, "n": 5}, "ann2": {"prefers_longer": 0.4, "n": 5},
                  "ann3": {"prefers_longer": 0.0, "n": 2}}
    assert summarize_pair(annotations, key)["length_preference"] is None
    del lengths["i3"]
    with pytest.raises(DataError):
        summarize_pair(annotations, key, lengths)


def test_summarize_pair_key_swap_changes_nothing():
    annotations, key, lengths = example()
    flip = {"A": "B", "B": "A", None: None}
    key2 = {i: {"a_model": k["b_model"], "b_model": k["a_model"]} for i, k in key.items()}
    ann2 = {a: {i: (flip[c], s) for i, (c, s) in v.items()} for a, v in annotations.items()}
    len2 = {i: {"A": l["B"], "B": l["A"]} for i, l in lengths.items()}
    assert summarize_pair(ann2, key2, len2) == summarize_pair(annotations, key, lengths)
    # ...while flipping the choices alone swaps the models' results
    flipped = summarize_pair(ann2, key, len2)
    assert flipped["models"]["base"]["wins"] == 3 and flipped["models"]["tuned"]["wins"] == 2


def test_summarize_pair_single_annotator():
    annotations, key, lengths = example()
    s = summarize_pair({"ann1": annotations["ann1"]}, key, lengths)
    # ann1 alone: tuned i1 i2 i6, base i3 i5, tie i4
    assert (s["n_items"], s["n_annotators"]) == (6, 1)
    assert (s["models"]["tuned"]["wins"], s["models"]["base"]["wins"], s["ties"]["count"]) == (3, 2, 1)
    a = s["agreement"]
    assert a["pairwise"] is None and a["fleiss_kappa"] is None and a["leave_one_out_mean"] is None
    assert a["leave_one_out"] == {"ann1": {"agreement": None, "n": 0}}
    assert s["length_preference"]["ann1"] == {"prefers_longer": 0.6, "n": 5}


def test_summarize_pair_is_json_ready():
    annotations, key, lengths = example()
    s = summarize_pair(annotations, key, lengths)
    assert json.loads(json.dumps(s, allow_nan=False)) == s

    def leaves(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from leaves(v)
        elif isinstance(x, list):
            for v in x:
                yield from leaves(v)
        else:
            yield x
    assert all(v is None or type(v) in (int, float, str, bool) for v in leaves(s))


def test_summarize_pair_all_ties_gives_nulls_not_errors():
    key = {"i1": {"a_model": "x", "b_model": "y"}}
    s = summarize_pair({"a": {"i1": (None, UNS)}, "b": {"i1": ("A", UNS)}}, key)
    assert s["ties"] == {"count": 1, "rate": 1.0}
    assert s["models"]["x"]["win_rate_decisive"] is None and s["models"]["x"]["p_value"] is None
    assert s["agreement"]["pairwise"] == 1.0
    assert s["agreement"]["fleiss_kappa"] is None  # every rating is "tie": kappa undefined


def test_summarize_pair_bad_input():
    annotations, key, _ = example()
    bad_key = copy.deepcopy(key)
    del bad_key["i2"]
    with pytest.raises(DataError, match="missing from the key"):
        summarize_pair(annotations, bad_key)
    three = copy.deepcopy(key)
    three["i1"]["a_model"] = "other"
    with pytest.raises(DataError, match="exactly 2 models"):
        summarize_pair(annotations, three)
    bad = copy.deepcopy(annotations)
    bad["ann2"]["i3"] = ("A", "Way better")
    with pytest.raises(DataError, match="ann2"):
        summarize_pair(bad, key)
    with pytest.raises(DataError):
        summarize_pair({"ann1": {}}, key)


# ------------------------------------------------------------------ rewards, Wilcoxon

def test_reward_summary_known_values():
    r = reward_summary([4.0, 1.0, 3.0, 2.0])
    assert r["n"] == 4
    assert (r["mean"], r["median"], r["min"], r["max"]) == (2.5, 2.5, 1.0, 4.0)
    assert r["std"] == pytest.approx(math.sqrt(5 / 3), abs=1e-4)  # ddof=1
    assert 1.0 <= r["ci95_low"] < 2.5 < r["ci95_high"] <= 4.0


def test_reward_summary_ci_matches_normal_theory_and_is_deterministic():
    values = np.arange(100, dtype=float)  # mean 49.5, sd 29.01, se 2.901 -> about 49.5 ± 5.69
    r = reward_summary(values)
    assert r["ci95_low"] == pytest.approx(49.5 - 5.69, abs=0.6)
    assert r["ci95_high"] == pytest.approx(49.5 + 5.69, abs=0.6)
    assert reward_summary(values) == r
    assert reward_summary(values, random_state=1) != r  # the seed is what makes it repeatable


def test_reward_summary_small_inputs():
    one = reward_summary([3.0])
    assert (one["n"], one["mean"], one["std"], one["ci95_low"], one["ci95_high"]) == (1, 3.0, None, None, None)
    assert reward_summary([])["n"] == 0 and reward_summary([])["mean"] is None
    same = reward_summary([2.0, 2.0, 2.0])
    assert (same["std"], same["ci95_low"], same["ci95_high"]) == (0.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        reward_summary([1.0, float("nan")])


def test_paired_wilcoxon_known_value():
    # differences 1..5, all positive: W- = 0, exact two-sided p = 2/2^5
    r = paired_wilcoxon([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert r == {"statistic": 0.0, "p_value": 0.0625, "n": 5, "n_nonzero": 5}
    # differences +1 +2 -3 +4 +5: W- = 3, exact p = 2 * P(W <= 3) = 2 * 5/32
    assert paired_wilcoxon([1, 2, 0, 4, 5], [0, 0, 3, 0, 0])["p_value"] == pytest.approx(10 / 32)


def test_paired_wilcoxon_identical_and_bad():
    with np.errstate(all="raise"):
        r = paired_wilcoxon([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert r == {"statistic": 0.0, "p_value": 1.0, "n": 3, "n_nonzero": 0}
    with pytest.raises(ValueError):
        paired_wilcoxon([1, 2], [1])
    with pytest.raises(ValueError):
        paired_wilcoxon([], [])


def test_paired_wilcoxon_float_noise_is_a_tie():
    """The same answer scored in batches of other widths: rewards ~1e-7 apart are a tie, not a difference."""
    from sciexplain.stats import paired_wilcoxon

    base = [-0.958, -1.521257996559143, -0.14686644077301025, 0.33488011360168457, 1.2]
    other = [-2.144, -1.5212578773498535, -0.1468648910522461, 0.33488011360168457, 0.7]
    w = paired_wilcoxon(other, base)
    assert w["n"] == 5 and w["n_nonzero"] == 2
    assert paired_wilcoxon([x + 1e-7 for x in base], base)["n_nonzero"] == 0
    assert paired_wilcoxon([x + 1e-3 for x in base], base)["n_nonzero"] == 5  # a real difference stays one
