"""What the report stage makes of the other stages' outputs: reward statistics, every comparison's win rates as one
Holm family, the strength bars' data, each figure's plot data and PNGs, and the report's context.

:func:`make_report` is the whole stage's work (``stages/report.py`` is its command line); nothing here loads a model.
The teacher's name comes from the teacher stage's own metrics (``metrics/teacher.json``: ``model``), so the report
and the metrics never disagree about what answered.
"""
from __future__ import annotations

from pathlib import Path

from .records import DataError, first_answers, read_json, read_jsonl, write_json
from .stats import DECISIVE_STRENGTHS

PLOT_COLUMNS = ("bar", "pair", "who", "model", "strength", "votes")
FAMILY = "the headline sign test of every compare.pairs comparison"


def strength_rows(pair: str, metrics: dict) -> list[tuple]:
    """Long-format rows (bar, pair, who, model, strength, votes) for the stacked strength bars of one pair."""
    rows = []
    groups = ([("humans", metrics["humans"])] if metrics["humans"] else []) + list(metrics["judges"].items())
    for who, summary in groups:
        for model, counts in summary["strength"].items():
            rows.extend((f"{pair} {model} ({who})", pair, who, model, s, counts[s]) for s in DECISIVE_STRENGTHS)
    return rows


def make_report(p, *, rewards_dir, comparisons_dir, prepared, generations, annotations, metrics_dir, plots_dir,
                strengths_path, report_dir) -> tuple[dict, dict]:
    """Write every output of the report stage from the typed params ``p``; returns ``(reward statistics per model,
    win-rate metrics per pair)``."""
    from . import plots
    from .annotations import check_pair_folders
    from .comparisons import adjust_family, headline_summary, power_at
    from .evaluation import opening, reward_model_warning, reward_statistics, teacher_warning
    from .report import render_report

    metrics_dir = Path(metrics_dir)

    def optional_json(path):
        return read_json(path) if Path(path).exists() else None

    def need(path, stage_name):
        if not Path(path).exists():
            raise DataError(path, None, None, f"missing: run the {stage_name} stage first")
        return read_json(path)

    models = list(p.evaluate.models)
    pairs = list(p.compare.pairs)
    questions = read_jsonl(prepared)
    limit = p.evaluate.max_questions
    questions = questions[:limit] if limit else questions
    ids = [q["id"] for q in questions]

    # reward statistics, over kept answers only
    scored = {m: need(Path(rewards_dir) / f"{m}.json", f"rewards@{m}") for m in models}
    rewards = {m: scored[m]["rewards"] for m in models}
    dropped = {m: scored[m]["dropped"] for m in models}
    reward_stats = reward_statistics(rewards, "base", n_resamples=p.evaluate.bootstrap_resamples)
    for m in models:
        reward_stats[m]["dropped_by_filter"] = dropped[m]["n"]
    write_json(metrics_dir / "eval_rewards.json", reward_stats)

    # win rates: every pair's own metrics, the headline tests Holm-adjusted as one family
    check_pair_folders(annotations, pairs)
    winrates = {pair: need(Path(comparisons_dir) / f"{pair}.json", f"winrate@{pair}") for pair in pairs}
    family = adjust_family(winrates, f"report: {FAMILY}")
    power = power_at(len(ids))
    for m in winrates.values():
        m["multiple_testing"] = family
    write_json(metrics_dir / "eval_winrates.json", winrates)
    headlines = {k.replace("_vs_", " vs "): headline_summary(v) for k, v in winrates.items() if headline_summary(v)}
    plots.write_csv(strengths_path, PLOT_COLUMNS,
                    [row for pair, m in winrates.items() for row in strength_rows(pair, m)])

    # plots: each figure's data written once (dvc.yaml plots it), the report's PNGs drawn from those files
    pdir = Path(plots_dir)
    best_of_n = (optional_json(metrics_dir / "select.json") or {}).get("best_of_n", [])
    plots.write_plot_data(pdir / "data", rewards=rewards, winrates=headlines, best_of_n=best_of_n)
    plots.figures_from_data(pdir / "data", pdir, models=models)
    plots.training_curves({s: metrics_dir / s for s in ("sft", "reward_model", "rs", "dpo")}, pdir / "training.png")

    # report
    answers = {}
    for m in models:
        recs = first_answers(Path(generations) / m / "eval.jsonl")
        answers[m] = {i: recs[i] for i in ids if i in recs and recs[i].get("keep") is not False}
    rdir = Path(report_dir)
    rel = lambda name: str(Path("..") / pdir / name)  # noqa: E731
    rm_metrics = optional_json(metrics_dir / "reward_model.json") or {}
    validation_path = metrics_dir / "validate.json"
    best = max((m for m in models if m not in ("base", "teacher") and reward_stats[m]["mean"] is not None),
               key=lambda m: reward_stats[m]["mean"], default=None)
    teacher = optional_json(metrics_dir / "teacher.json") or {}
    warnings = [teacher_warning(teacher or None), reward_model_warning(rm_metrics)]
    if not validation_path.exists():
        warnings.append(f"Warning: no judge validation ({validation_path} missing): every judged verdict reads "
                        "'judge not validated'.")
    context = {
        "opening": opening(winrates, family, power, dropped, warnings),
        "judges_beside": {k.replace("_vs_", " vs "): v for k, v in winrates.items()},
        "params": p.as_dict("base_model", "prepare", "teacher", "sft", "reward_model", "sample", "select", "rs", "dpo",
                            "compare", "evaluate"),
        "sources": {"base": (optional_json(metrics_dir / "base_model.json") or {}).get("source"),
                    "teacher": teacher.get("model"),  # the teacher stage's own label of what answered
                    **{m: f"models/{m} (LoRA adapter)" for m in models if m not in ("base", "teacher")}},
        "reward_stats": reward_stats,
        "winrates": headlines,
        "reward_model": {**rm_metrics.get("heldout", {}), "baselines": rm_metrics.get("baselines", {}),
                         "agreement with annotators' majority": (rm_metrics.get("majority_agreement") or {}).get("all", {}).get("accuracy"),
                         "train pairs": rm_metrics.get("pairs", {}).get("train")},
        "best_model": best,
        "examples": [{"id": i, "question": questions[ids.index(i)]["question"],
                      "answers": {m: answers[m][i]["answer"] if i in answers[m]
                                  else f"(dropped by its own filter: {dropped[m]['reasons']})" for m in models}}
                     for i in ids[: p.evaluate.examples]],
        "plots": {"Reward per model": rel("ridge.png"), "Win rates": rel("winrates.png"),
                  "Best-of-n": rel("best_of_n.png"), "Training curves": rel("training.png")},
    }
    render_report(context, rdir / "report.md", rdir / "report.html")
    return reward_stats, winrates
