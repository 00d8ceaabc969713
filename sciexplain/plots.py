"""Figures of the study (matplotlib PNGs) and the CSV data files behind ``dvc plots show/diff``.

Each figure has one data file: the report stage writes the CSVs (:func:`write_plot_data`), ``dvc.yaml``'s
``plots:`` renders them with a template, and the report's PNGs are drawn from the same files
(:func:`figures_from_data`); the training curves come from DVCLive's own TSV logs, which ``dvc.yaml`` plots too.

Every figure is drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot, no global backend
switch, nothing left open), under matplotlib's default style (a user's matplotlibrc cannot change
it), at a fixed size and dpi, and saved without the ``Software`` metadata: the same input gives the
same PNG bytes run after run. Files are written atomically (:func:`sciexplain.records.atomic_path`).

Inputs are the shapes the rest of the package produces:

* rewards: ``{model: [reward, ...]}`` (or ``{model: {question_id: reward}}`` for the CSV);
* win rates: ``{comparison: comparisons.summarize_pair(...) output}``, comparison named like ``"sft vs base"``;
* best-of-n: ``[{"n": int, "mean_reward": float}, ...]``;
* training logs: DVCLive folders (``<dir>/plots/metrics/<metric>.tsv``, columns ``step`` and the metric).
"""
from __future__ import annotations

import csv
import io as _stdio
import math
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .records import DataError, atomic_path, write_text
from .stats import BETTER, DECISIVE_STRENGTHS, SIGNIFICANTLY, SLIGHTLY, TIE, UNSURE, finite_array

DPI = 100
PNG_METADATA = {"Software": None}  # no matplotlib version stamp: bytes depend on the data only

#: Colours of the stacked win-rate bar: first model (strong -> weak), tie, second model (weak -> strong).
FIRST_COLORS = {SIGNIFICANTLY: "#08519c", BETTER: "#3182bd", SLIGHTLY: "#9ecae1"}
TIE_COLOR = "#bdbdbd"
SECOND_COLORS = {SLIGHTLY: "#fdae6b", BETTER: "#e6550d", SIGNIFICANTLY: "#a63603"}
#: A comparison's numbers on its bar's label, kept on each of its segment rows (and so in winrates.csv).
LABEL_NUMBERS = ("win_rate", "win_rate_decisive", "ci95_low", "ci95_high", "p_value")


# --------------------------------------------------------------------------- plumbing

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _style():
    """Matplotlib's default style, whatever the user's matplotlibrc says."""
    import matplotlib.style

    return matplotlib.style.context("default")


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
    fig.clear()
    return path


def _no_data_figure(path, title: str, message: str) -> Path:
    with _style():
        fig = _figure(6.0, 2.0)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
        return _save(fig, path)


def _reward_values(scores) -> np.ndarray:
    return np.asarray(list(scores.values()) if isinstance(scores, Mapping) else list(scores), dtype=float)


# --------------------------------------------------------------------------- ridge plot

def _density(arr: np.ndarray, grid: np.ndarray, fallback_bw: float) -> np.ndarray:
    """Gaussian KDE of ``arr`` on ``grid``; a Gaussian of width ``fallback_bw`` around each point when
    the KDE is undefined (fewer than 2 values, zero variance, singular covariance)."""
    if arr.size >= 2 and np.ptp(arr) > 0:
        import scipy.stats

        try:
            return scipy.stats.gaussian_kde(arr)(grid)
        except (np.linalg.LinAlgError, ValueError):
            pass
    z = (grid[:, None] - arr[None, :]) / fallback_bw
    return np.exp(-0.5 * z ** 2).sum(axis=1) / (arr.size * fallback_bw * math.sqrt(2 * math.pi))


def ridge_plot(rewards: Mapping[str, Sequence[float]], path, title: str = "Reward per model") -> Path:
    """Stacked reward densities, one row per model (first model on top), the mean marked, shared x axis.

    ``rewards[model]`` is a list of rewards (a ``{question_id: reward}`` mapping works too). Densities
    share one vertical scale, so a peakier model draws a taller ridge. A model with no rewards gets an
    empty row marked "no data". Raises ValueError for NaN or infinite rewards.
    """
    data = {str(m): finite_array(_reward_values(v), f"rewards of {m!r}") for m, v in rewards.items()}
    if not any(a.size for a in data.values()):
        return _no_data_figure(path, title, "no rewards yet")
    allv = np.concatenate([a for a in data.values() if a.size])
    lo, hi = float(allv.min()), float(allv.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    fallback_bw = 0.04 * span
    grid = np.linspace(lo - 0.15 * span, hi + 0.15 * span, 512)
    dens = {m: _density(a, grid, fallback_bw) if a.size else None for m, a in data.items()}
    # one vertical scale set by the real KDEs; a fallback spike (one value, or all values equal) is
    # rescaled to that scale's full height instead of dwarfing every other row
    kde_models = {m for m, a in data.items() if a.size >= 2 and np.ptp(a) > 0}
    top = max((float(dens[m].max()) for m in kde_models), default=1.0) or 1.0
    dens = {m: d if d is None or m in kde_models else d / d.max() * top for m, d in dens.items()}

    n = len(data)
    overlap = 1.6  # the tallest ridge reaches 1.6 rows up
    with _style():
        import matplotlib

        fig = _figure(7.0, 1.2 + 0.75 * n)
        ax = fig.add_subplot()
        colors = matplotlib.colormaps["tab10"].colors
        for i, (m, d) in enumerate(dens.items()):
            base = n - 1 - i
            color = colors[i % len(colors)]
            zorder = 2 * i + 1  # lower rows are drawn over the ridges above them
            ax.axhline(base, color="0.8", lw=0.6, zorder=zorder)
            if d is None:
                ax.text(grid[0], base + 0.15, "no data", color="0.5", fontsize=8, zorder=zorder)
                continue
            y = base + d / top * overlap
            ax.fill_between(grid, base, y, color=color, alpha=0.55, lw=0, zorder=zorder)
            ax.plot(grid, y, color=color, lw=1.2, zorder=zorder + 0.5)
            mean = float(data[m].mean())
            ymean = base + float(np.interp(mean, grid, d)) / top * overlap
            ax.plot([mean, mean], [base, ymean], color="black", lw=1.3, zorder=zorder + 0.6)
            ax.text(mean, ymean + 0.05, f"mean {mean:.3f}", ha="center", va="bottom", fontsize=8,
                    zorder=zorder + 0.7)
        ax.set_yticks(range(n - 1, -1, -1), [f"{m} (n={data[m].size})" for m in data])
        ax.set_xlim(grid[0], grid[-1])
        ax.set_ylim(-0.2, n - 1 + overlap + 0.35)
        ax.set_xlabel("reward")
        ax.set_title(title)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="y", length=0)
        return _save(fig, path)


# --------------------------------------------------------------------------- win rates

def pair_order(comparison: str, summary: Mapping) -> tuple[str, str]:
    """The two models of a summary in the order the comparison name gives (``"sft vs base"`` -> sft, base);
    sorted when the name does not name exactly those two models."""
    models = list(summary["models"])
    parts = [p.strip() for p in re.split(r"\s+vs\.?\s+", comparison)]
    if len(parts) == 2 and parts[0] != parts[1] and set(parts) == set(models):
        return parts[0], parts[1]
    return tuple(sorted(models))  # type: ignore[return-value]


def winrate_segments(comparison: str, summary: Mapping) -> list[dict]:
    """The seven segments of one comparison's stacked bar, left to right, as fractions of all items.

    Rows ``{comparison, outcome, strength, side, segment, rank, fraction}``: the first model's wins split
    by strength (Significantly, Better, Slightly), the ties (``outcome="tie"``, ``strength="Unsure"``),
    then the second model's wins (Slightly, Better, Significantly). A model's wins (``wins / n_items``)
    are split in proportion to the strengths of the votes that agree with those wins
    (``summary["strength"][model]``). The fractions sum to 1. Each row also carries the numbers its bar's
    label shows: ``n_items`` and the outcome model's ``win_rate``, ``win_rate_decisive``, ``ci95_low``,
    ``ci95_high``, ``p_value`` (a tie row: the tie rate as ``win_rate``, the others None).
    """
    first, second = pair_order(comparison, summary)
    n_items = int(summary["n_items"])
    if n_items <= 0:
        raise ValueError(f"{comparison}: n_items must be positive")

    def split(model: str) -> dict:
        wins = int(summary["models"][model]["wins"])
        counts = {s: int(summary.get("strength", {}).get(model, {}).get(s, 0)) for s in DECISIVE_STRENGTHS}
        total = sum(counts.values())
        if wins and not total:
            raise ValueError(f"{comparison}: {model} has {wins} wins but no strength votes")
        return {s: (wins / n_items) * (counts[s] / total) if total else 0.0 for s in DECISIVE_STRENGTHS}

    a, b = split(first), split(second)
    ties = int(summary["ties"]["count"]) / n_items
    rows = [(first, s, "first", a[s]) for s in DECISIVE_STRENGTHS]
    rows.append((TIE, UNSURE, "tie", ties))
    rows += [(second, s, "second", b[s]) for s in reversed(DECISIVE_STRENGTHS)]
    numbers = {m: {k: summary["models"][m].get(k) for k in LABEL_NUMBERS} for m in (first, second)}
    numbers[TIE] = dict.fromkeys(LABEL_NUMBERS, None) | {"win_rate": summary["ties"].get("rate")}
    return [{"comparison": comparison, "outcome": o, "strength": s, "side": side,
             "segment": "tie (Unsure)" if side == "tie" else f"{side} model: {s}",
             "rank": r, "fraction": round(f, 6), "n_items": n_items, **numbers[o]}
            for r, (o, s, side, f) in enumerate(rows)]


def _segment_color(row: Mapping) -> str:
    if row["side"] == "tie":
        return TIE_COLOR
    return (FIRST_COLORS if row["side"] == "first" else SECOND_COLORS)[row["strength"]]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def winrate_bars(summaries: Mapping[str, Mapping], path, title: str = "Win rates by preference strength") -> Path:
    """One horizontal stacked bar per comparison (``{"sft vs base": summarize_pair(...)}``), first on top:
    :func:`winrate_bars_from_rows` of the summaries' :func:`winrate_segments`."""
    return winrate_bars_from_rows([seg for name, s in summaries.items() for seg in winrate_segments(name, s)],
                                  path, title)


def winrate_bars_from_rows(rows: Iterable[Mapping], path, title: str = "Win rates by preference strength") -> Path:
    """One horizontal stacked bar per comparison of ``rows`` (:func:`winrate_segments` rows, as in
    ``winrates.csv``), in order of first appearance, first on top.

    Left to right: the first model's wins (Significantly better, Better, Slightly better), ties
    (Unsure), the second model's wins (Slightly, Better, Significantly better), as fractions of all
    items. Each bar is labelled with both win rates, the tie rate, the first model's decisive win rate
    with its Wilson 95% interval and binomial p, and n.
    """
    bars: dict[str, list[Mapping]] = {}
    for row in rows:
        bars.setdefault(row["comparison"], []).append(row)
    if not bars:
        return _no_data_figure(path, title, "no comparisons yet")
    names = list(bars)
    with _style():
        from matplotlib.patches import Patch
        from matplotlib.ticker import PercentFormatter

        fig = _figure(8.0, 1.9 + 0.95 * len(names))
        ax = fig.add_subplot()
        for i, name in enumerate(names):
            segments = sorted(bars[name], key=lambda r: r["rank"])
            y = len(names) - 1 - i
            left = 0.0
            for row in segments:
                w = row["fraction"]
                if w <= 0:
                    continue
                ax.barh(y, w, left=left, height=0.5, color=_segment_color(row), edgecolor="white", lw=0.6)
                if w >= 0.06:
                    dark = row["side"] != "tie" and row["strength"] in (SIGNIFICANTLY, BETTER)
                    ax.text(left + w / 2, y, f"{100 * w:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
                left += w
            side = {r["side"]: r for r in segments}
            m1, tie, m2 = side["first"], side["tie"], side["second"]
            first, second = m1["outcome"], m2["outcome"]
            p = m1.get("p_value")
            label = (f"{first} {_pct(m1.get('win_rate'))} | tie {_pct(tie.get('win_rate'))} | "
                     f"{second} {_pct(m2.get('win_rate'))}    decisive {first} {_pct(m1.get('win_rate_decisive'))} "
                     f"[{_pct(m1.get('ci95_low'))}, {_pct(m1.get('ci95_high'))}], "
                     f"p={'n/a' if p is None else f'{p:.3g}'}, n={m1['n_items']}")
            ax.text(0.0, y + 0.3, label, ha="left", va="bottom", fontsize=8)
        ax.set_yticks(range(len(names) - 1, -1, -1), names)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.6, len(names) - 0.1)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_xlabel("share of items (left: first model wins, right: second model wins)")
        ax.set_title(title)
        handles = ([Patch(color=FIRST_COLORS[s], label=f"first: {s}") for s in DECISIVE_STRENGTHS]
                   + [Patch(color=TIE_COLOR, label="tie (Unsure)")]
                   + [Patch(color=SECOND_COLORS[s], label=f"second: {s}") for s in reversed(DECISIVE_STRENGTHS)])
        fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=7, frameon=False)
        for side_name in ("top", "right"):
            ax.spines[side_name].set_visible(False)
        return _save(fig, path)


# --------------------------------------------------------------------------- best-of-n

def _curve_points(curve: Iterable[Mapping]) -> list[tuple[int, float]]:
    pts = []
    for i, p in enumerate(curve):
        try:
            n, r = int(p["n"]), float(p["mean_reward"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"best-of-n point {i}: needs integer 'n' and numeric 'mean_reward', got {p!r}") from None
        if n < 1 or not math.isfinite(r):
            raise ValueError(f"best-of-n point {i}: needs n >= 1 and a finite mean_reward, got {p!r}")
        pts.append((n, r))
    return sorted(pts)


def best_of_n_curve(curve: Iterable[Mapping], path, title: str = "Best-of-n: mean reward of the chosen answer") -> Path:
    """Mean reward of the best of ``n`` samples against ``n`` (points sorted by n; log2 x axis when n
    spans a factor of 4 or more). ValueError for a point without integer ``n >= 1`` / finite ``mean_reward``."""
    pts = _curve_points(curve)
    if not pts:
        return _no_data_figure(path, title, "no best-of-n results yet")
    ns, rs = [p[0] for p in pts], [p[1] for p in pts]
    with _style():
        fig = _figure(6.0, 4.0)
        ax = fig.add_subplot()
        ax.plot(ns, rs, marker="o", color="#3182bd")
        for n, r in pts:
            ax.annotate(f"{r:.3f}", (n, r), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        if max(ns) / min(ns) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(ns)), [str(n) for n in sorted(set(ns))])
        ax.minorticks_off()
        ax.set_xlabel("n (samples per question)")
        ax.set_ylabel("mean reward")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        return _save(fig, path)


# --------------------------------------------------------------------------- training curves

def read_dvclive_metrics(directory) -> dict[str, list[tuple[float, float]]]:
    """Read a DVCLive folder's step metrics: ``{"train/loss": [(step, value), ...], ...}``.

    DVCLive appends ``<dir>/plots/metrics/<name>.tsv`` (tab-separated, a header ``[timestamp] step
    <basename>``). A missing folder gives ``{}``; rows with a non-numeric value are skipped.
    """
    root = Path(directory) / "plots" / "metrics"
    out: dict[str, list[tuple[float, float]]] = {}
    if not root.is_dir():
        return out
    for f in sorted(root.rglob("*.tsv")):
        name = f.relative_to(root).with_suffix("").as_posix()
        col = f.stem
        points = []
        with open(f, encoding="utf-8", newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh, delimiter="\t")):
                try:
                    step = float(row.get("step", i))
                    value = float(row[col])
                except (KeyError, TypeError, ValueError):
                    continue
                if math.isfinite(step) and math.isfinite(value):
                    points.append((step, value))
        if points:
            out[name] = points
    return out


def training_curves(dirs: Mapping[str, str | Path], path, pattern: str | None = "loss",
                    title: str = "Training curves") -> dict[str, dict[str, list[tuple[float, float]]]]:
    """One panel per training stage (``{"sft": "dvclive/sft", "rm": ...}``), one line per metric whose
    name contains ``pattern`` (all metrics with ``None``), e.g. ``train/loss`` and ``eval/loss``.

    A stage whose folder is missing or holds no matching metric gets a panel saying "no logs"; with no
    stages at all the figure says "no logs". Returns what was plotted: ``{stage: {metric: points}}``.
    """
    plotted = {}
    for stage, d in dirs.items():
        metrics = read_dvclive_metrics(d)
        plotted[stage] = {k: v for k, v in metrics.items() if pattern is None or pattern in k}
    if not plotted:
        _no_data_figure(path, title, "no training stages yet")
        return plotted
    n = len(plotted)
    with _style():
        fig = _figure(min(4.0 * n, 16.0), 3.6)
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, (stage, metrics) in zip(axes, plotted.items()):
            ax.set_title(stage)
            ax.set_xlabel("step")
            if not metrics:
                ax.text(0.5, 0.5, "no logs", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            for name, pts in metrics.items():
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(pts) < 30 else None, label=name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel(pattern if pattern else "value")
        fig.suptitle(title)
        _save(fig, path)
    return plotted


# --------------------------------------------------------------------------- DVC plot data

def _csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = _stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for v in row])
    return buf.getvalue()


def write_csv(path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A CSV file for ``dvc plots`` (``\n`` line ends, floats as ``repr``, None as empty), atomically."""
    write_text(Path(path), _csv_text(header, rows))
    return Path(path)


REWARDS_CSV, WINRATES_CSV, BEST_OF_N_CSV = "rewards.csv", "winrates.csv", "best_of_n.csv"
WINRATES_COLUMNS = ("comparison", "outcome", "strength", "fraction", "side", "segment", "rank", "n_items",
                    *LABEL_NUMBERS)


def write_plot_data(out_dir, *, rewards: Mapping | None = None, winrates: Mapping[str, Mapping] | None = None,
                    best_of_n: Iterable[Mapping] | None = None) -> dict[str, Path]:
    """Write the CSV files that ``dvc plots show/diff`` renders; a section passed as ``None`` is skipped.

    * ``rewards.csv`` — ``model, question_id, reward``; ``rewards[model]`` is ``{question_id: reward}``
      (or a list: the question id is then the position, ``0, 1, ...``). One row per model and question.
    * ``winrates.csv`` — ``comparison, outcome, strength, fraction, side, segment, rank, n_items, win_rate,
      win_rate_decisive, ci95_low, ci95_high, p_value``: seven rows per comparison (:func:`winrate_segments`),
      the fractions of one comparison summing to 1, each row with its outcome model's numbers.
    * ``best_of_n.csv`` — ``n, mean_reward``, sorted by n.

    Returns ``{"rewards" | "winrates" | "best_of_n": path}`` for the files written (atomically). The report's
    PNGs are drawn from these same files (:func:`figures_from_data`).
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if rewards is not None:
        rows = []
        for model, scores in rewards.items():
            items = scores.items() if isinstance(scores, Mapping) else enumerate(scores)
            for qid, r in items:
                r = float(r)
                if not math.isfinite(r):
                    raise ValueError(f"rewards of {model!r}, question {qid!r}: not a finite number")
                rows.append((model, qid, r))
        written["rewards"] = out_dir / REWARDS_CSV
        write_csv(written["rewards"], ("model", "question_id", "reward"), rows)
    if winrates is not None:
        rows = [[seg[c] for c in WINRATES_COLUMNS] for name, s in winrates.items() for seg in winrate_segments(name, s)]
        written["winrates"] = out_dir / WINRATES_CSV
        write_csv(written["winrates"], WINRATES_COLUMNS, rows)
    if best_of_n is not None:
        written["best_of_n"] = out_dir / BEST_OF_N_CSV
        write_csv(written["best_of_n"], ("n", "mean_reward"), _curve_points(best_of_n))
    return written


# --------------------------------------------------------------------------- PNGs from the DVC plot data

def _read_rows(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DataError(path, None, None, "missing: write it with plots.write_plot_data first") from None


def _field(path: Path, line: int, row: Mapping, name: str, kind=float, optional: bool = False):
    """``row[name]`` as ``kind``; None for an empty optional cell; DataError naming file, line and field."""
    value = row.get(name)
    if optional and value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise DataError(path, line, name, f"expected a number, got {value!r}") from None


def read_rewards_csv(path) -> dict[str, dict[str, float]]:
    """``rewards.csv`` back as ``{model: {question_id: reward}}``, models in file order."""
    path = Path(path)
    out: dict[str, dict[str, float]] = {}
    for line, row in enumerate(_read_rows(path), start=2):
        out.setdefault(row["model"], {})[row["question_id"]] = _field(path, line, row, "reward")
    return out


def read_winrates_csv(path) -> list[dict]:
    """``winrates.csv`` back as :func:`winrate_segments` rows (numbers parsed, empty cells None)."""
    path = Path(path)
    rows = []
    for line, row in enumerate(_read_rows(path), start=2):
        rows.append({**row, "fraction": _field(path, line, row, "fraction"),
                     "rank": _field(path, line, row, "rank", int), "n_items": _field(path, line, row, "n_items", int),
                     **{k: _field(path, line, row, k, optional=True) for k in LABEL_NUMBERS}})
    return rows


def read_best_of_n_csv(path) -> list[dict]:
    """``best_of_n.csv`` back as ``[{"n": int, "mean_reward": float}, ...]``."""
    path = Path(path)
    return [{"n": _field(path, line, row, "n", int), "mean_reward": _field(path, line, row, "mean_reward")}
            for line, row in enumerate(_read_rows(path), start=2)]


def figures_from_data(data_dir, out_dir, models: Iterable[str] | None = None) -> dict[str, Path]:
    """The report's PNGs, each drawn from the one data file that ``dvc plots`` renders too
    (:func:`write_plot_data`): ``ridge.png`` from ``rewards.csv``, ``winrates.png`` from ``winrates.csv``,
    ``best_of_n.png`` from ``best_of_n.csv``. ``models`` orders the ridge's rows and keeps a row ("no data")
    for a model without rewards (one has no line in the CSV); models only in the CSV follow. Returns
    ``{"ridge" | "winrates" | "best_of_n": path}``.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    rewards = read_rewards_csv(data_dir / REWARDS_CSV)
    order = list(dict.fromkeys([*(models or []), *rewards]))
    return {
        "ridge": ridge_plot({m: list(rewards.get(m, {}).values()) for m in order}, out_dir / "ridge.png"),
        "winrates": winrate_bars_from_rows(read_winrates_csv(data_dir / WINRATES_CSV), out_dir / "winrates.png"),
        "best_of_n": best_of_n_curve(read_best_of_n_csv(data_dir / BEST_OF_N_CSV), out_dir / "best_of_n.png"),
    }
