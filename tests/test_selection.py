import pytest

from sciexplain.records import DataError
from sciexplain.selection import best_of_n_curve, resolve_threshold, select


def _scored():
    rows = []
    for q, rewards in {"a": [0.1, 0.9, 0.5], "b": [-1.0, -0.5, -0.8], "c": [0.3, 0.3, 0.2]}.items():
        for s, r in enumerate(rewards):
            rows.append({"id": q, "question": f"Q{q}?", "sample": s, "answer": f"{q}{s}", "reward": r, "finished": True})
    return rows


def test_select_best_and_pairs():
    out = select(_scored(), threshold=0.0, min_gap=0.2)
    assert [(r["id"], r["answer"]) for r in out["selected"]] == [("a", "a1"), ("c", "c0")]  # tie -> lower sample
    assert [(p["id"], p["chosen"], p["rejected"]) for p in out["pairs"]] == [("a", "a1", "a0"), ("b", "b1", "b0")]
    assert out["counts"]["below_threshold"] == 1 and out["counts"]["gap_too_small"] == 1


def test_quantile_threshold_and_unfinished():
    rows = _scored()
    assert resolve_threshold([r["reward"] for r in rows], None, 0.5) == pytest.approx(0.2)
    out = select(rows, quantile=0.5, min_gap=0.0)
    assert {r["id"] for r in out["selected"]} == {"a", "c"}
    for r in rows:
        if r["id"] == "a" and r["sample"] == 1:
            r["finished"] = False
    assert select(rows, threshold=None)["selected"][0]["answer"] == "a2"
    with pytest.raises(DataError, match="not both"):
        resolve_threshold([0.0], 0.1, 0.5)
    with pytest.raises(DataError, match="select.quantile"):
        resolve_threshold([0.0], None, 1.5)


def test_best_of_n_curve_is_monotone_and_exact():
    curve = best_of_n_curve(_scored())
    assert [c["n"] for c in curve] == [1, 2, 3]
    assert curve[0]["mean_reward"] == pytest.approx((0.1 - 1.0 + 0.3) / 3, abs=1e-6)
    assert curve[1]["mean_reward"] == pytest.approx((0.9 - 0.5 + 0.3) / 3, abs=1e-6)
    assert curve[2]["mean_reward"] == pytest.approx((0.9 - 0.5 + 0.3) / 3, abs=1e-6)


def test_empty_answers_never_selected_or_paired():
    rows = _scored()
    rows.append({"id": "a", "question": "Qa?", "sample": 3, "answer": " ", "reward": 5.0, "finished": True})
    rows.append({"id": "b", "question": "Qb?", "sample": 3, "answer": "", "reward": -9.0, "finished": True})
    out = select(rows, threshold=0.0, min_gap=0.2)
    assert [r["answer"] for r in out["selected"]] == ["a1", "c0"]
    assert [(p["chosen"], p["rejected"]) for p in out["pairs"]] == [("a1", "a0"), ("b1", "b0")]
    assert out["counts"]["empty_answers"] == 2
