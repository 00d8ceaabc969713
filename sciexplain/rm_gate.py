"""The gate in front of every use of the reward model: does its held-out human-pair accuracy clear chance?

The reward_model stage writes a ``validation`` block into ``metrics/reward_model.json``
(:func:`validation_block`): the reward model's accuracy on the held-out human pairs
(``data/human_pairs/test.jsonl``, questions never trained on) with its question-level cluster-bootstrap 95%
interval, and ``cleared`` = that interval's lower end is above :data:`CHANCE` (0.5). Every stage that uses the
reward model's scores (score_samples, select -- which feeds rs and dpo --, score_eval) calls
:func:`require_validated` first: it refuses with one line naming the figure unless ``cleared``, or unless
``reward_model.allow_unvalidated`` is true, in which case it logs the same figure as a warning and goes on
(the metrics then carry ``used_unvalidated: true`` and the report opens with a warning).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

from .records import DataError, UserError

log = logging.getLogger(__name__)

CHANCE = 0.5
PARAM = "reward_model.allow_unvalidated"
INTERVAL = "question-level cluster bootstrap, 95%"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{float(x):.2f}"


def validation_block(accuracy: float | None, ci_low: float | None, ci_high: float | None, *, n: int,
                     questions: int, allow_unvalidated: bool) -> dict:
    """The ``validation`` block of metrics/reward_model.json. ``cleared`` is ``ci_low > CHANCE``; with no
    held-out pairs (no interval) the model is not cleared."""
    cleared = ci_low is not None and float(ci_low) > CHANCE
    return {"cleared": bool(cleared), "accuracy": accuracy, "ci_low": ci_low, "ci_high": ci_high,
            "interval": "cluster_bootstrap_95", "threshold": CHANCE, "n": int(n), "questions": int(questions),
            "allow_unvalidated": bool(allow_unvalidated)}


def figure(accuracy, ci_low, ci_high, n) -> str:
    """``reward model's held-out human-pair accuracy 0.52, 95% CI 0.43–0.61 (n=118), does not clear 0.5``."""
    return (f"reward model's held-out human-pair accuracy {_fmt(accuracy)}, 95% CI {_fmt(ci_low)}–{_fmt(ci_high)} "
            f"({INTERVAL}, n={n}), does not clear {CHANCE}")


def message(v: Mapping) -> str:
    """The validation block in words (metrics hold only its numbers): what a refusal or a warning says."""
    return figure(v.get("accuracy"), v.get("ci_low"), v.get("ci_high"), v.get("n"))


def check(metrics: Mapping, allow_unvalidated: bool, stage: str) -> dict:
    """The gate on already-read metrics: returns the validation block when the model may be used, raises
    :class:`UserError` (one line) when it may not. Metrics without a validation block are refused too."""
    if not isinstance(allow_unvalidated, bool):
        raise DataError("params.yaml", None, PARAM, f"must be true or false, got {allow_unvalidated!r}")
    v = metrics.get("validation") if isinstance(metrics, Mapping) else None
    if not isinstance(v, Mapping) or not isinstance(v.get("cleared"), bool):
        raise UserError(f"{stage}: the reward model's metrics carry no validation on human pairs (rerun the "
                        f"reward_model stage); set {PARAM}: true to use it anyway")
    if v["cleared"]:
        return dict(v)
    line = message(v)
    if not allow_unvalidated:
        raise UserError(f"{line}: {stage} refuses to use it; set {PARAM}: true to use it anyway")
    log.warning("%s: %s uses it anyway (%s: true); the report says so first", line, stage, PARAM)
    return dict(v)


def require_validated(metrics_path: str | Path, allow_unvalidated: bool, stage: str) -> dict:
    """:func:`check` on ``metrics_path`` (metrics/reward_model.json); a missing file is refused."""
    path = Path(metrics_path)
    if not path.exists():
        raise UserError(f"{stage}: {path} is missing, so the reward model's human-pair validation is unknown "
                        f"(run the reward_model stage)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", None, "not valid JSON") from None
    return check(metrics, allow_unvalidated, stage)
