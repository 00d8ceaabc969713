"""The verdict rule: exactly one of :data:`VERDICTS` for a comparison's wins/losses/ties and the
human-agreement interval of the judge that produced them (:func:`comparison_verdict`). The statistics it
stands on (exact sign test, detectable win rate, Holm, kappa, cluster bootstrap, McNemar) are
:mod:`sciexplain.stats`'s.
"""
from __future__ import annotations

import math

from .stats import binom_p, detectable_win_rate, round_p, round_rate  # noqa: F401  (the statistics live in stats)

SUBJECT_BETTER, SUBJECT_WORSE, CANNOT_TELL, NOT_VALIDATED = "better", "worse", "cannot tell at this n", "judge not validated"
VERDICTS = (SUBJECT_BETTER, SUBJECT_WORSE, CANNOT_TELL, NOT_VALIDATED)


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
        verdict = SUBJECT_BETTER if wins > losses else SUBJECT_WORSE
    else:
        verdict = CANNOT_TELL
    return {"verdict": verdict, "n": wins + losses + ties, "wins": wins, "losses": losses, "ties": ties,
            "decisive": decisive, "win_rate": round_rate(wins / decisive) if decisive else None, "p": round_p(p),
            "detectable_win_rate": round_rate(detectable) if detectable is not None else None,
            "detectable_difference": round_rate(detectable - 0.5) if detectable is not None else None,
            "judge_validated": bool(validated), "alpha": alpha, "power": power}
