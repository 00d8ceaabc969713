"""Statistics for the blind A/B study and for reward scores.

The study: for each item an annotator sees two answers, A and B, in an order fixed by a *key*,
and gives a verdict ``(choice, strength)``. ``strength`` is one of :data:`STRENGTHS`;
``choice`` is ``"A"`` or ``"B"``, and it is ignored (usually ``None``) when the strength is
``"Unsure"``, which means a tie.

Input shapes (the data contract other stages rely on)::

    annotations = {annotator: {item_id: (choice, strength)}}
    key         = {item_id: {"a_model": str, "b_model": str}}
    lengths     = {item_id: {"A": int, "B": int}}      # optional, character lengths

Everything :func:`summarize_pair` and :func:`reward_summary` return is JSON-ready: plain
``int``/``float``/``str``/``None``, no NaN, so ``dvc metrics diff`` can show it. Rates are
rounded to 4 decimals, p-values to 4 significant digits (so a small p-value never reads 0.0).
"""
from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import Iterable, Mapping, Sequence

import krippendorff
import numpy as np
import scipy.stats

from .records import DataError
from .strengths import BETTER, DECISIVE_STRENGTHS, SIGNIFICANTLY, SLIGHTLY, STRENGTH_MARGIN, STRENGTHS, UNSURE  # noqa: F401

TIE = "tie"


# --------------------------------------------------------------------------- small helpers

def _rate(x: float | None) -> float | None:
    """A rate or kappa for JSON: ``None`` for missing/NaN, else a float rounded to 4 decimals."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 4)


def _pval(p: float | None) -> float | None:
    """A p-value for JSON: ``None`` for missing/NaN, else a float with 4 significant digits."""
    if p is None or not math.isfinite(p):
        return None
    return float(f"{float(p):.4g}")


def verdict_side(verdict: Sequence, where: str | None = None) -> str:
    """The side a verdict ``(choice, strength)`` prefers: ``"A"``, ``"B"`` or ``"tie"`` (Unsure).

    Raises :class:`DataError` for an unknown strength, or a decisive strength whose choice is not
    ``"A"``/``"B"``. ``where`` names the verdict in that message.
    """
    if not isinstance(verdict, (tuple, list)) or len(verdict) != 2:
        raise DataError(None, where, None, f"a verdict must be a (choice, strength) pair, got {verdict!r}")
    choice, strength = verdict
    if strength not in STRENGTHS:
        raise DataError(None, where, "strength", f"unknown strength {strength!r}; expected one of {list(STRENGTHS)}")
    if strength == UNSURE:
        return TIE
    if choice not in ("A", "B"):
        raise DataError(None, where, "choice", f"a '{strength}' verdict needs choice 'A' or 'B', got {choice!r}")
    return choice


# --------------------------------------------------------------------------- basic tests

def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for a proportion of ``k`` successes in ``n``.

    Uses ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``. With ``n == 0`` there is
    no estimate, and the result is ``(nan, nan)`` (callers turn that into JSON ``null``).
    Raises ValueError unless ``0 <= k <= n``.
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def binom_p(k: int, n: int) -> float:
    """Two-sided exact binomial test p-value of ``k`` successes in ``n`` against p = 0.5.

    ``n == 0`` gives ``nan`` (no data, no test). Raises ValueError unless ``0 <= k <= n``.
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return math.nan
    return float(scipy.stats.binomtest(k, n, 0.5, alternative="two-sided").pvalue)


def fleiss_kappa(table, details: bool = False):
    """Fleiss' kappa for an items x categories table of rating counts.

    ``table[i][j]`` is how many raters put item ``i`` in category ``j``. Every row must sum to
    the same number of raters ``n >= 2`` (ValueError otherwise: drop the items that were not
    rated by everyone before calling). With ``N`` items::

        P_i   = (sum_j n_ij^2 - n) / (n (n - 1))      agreement on item i
        P_bar = mean_i P_i
        p_j   = sum_i n_ij / (N n)                     share of category j
        P_e   = sum_j p_j^2                            chance agreement
        kappa = (P_bar - P_e) / (1 - P_e)

    When every rating falls in one category, ``P_e == 1`` and kappa is undefined: ``nan``.
    With ``details=True`` the result is ``{"kappa", "P_bar", "P_e", "n_items", "n_raters"}``.
    """
    t = np.asarray(table, dtype=float)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"table must be a non-empty 2-D items x categories array, got shape {t.shape}")
    if np.any(t < 0) or np.any(t != np.round(t)):
        raise ValueError("table must hold non-negative integer counts")
    row_sums = t.sum(axis=1)
    n = row_sums[0]
    if np.any(row_sums != n):
        raise ValueError(f"every item must have the same number of raters; row sums are {sorted(set(row_sums.tolist()))}")
    if n < 2:
        raise ValueError(f"need at least 2 raters per item, got {int(n)}")
    n_items = t.shape[0]
    p_i = ((t ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_bar = float(p_i.mean())
    p_j = t.sum(axis=0) / (n_items * n)
    p_e = float((p_j ** 2).sum())
    kappa = math.nan if math.isclose(p_e, 1.0) else (p_bar - p_e) / (1.0 - p_e)
    if details:
        return {"kappa": float(kappa), "P_bar": p_bar, "P_e": p_e, "n_items": int(n_items), "n_raters": int(n)}
    return float(kappa)


def krippendorff_alpha(labels: Mapping[str, Mapping[str, str]], details: bool = False):
    """Krippendorff's alpha (nominal) of annotators who may have rated different subsets of the items.

    ``labels = {annotator: {item_id: category}}`` (any hashable categories, e.g. the preferred model or
    ``"tie"``). Computed by the ``krippendorff`` package (``level_of_measurement="nominal"``) on the
    annotators x items reliability matrix, a missing rating left as NaN: only items with at least two
    ratings are *pairable* and count. ``nan`` when alpha is undefined: fewer than two annotators, no
    pairable item, or a single category among the pairable ratings (no variation to agree on). With
    ``details=True``: ``{"alpha", "n_items" (pairable), "n_ratings" (in pairable items), "n_annotators"}``.
    """
    annotators = sorted(labels)
    items = sorted({i for a in annotators for i in labels[a]})
    pairable = [i for i in items if sum(i in labels[a] for a in annotators) >= 2]
    values = sorted({labels[a][i] for a in annotators for i in pairable if i in labels[a]}, key=str)
    n_ratings = sum(i in labels[a] for a in annotators for i in pairable)
    alpha = math.nan
    if len(annotators) >= 2 and pairable and len(values) >= 2:
        code = {v: k for k, v in enumerate(values)}
        data = np.array([[code[labels[a][i]] if i in labels[a] else np.nan for i in pairable] for a in annotators],
                        dtype=float)
        alpha = float(krippendorff.alpha(reliability_data=data, value_domain=list(range(len(values))),
                                         level_of_measurement="nominal"))
    if details:
        return {"alpha": alpha, "n_items": len(pairable), "n_ratings": n_ratings, "n_annotators": len(annotators)}
    return alpha


# --------------------------------------------------------------------------- the A/B study

def majority_vote(verdicts: Iterable[Sequence]) -> str:
    """The item-level winner from several annotators' verdicts: ``"A"``, ``"B"`` or ``"tie"``.

    Counts the decisive (non-Unsure) votes for each side; the side with more votes wins, equal
    counts (including no decisive votes at all) give ``"tie"``. Strength does not weigh in:
    one "Slightly better" counts as much as one "Significantly better". Unsure votes are
    abstentions, so ``[A, Unsure, Unsure]`` is a win for A.
    """
    counts = Counter(verdict_side(v, f"verdict {i}") for i, v in enumerate(verdicts))
    if counts["A"] > counts["B"]:
        return "A"
    if counts["B"] > counts["A"]:
        return "B"
    return TIE


def _models_of(key: Mapping, item_ids: Iterable[str]) -> tuple[str, str]:
    """The two model names the key uses for these items, sorted; DataError for a bad key."""
    names: set[str] = set()
    for item in item_ids:
        entry = key.get(item)
        if entry is None:
            raise DataError(None, f"item {item!r}", None, "rated item is missing from the key")
        for field in ("a_model", "b_model"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise DataError(None, f"key item {item!r}", field, "missing or empty")
        if entry["a_model"] == entry["b_model"]:
            raise DataError(None, f"key item {item!r}", None, f"a_model and b_model are both {entry['a_model']!r}")
        names.update((entry["a_model"], entry["b_model"]))
    if len(names) != 2:
        raise DataError(None, None, "key", f"a pair summary needs exactly 2 models, the key names {sorted(names)}")
    return tuple(sorted(names))  # type: ignore[return-value]


def _to_model(side: str, entry: Mapping) -> str:
    """Map ``"A"``/``"B"``/``"tie"`` to a model name (or ``"tie"``) through one item's key entry."""
    return entry["a_model"] if side == "A" else entry["b_model"] if side == "B" else TIE


def summarize_pair(annotations: Mapping[str, Mapping[str, Sequence]], key: Mapping[str, Mapping],
                   lengths: Mapping[str, Mapping] | None = None) -> dict:
    """Summarise a blind A/B comparison of two models, in model space (A/B order undone).

    Items are every item id rated by at least one annotator; each must be in ``key``, and the
    key must name exactly two models over them. An item's winner is :func:`majority_vote` over
    the annotators who rated it, mapped to a model name through the key.

    Returns (model names sorted; ``None`` wherever a number is undefined)::

        n_items, n_decisive (= n_items - ties), n_annotators, annotators (sorted)
        models: {name: {wins, win_rate = wins / n_items,
                        win_rate_decisive = wins / n_decisive,
                        ci95_low, ci95_high   (Wilson 95% interval of win_rate_decisive),
                        p_value               (two-sided binomial test, wins of n_decisive vs 0.5)}}
        ties: {count, rate = count / n_items}
        strength: {name: {"Significantly better": c, "Better": c, "Slightly better": c}}
        agreement: {pairwise, n_pairs, fleiss_kappa, kappa_items, krippendorff_alpha, alpha_items,
                    alpha_ratings, leave_one_out, leave_one_out_mean}
        length_preference: {annotator: {prefers_longer, n}}   or None without ``lengths``

    Definitions:

    * ``strength[m]``: over the items model ``m`` won, the strengths of the votes that agree
      with the majority (votes for ``m``); votes on ties and votes against the winner are not
      counted. Each bar of the stacked graph is one model; its height is its agreeing votes.
    * An annotator's *label* on an item is the model they preferred, or ``"tie"`` for Unsure.
    * ``pairwise``: over every item and every pair of annotators who both rated it, the share
      of pairs with the same label (``n_pairs`` pairs in all).
    * ``fleiss_kappa``: :func:`fleiss_kappa` over categories (model 1, model 2, tie) on the
      ``kappa_items`` items every annotator rated (None when no item was rated by all).
    * ``krippendorff_alpha``: :func:`krippendorff_alpha` (nominal, same categories) over every item
      rated by at least two annotators (``alpha_items`` items, ``alpha_ratings`` ratings in them):
      the agreement figure for annotators who rated different subsets (an assignment with overlap).
    * ``leave_one_out[a] = {agreement, n}``: for each item ``a`` rated, the majority vote of the
      *other* annotators who rated it; items nobody else rated, and items where the others'
      majority is a tie, are skipped. ``agreement`` is the share of the remaining ``n`` items
      where ``a``'s label equals that majority (an Unsure from ``a`` counts as disagreement).
      ``leave_one_out_mean`` is the unweighted mean over annotators with ``n > 0``.
    * ``length_preference[a] = {prefers_longer, n}``: among ``a``'s decisive votes on items whose
      two answers differ in length, the share that chose the longer answer. ``lengths`` must
      cover every rated item (DataError otherwise).

    With a single annotator all agreement numbers are ``None`` (``leave_one_out`` entries have
    ``n = 0``). Raises :class:`DataError` for bad verdicts, items missing from the key, or no
    rated items.
    """
    annotators = sorted(annotations)
    items = sorted({item for a in annotators for item in annotations[a]})
    if not items:
        raise DataError(None, None, "annotations", "no rated items")
    m1, m2 = _models_of(key, items)
    models = (m1, m2)

    # side[a][item] in {"A", "B", "tie"}; label = the same in model space
    side = {a: {item: verdict_side(v, f"annotator {a!r}, item {item!r}") for item, v in annotations[a].items()}
            for a in annotators}
    label = {a: {item: _to_model(s, key[item]) for item, s in side[a].items()} for a in annotators}
    raters = {item: [a for a in annotators if item in annotations[a]] for item in items}

    winner = {item: _to_model(majority_vote([annotations[a][item] for a in raters[item]]), key[item])
              for item in items}
    n_items = len(items)
    wins = Counter(winner.values())
    n_ties = wins[TIE]
    n_decisive = n_items - n_ties

    model_stats = {}
    for m in models:
        lo, hi = wilson_interval(wins[m], n_decisive)
        model_stats[m] = {
            "wins": wins[m],
            "win_rate": _rate(wins[m] / n_items),
            "win_rate_decisive": _rate(wins[m] / n_decisive) if n_decisive else None,
            "ci95_low": _rate(lo),
            "ci95_high": _rate(hi),
            "p_value": _pval(binom_p(wins[m], n_decisive)),
        }

    strength = {m: {s: 0 for s in DECISIVE_STRENGTHS} for m in models}
    for item, w in winner.items():
        if w == TIE:
            continue
        for a in raters[item]:
            if label[a][item] == w:
                strength[w][annotations[a][item][1]] += 1

    # raw pairwise agreement
    agree = pairs = 0
    for item in items:
        for a, b in combinations(raters[item], 2):
            pairs += 1
            agree += label[a][item] == label[b][item]

    # Fleiss' kappa on the items every annotator rated
    kappa, full_items = None, [item for item in items if len(raters[item]) == len(annotators)]
    if len(annotators) >= 2 and full_items:
        cats = (m1, m2, TIE)
        table = [[sum(label[a][item] == c for a in annotators) for c in cats] for item in full_items]
        kappa = _rate(fleiss_kappa(table))

    # Krippendorff's alpha on every item with >= 2 ratings (annotators may have rated different subsets)
    alpha = krippendorff_alpha(label, details=True)

    # leave-one-out: each annotator against the majority of the others
    loo = {}
    for a in annotators:
        hits = n = 0
        for item in annotations[a]:
            others = [annotations[b][item] for b in raters[item] if b != a]
            if not others:
                continue
            others_major = _to_model(majority_vote(others), key[item])
            if others_major == TIE:
                continue
            n += 1
            hits += label[a][item] == others_major
        loo[a] = {"agreement": _rate(hits / n) if n else None, "n": n}
    loo_values = [v["agreement"] for v in loo.values() if v["agreement"] is not None]

    length_pref = None
    if lengths is not None:
        length_pref = {}
        for a in annotators:
            longer = n = 0
            for item, s in side[a].items():
                if item not in lengths:
                    raise DataError(None, f"item {item!r}", "lengths", "rated item has no answer lengths")
                try:
                    la, lb = int(lengths[item]["A"]), int(lengths[item]["B"])
                except (KeyError, TypeError, ValueError):
                    raise DataError(None, f"item {item!r}", "lengths", "needs integer 'A' and 'B' lengths") from None
                if s == TIE or la == lb:
                    continue
                n += 1
                longer += s == ("A" if la > lb else "B")
            length_pref[a] = {"prefers_longer": _rate(longer / n) if n else None, "n": n}

    return {
        "n_items": n_items,
        "n_decisive": n_decisive,
        "n_annotators": len(annotators),
        "annotators": annotators,
        "models": model_stats,
        "ties": {"count": n_ties, "rate": _rate(n_ties / n_items)},
        "strength": strength,
        "agreement": {
            "pairwise": _rate(agree / pairs) if pairs else None,
            "n_pairs": pairs,
            "fleiss_kappa": kappa,
            "kappa_items": len(full_items) if kappa is not None else 0,
            "krippendorff_alpha": _rate(alpha["alpha"]),
            "alpha_items": alpha["n_items"],
            "alpha_ratings": alpha["n_ratings"],
            "leave_one_out": loo,
            "leave_one_out_mean": _rate(float(np.mean(loo_values))) if loo_values else None,
        },
        "length_preference": length_pref,
    }


# --------------------------------------------------------------------------- rewards

def _finite_array(values, name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds a NaN or infinite value")
    return arr


def reward_summary(values: Iterable[float], n_resamples: int = 2000, confidence: float = 0.95,
                   random_state: int = 0) -> dict:
    """Summary of one model's reward scores: ``n, mean, median, std, min, max, ci95_low, ci95_high``.

    ``std`` is the sample standard deviation (ddof=1), ``None`` when ``n < 2``. The interval is a
    BCa bootstrap interval of the mean (``scipy.stats.bootstrap``, ``n_resamples`` resamples,
    seeded by ``random_state`` so reruns give the same numbers); ``None`` when ``n < 2``; when
    all values are equal it is ``(value, value)``. An empty input gives ``n = 0`` and ``None``
    everywhere else. Raises ValueError for NaN or infinite values. Numbers are rounded to 4 decimals.
    """
    arr = _finite_array(values, "values")
    n = int(arr.size)
    out = {"n": n, "mean": None, "median": None, "std": None, "min": None, "max": None,
           "ci95_low": None, "ci95_high": None}
    if n == 0:
        return out
    out.update(mean=_rate(arr.mean()), median=_rate(np.median(arr)), min=_rate(arr.min()), max=_rate(arr.max()))
    if n >= 2:
        out["std"] = _rate(arr.std(ddof=1))
        if np.all(arr == arr[0]):
            lo = hi = float(arr[0])
        else:
            res = scipy.stats.bootstrap((arr,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                                        method="BCa", vectorized=True, rng=np.random.default_rng(random_state))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        out["ci95_low"], out["ci95_high"] = _rate(lo), _rate(hi)
    return out


def paired_wilcoxon(x: Sequence[float], y: Sequence[float]) -> dict:
    """Wilcoxon signed-rank test of paired samples ``x`` and ``y`` (two-sided, ``scipy.stats.wilcoxon``).

    Returns ``{statistic, p_value, n, n_nonzero}``: ``n`` pairs, of which ``n_nonzero`` differ
    (zero differences are dropped, scipy's default ``zero_method="wilcox"``). Differences within float noise
    (``numpy.isclose``: 1e-5 relative, 1e-6 absolute) count as zero: the same answer scored in two batches of
    other widths gets rewards ~1e-7 apart, which is no evidence of anything. When every pair is
    equal there is no evidence of a difference: ``statistic = 0.0, p_value = 1.0`` without calling
    scipy. Raises ValueError for unequal lengths, empty input, NaN or infinite values.
    """
    xa, ya = _finite_array(x, "x"), _finite_array(y, "y")
    if xa.size != ya.size:
        raise ValueError(f"x and y must pair up, got {xa.size} and {ya.size} values")
    if xa.size == 0:
        raise ValueError("x and y are empty")
    ya = np.where(np.isclose(xa, ya, rtol=1e-5, atol=1e-6), xa, ya)  # float noise is a tie
    n_nonzero = int(np.count_nonzero(xa - ya))
    if n_nonzero == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n": int(xa.size), "n_nonzero": 0}
    res = scipy.stats.wilcoxon(xa, ya)
    return {"statistic": float(res.statistic), "p_value": _pval(res.pvalue), "n": int(xa.size), "n_nonzero": n_nonzero}
