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
from typing import Iterable, Mapping, Sequence

import krippendorff
import numpy as np
import scipy.optimize
import scipy.stats

from .records import DataError
from .strengths import BETTER, DECISIVE_STRENGTHS, SIGNIFICANTLY, SLIGHTLY, STRENGTH_MARGIN, STRENGTHS, UNSURE  # noqa: F401

TIE = "tie"


# --------------------------------------------------------------------------- small helpers

def round_rate(x: float | None) -> float | None:
    """A rate or kappa for JSON: ``None`` for missing/NaN, else a float rounded to 4 decimals."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 4)


def round_p(p: float | None) -> float | None:
    """A p-value for JSON: ``None`` for missing/NaN, else a float with 4 significant digits."""
    if p is None or not math.isfinite(p):
        return None
    return float(f"{float(p):.4g}")


def call_side(verdict: Sequence, where: str | None = None) -> str:
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
    counts = Counter(call_side(v, f"verdict {i}") for i, v in enumerate(verdicts))
    if counts["A"] > counts["B"]:
        return "A"
    if counts["B"] > counts["A"]:
        return "B"
    return TIE


# --------------------------------------------------------------------------- rewards

def finite_array(values, name: str) -> np.ndarray:
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
    arr = finite_array(values, "values")
    n = int(arr.size)
    out = {"n": n, "mean": None, "median": None, "std": None, "min": None, "max": None,
           "ci95_low": None, "ci95_high": None}
    if n == 0:
        return out
    out.update(mean=round_rate(arr.mean()), median=round_rate(np.median(arr)), min=round_rate(arr.min()), max=round_rate(arr.max()))
    if n >= 2:
        out["std"] = round_rate(arr.std(ddof=1))
        if np.all(arr == arr[0]):
            lo = hi = float(arr[0])
        else:
            res = scipy.stats.bootstrap((arr,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                                        method="BCa", vectorized=True, rng=np.random.default_rng(random_state))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        out["ci95_low"], out["ci95_high"] = round_rate(lo), round_rate(hi)
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
    xa, ya = finite_array(x, "x"), finite_array(y, "y")
    if xa.size != ya.size:
        raise ValueError(f"x and y must pair up, got {xa.size} and {ya.size} values")
    if xa.size == 0:
        raise ValueError("x and y are empty")
    ya = np.where(np.isclose(xa, ya, rtol=1e-5, atol=1e-6), xa, ya)  # float noise is a tie
    n_nonzero = int(np.count_nonzero(xa - ya))
    if n_nonzero == 0:
        return {"statistic": 0.0, "p_value": 1.0, "n": int(xa.size), "n_nonzero": 0}
    res = scipy.stats.wilcoxon(xa, ya)
    return {"statistic": float(res.statistic), "p_value": round_p(res.pvalue), "n": int(xa.size), "n_nonzero": n_nonzero}


# --------------------------------------------------------------------------- agreement, tests, power (general statistics)
def cohen_kappa(labels_1: Sequence, labels_2: Sequence) -> float | None:
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)``; None when undefined (no items, or p_e == 1)."""
    if len(labels_1) != len(labels_2):
        raise ValueError("cohen_kappa needs two label sequences of the same length")
    n = len(labels_1)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(labels_1, labels_2)) / n
    c1, c2 = Counter(labels_1), Counter(labels_2)
    p_e = sum(c1[k] * c2[k] for k in c1) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def cluster_bootstrap_ci(hits: Mapping, totals: Mapping, n_resamples: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of ``sum(hits) / sum(totals)`` resampling clusters (the keys) with replacement.

    ``hits`` and ``totals`` map a cluster (a question id) to its counts. Resamples whose total is 0 are
    skipped; ``(None, None)`` when there is nothing to resample.
    """
    keys = sorted(k for k in totals if totals[k] > 0)
    if not keys or n_resamples < 1:
        return (None, None)
    h = np.array([hits.get(k, 0) for k in keys], dtype=float)
    t = np.array([totals[k] for k in keys], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(int(n_resamples), len(keys)))
    num, den = h[idx].sum(axis=1), t[idx].sum(axis=1)
    ratios = num[den > 0] / den[den > 0]
    if ratios.size == 0:
        return (None, None)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


# --------------------------------------------------------------------------- paired tests
def mcnemar_exact(correct_1: Sequence[bool], correct_2: Sequence[bool]) -> dict:
    """Exact McNemar test of two predictors on the same items (True = right on that item).

    ``only_1`` = items only predictor 1 got right, ``only_2`` = only predictor 2; ``p`` is
    ``binomtest(only_1, only_1 + only_2, 0.5)`` two-sided, and 1.0 when no item is discordant.
    """
    if len(correct_1) != len(correct_2):
        raise ValueError("mcnemar_exact needs the two predictors on the same items")
    only_1 = sum(bool(a) and not bool(b) for a, b in zip(correct_1, correct_2))
    only_2 = sum(bool(b) and not bool(a) for a, b in zip(correct_1, correct_2))
    n = only_1 + only_2
    p = 1.0 if n == 0 else float(scipy.stats.binomtest(only_1, n, 0.5).pvalue)
    return {"only_1": only_1, "only_2": only_2, "discordant": n, "p": p}


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); None entries stay None and do not count."""
    named = sorted(((p, k) for k, p in pvalues.items() if p is not None and math.isfinite(p)))
    m, out, running = len(named), {k: None for k in pvalues}, 0.0
    for i, (p, k) in enumerate(named):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


# --------------------------------------------------------------------------- power and verdicts
def _critical_k(n: int, alpha: float) -> int:
    """The largest k whose two-sided exact binomial p-value (p0 = 0.5) is <= alpha; -1 when none is."""
    if n <= 0:
        return -1
    ks = np.arange(0, n // 2 + 1)
    p = np.minimum(1.0, 2.0 * scipy.stats.binom.cdf(ks, n, 0.5))
    ok = ks[p <= alpha]
    return int(ok.max()) if ok.size else -1


def sign_test_power(n: int, p: float, alpha: float = 0.05) -> float:
    """Exact power of the two-sided sign test at ``n`` decisive votes when the true win share is ``p``."""
    k = _critical_k(n, alpha)
    if k < 0:
        return 0.0
    return float(scipy.stats.binom.cdf(k, n, p) + scipy.stats.binom.sf(n - k - 1, n, p))


def detectable_win_rate(n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true win share ``p > 0.5`` detected with ``power`` at ``n`` decisive votes (None: none can be)."""
    n = int(n)
    if _critical_k(n, alpha) < 0 or sign_test_power(n, 1.0, alpha) < power:
        return None
    return float(scipy.optimize.brentq(lambda p: sign_test_power(n, p, alpha) - power, 0.5, 1.0, xtol=1e-6))


