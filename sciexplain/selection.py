"""Rejection sampling (best-of-N) on reward-scored candidates: the winners for another SFT round,
best-vs-worst pairs for DPO, and the best-of-n curve (Llama 2, figure 7)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .records import DataError


def group_by_question(scored: list[dict]) -> "OrderedDict[str, list[dict]]":
    groups: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in scored:
        groups.setdefault(r["id"], []).append(r)
    for cands in groups.values():
        cands.sort(key=lambda r: r["sample"])
    return groups


def resolve_threshold(rewards: list[float], threshold: float | None, quantile: float | None) -> float | None:
    """An absolute reward threshold, or the given quantile of all candidate rewards (exactly one, or neither)."""
    if threshold is not None and quantile is not None:
        raise DataError("params.yaml", None, "select", "set select.threshold or select.quantile, not both")
    if quantile is not None:
        if not 0.0 <= float(quantile) <= 1.0:
            raise DataError("params.yaml", None, "select.quantile", f"must be within [0, 1], not {quantile}")
        return float(np.quantile(np.asarray(rewards, dtype=float), float(quantile))) if rewards else None
    return None if threshold is None else float(threshold)


def select(scored: list[dict], *, threshold: float | None = None, quantile: float | None = None,
           min_gap: float = 0.0, require_finished: bool = True) -> dict:
    """Per question: the best candidate if its reward passes the threshold; the best-vs-worst pair if the gap
    reaches ``min_gap``. Ties in reward go to the lower sample index (deterministic)."""
    if not isinstance(require_finished, bool):  # "no" is truthy: it would mean true
        raise DataError("params.yaml", None, "select.require_finished", f"expected true or false, got {require_finished!r}")
    for key, value in (("threshold", threshold), ("quantile", quantile), ("min_gap", min_gap)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError("params.yaml", None, f"select.{key}",
                            f"expected a number{' or null' if key != 'min_gap' else ''}, got {value!r}")
    empty = sum(1 for r in scored if not str(r.get("answer") or "").strip())
    scored = [r for r in scored if str(r.get("answer") or "").strip()]  # an empty answer never wins or loses
    groups = group_by_question(scored)
    pool = [r for r in scored if r.get("finished", True) or not require_finished]
    cut = resolve_threshold([r["reward"] for r in pool], threshold, quantile)
    selected, pairs, counts = [], [], {"questions": len(groups), "below_threshold": 0, "no_finished_candidate": 0,
                                      "gap_too_small": 0}
    for qid, cands in groups.items():
        ok = [r for r in cands if r.get("finished", True) or not require_finished]
        if not ok:
            counts["no_finished_candidate"] += 1
            continue
        best = max(ok, key=lambda r: (r["reward"], -r["sample"]))
        worst = min(cands, key=lambda r: (r["reward"], r["sample"]))
        if cut is None or best["reward"] >= cut:
            selected.append({"id": qid, "question": best["question"], "answer": best["answer"],
                             "reward": best["reward"], "sample": best["sample"]})
        else:
            counts["below_threshold"] += 1
        if best["reward"] - worst["reward"] >= min_gap and best["sample"] != worst["sample"] and best["answer"] != worst["answer"]:
            pairs.append({"id": qid, "question": best["question"], "chosen": best["answer"], "rejected": worst["answer"],
                          "reward_chosen": best["reward"], "reward_rejected": worst["reward"]})
        else:
            counts["gap_too_small"] += 1
    counts.update(selected=len(selected), dpo_pairs=len(pairs), empty_answers=empty,
                  threshold=None if cut is None else round(cut, 6))
    return {"selected": selected, "pairs": pairs, "counts": counts}


def best_of_n_curve(scored: list[dict]) -> list[dict]:
    """Mean over questions of the best reward among the first n samples, n = 1..N (N = the smallest group)."""
    groups = group_by_question(scored)
    if not groups:
        return []
    n_max = min(len(c) for c in groups.values())
    rewards = np.array([[r["reward"] for r in c[:n_max]] for c in groups.values()], dtype=float)
    best = np.maximum.accumulate(rewards, axis=1)
    return [{"n": n + 1, "mean_reward": round(float(best[:, n].mean()), 6)} for n in range(n_max)]
