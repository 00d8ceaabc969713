"""How many items and annotators a comparison needs: power in people's terms.

A comparison's verdict is an exact two-sided sign test on the decisive votes (:mod:`sciexplain.verdicts`). This
module answers the planning questions around it:

* :func:`items_needed` -- the decisive items that detect a true win rate ``w`` with the wanted power, for a family of
  ``tests`` Holm-adjusted comparisons (planned at the strictest Holm step, alpha / tests). The exact test's power is
  a saw-tooth in n, so the answer is the smallest n from which every larger n keeps the power.
* :func:`seen_through_judge` -- the win rate a judge observes when people's true win rate is ``w`` and the judge
  agrees with people on a share ``agreement`` of decisive pairs (its validate figure): ``a*w + (1-a)*(1-w)``, so a
  judge at 0.64 turns a true 0.70 into 0.56 and needs several times the items.
* :func:`majority_win_rate` -- the win share of the majority of ``k`` annotators per item when each votes for the
  subject with probability ``w`` independently (odd ``k``): more annotators per item, fewer items.
* :func:`plan` -- the table of all three: items, annotators per item, annotations in all.

    python -m sciexplain.planner --win-rate 0.6 0.7 --tests 4 --judge-agreement 0.643 --annotators 1 3 5

The model is a simple one (independent votes, one win rate for every item); it is a plan, not a guarantee.
"""
from __future__ import annotations

import argparse
import sys

import scipy.stats

from .stats import sign_test_power

MAX_ITEMS = 100_000


def items_needed(win_rate: float, alpha: float = 0.05, power: float = 0.8, tests: int = 1) -> int | None:
    """Decisive items for the exact two-sided sign test to detect ``win_rate`` with ``power`` at ``alpha / tests``
    (Holm's strictest step), from which on every larger n keeps the power; None when no n up to MAX_ITEMS does."""
    if not 0 <= win_rate <= 1 or not 0 < alpha < 1 or not 0 < power < 1 or tests < 1:
        raise ValueError(f"need 0 <= win_rate <= 1, 0 < alpha < 1, 0 < power < 1, tests >= 1; got {win_rate}, "
                         f"{alpha}, {power}, {tests}")
    if abs(win_rate - 0.5) < 1e-9:
        return None
    level = alpha / tests
    # a normal-approximation start, then the exact power: the first n of a run of 50 that all reach it
    z = scipy.stats.norm.ppf(1 - level / 2) + scipy.stats.norm.ppf(power)
    start = max(1, int(0.5 * (z / (2 * abs(win_rate - 0.5))) ** 2))
    n, run, first = max(1, start // 2), 0, None
    while n <= MAX_ITEMS:
        if sign_test_power(n, win_rate, level) >= power:
            first = n if run == 0 else first
            run += 1
            if run >= 50:
                return first
        else:
            run = 0
        n += 1
    return None


def seen_through_judge(win_rate: float, agreement: float) -> float:
    """The win rate a judge that agrees with people on a share ``agreement`` of decisive pairs reports."""
    if not 0 <= agreement <= 1:
        raise ValueError(f"agreement must be in [0, 1], got {agreement}")
    return agreement * win_rate + (1 - agreement) * (1 - win_rate)


def majority_win_rate(win_rate: float, annotators: int) -> float:
    """The win share of the majority of ``annotators`` (odd) independent votes, each for the subject w.p. ``win_rate``."""
    if annotators < 1 or annotators % 2 == 0:
        raise ValueError(f"annotators per item must be odd (a majority without ties), got {annotators}")
    return float(scipy.stats.binom.sf(annotators // 2, annotators, win_rate))


def plan(win_rates, *, annotators=(1,), judge_agreement: float | None = None, alpha: float = 0.05,
         power: float = 0.8, tests: int = 1) -> list[dict]:
    """One row per true win rate and annotators per item (and one for the judge): items and annotations needed."""
    rows = []
    for w in win_rates:
        for k in annotators:
            seen = majority_win_rate(w, k)
            n = items_needed(seen, alpha, power, tests)
            rows.append({"win_rate": w, "by": f"{k} annotator{'s' if k > 1 else ''}", "seen": round(seen, 4),
                         "items": n, "annotations": None if n is None else n * k})
        if judge_agreement is not None:
            seen = seen_through_judge(w, judge_agreement)
            n = items_needed(seen, alpha, power, tests)
            rows.append({"win_rate": w, "by": f"judge at {judge_agreement:g}", "seen": round(seen, 4), "items": n,
                         "annotations": None})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sciexplain.planner", description=__doc__.split("\n\n")[0])
    ap.add_argument("--win-rate", type=float, nargs="+", default=[0.6, 0.7], help="true win rates among people")
    ap.add_argument("--annotators", type=int, nargs="+", default=[1, 3], help="annotators per item (odd)")
    ap.add_argument("--judge-agreement", type=float, help="a judge's agreement with people (metrics/validate.json)")
    ap.add_argument("--tests", type=int, default=1, help="comparisons in the Holm family (compare.pairs)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--power", type=float, default=0.8)
    args = ap.parse_args(argv)
    try:
        rows = plan(args.win_rate, annotators=args.annotators, judge_agreement=args.judge_agreement, alpha=args.alpha,
                    power=args.power, tests=args.tests)
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"decisive items for an exact two-sided sign test, alpha {args.alpha} / {args.tests} test(s), "
          f"power {args.power}")
    print(f"{'true win rate':>13}  {'decided by':<18} {'seen':>6} {'items':>7} {'annotations':>11}")
    for r in rows:
        items = "-" if r["items"] is None else str(r["items"])
        ann = "-" if r["annotations"] is None else str(r["annotations"])
        print(f"{r['win_rate']:>13g}  {r['by']:<18} {r['seen']:>6.3f} {items:>7} {ann:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
