"""How far a number can be trusted: agreement statistics for judges and a plain verdict for every comparison.

* :func:`cohen_kappa` -- Cohen's kappa of two label sequences (any categories; a judge's tie is its own
  category, so it always counts as a disagreement with a human who never ties).
* :func:`cluster_bootstrap_ci` -- percentile bootstrap of a ratio of sums (``sum hits / sum n``) that
  resamples whole clusters (questions) with replacement, so pairs that share a question are not treated as
  independent.
* :func:`mcnemar_exact` -- two predictors on the same items: the exact McNemar test, i.e. a two-sided
  binomial test (``scipy.stats.binomtest``, p = 0.5) on the discordant items.
* :func:`holm` -- Holm's step-down adjustment of a family of p-values.
* :func:`detectable_win_rate` -- the smallest true win share among decisive votes that a two-sided exact
  sign test (binomial, p0 = 0.5, alpha 0.05) detects with 80% power at ``n`` decisive votes: the exact
  rejection region of the test at ``n``, its power under Binomial(n, p) computed exactly, and the ``p``
  where that power reaches the target found by root-finding (no normal approximation).
* :func:`comparison_verdict` -- exactly one of :data:`VERDICTS` for a comparison's wins/losses/ties and the
  human-agreement interval of the judge that produced them.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Mapping, Sequence

import numpy as np
import scipy.optimize
import scipy.stats

from .stats import _pval, _rate, binom_p

BETTER, WORSE, CANNOT_TELL, NOT_VALIDATED = "better", "worse", "cannot tell at this n", "judge not validated"
VERDICTS = (BETTER, WORSE, CANNOT_TELL, NOT_VALIDATED)


# --------------------------------------------------------------------------- agreement
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


def comparison_verdict(wins: int, losses: int, ties: int, judge_ci: tuple | None, *, human: bool = False,
                       alpha: float = 0.05, power: float = 0.8) -> dict:
    """The verdict on "model beats its opponent" from one judge's (or the humans') votes.

    ``judge_ci`` is the (low, high) interval of the judge's agreement with human preferences; the judge
    counts as validated only when ``low > 0.5`` (an interval that includes 0.5, or lies below it, or is
    missing, gives ``"judge not validated"`` whatever the votes say). ``human=True`` marks human votes,
    which need no validation. Otherwise a two-sided exact sign test on the decisive votes (ties left
    out) at ``alpha``: ``"better"`` / ``"worse"`` when it rejects, else ``"cannot tell at this n"``.

    Also returned: ``n`` (all votes), ``decisive``, ``win_rate`` (wins / decisive), ``p``, and
    ``detectable_win_rate`` / ``detectable_difference`` (that minus 0.5): the smallest true win share
    the test detects with ``power`` at this many decisive votes (None when no share can be).
    """
    wins, losses, ties = int(wins), int(losses), int(ties)
    if min(wins, losses, ties) < 0:
        raise ValueError("wins, losses and ties must be >= 0")
    decisive = wins + losses
    p = binom_p(wins, decisive) if decisive else math.nan
    detectable = detectable_win_rate(decisive, alpha, power) if decisive else None
    validated = human or (judge_ci is not None and judge_ci[0] is not None and judge_ci[0] > 0.5)
    if not validated:
        verdict = NOT_VALIDATED
    elif decisive and p <= alpha:
        verdict = BETTER if wins > losses else WORSE
    else:
        verdict = CANNOT_TELL
    return {"verdict": verdict, "n": wins + losses + ties, "wins": wins, "losses": losses, "ties": ties,
            "decisive": decisive, "win_rate": _rate(wins / decisive) if decisive else None, "p": _pval(p),
            "detectable_win_rate": _rate(detectable) if detectable is not None else None,
            "detectable_difference": _rate(detectable - 0.5) if detectable is not None else None,
            "judge_validated": bool(validated), "alpha": alpha, "power": power}
