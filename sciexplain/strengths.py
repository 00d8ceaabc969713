"""The study's 4-point preference scale, defined once: every sheet, annotation file, judge and statistic uses it.

A verdict says which answer is better and how much: ``Significantly better``, ``Better``, ``Slightly better``, or
``Unsure`` (no preference: a tie). :data:`STRENGTH_MARGIN` is the study's margin for the reward model.
"""
from __future__ import annotations

SIGNIFICANTLY, BETTER, SLIGHTLY, UNSURE = "Significantly better", "Better", "Slightly better", "Unsure"
STRENGTHS = (SIGNIFICANTLY, BETTER, SLIGHTLY, UNSURE)
#: How far each strength label moves the preference, on a 0..1 scale (Unsure = no preference).
STRENGTH_MARGIN = {SIGNIFICANTLY: 1.0, BETTER: 2 / 3, SLIGHTLY: 1 / 3, UNSURE: 0.0}
#: The labels of a decisive verdict, strongest first (the stacks of the strength bar graph).
DECISIVE_STRENGTHS = STRENGTHS[:3]

_BY_KEY = {" ".join(s.lower().split()): s for s in STRENGTHS}


def normalize_strength(value: str) -> str | None:
    """The canonical :data:`STRENGTHS` label for ``value`` (any case, extra whitespace), or None."""
    return _BY_KEY.get(" ".join(value.lower().split()))
