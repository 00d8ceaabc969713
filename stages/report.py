"""Stage report: the study's tables, plots and report from what the other stages wrote -- no model is loaded, so
it reruns in seconds when only the presentation changes.

Reads the reward model's scores of every model of ``evaluate.models`` (``data/rewards/<model>.json``, the
``rewards`` stages) and every comparison of ``compare.pairs`` (``metrics/compare/<pair>.json``, the ``winrate``
stages). Writes reward statistics (``metrics/eval_rewards.json``: mean, median, bootstrap CI, Wilcoxon vs base,
Holm-adjusted across models), every comparison with the headline sign tests Holm-adjusted as one family
(``metrics/eval_winrates.json``), the strength bars' data (``plots/compare_strengths.csv``), each figure's DVC plot
data once (``plots/eval/data/*.csv``), the report's PNGs drawn from those same files, and the report, which opens
with warnings and verdicts. Answers a stage's own filter dropped are counted there.
"""
from pathlib import Path

import click

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.records import DataError, first_answers, read_json, read_jsonl, write_json
from sciexplain.stats import DECISIVE_STRENGTHS

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


@click.command()
@click.option("--rewards", "rewards_dir", default="data/rewards", show_default=True, help="<model>.json of the rewards stages")
@click.option("--comparisons", "comparisons_dir", default="metrics/compare", show_default=True,
              help="<pair>.json of the winrate stages")
@click.option("--prepared", default="data/prepared/eval.jsonl", show_default=True)
@click.option("--generations", default="data/generations", show_default=True, help="the answers shown side by side")
@click.option("--annotations", default="data/annotations", show_default=True, help="checked for misplaced files")
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--plots", "plots_dir", default="plots/eval", show_default=True)
@click.option("--strengths", "strengths_path", default="plots/compare_strengths.csv", show_default=True)
@click.option("--report", "report_dir", default="reports", show_default=True)
@click.option("--base", "base_dir", default="models/base", show_default=True, help="named as the local teacher's source")
@params_option
@stage
def main(rewards_dir, comparisons_dir, prepared, generations, annotations, metrics_dir, plots_dir, strengths_path,
         report_dir, base_dir, params_path):
    from sciexplain import plots
    from sciexplain.annotations import check_pair_folders
    from sciexplain.comparisons import adjust_family, headline_summary, power_at
    from sciexplain.evaluation import opening, reward_model_warning, reward_statistics, teacher_warning
    from sciexplain.report import render_report

    metrics_dir = Path(metrics_dir)

    def optional_json(path):
        return read_json(path) if Path(path).exists() else None

    def need(path, stage_name):
        if not Path(path).exists():
            raise DataError(path, None, None, f"missing: run the {stage_name} stage first")
        return read_json(path)

    p = read_params(params_path)
    models = list(get(p, "evaluate.models"))
    pairs = list(get(p, "compare.pairs"))
    questions = read_jsonl(prepared)
    limit = get(p, "evaluate.max_questions")
    questions = questions[:limit] if limit else questions
    ids = [q["id"] for q in questions]

    # reward statistics, over kept answers only
    scored = {m: need(Path(rewards_dir) / f"{m}.json", f"rewards@{m}") for m in models}
    rewards = {m: scored[m]["rewards"] for m in models}
    dropped = {m: scored[m]["dropped"] for m in models}
    reward_stats = reward_statistics(rewards, "base", n_resamples=get(p, "evaluate.bootstrap_resamples"))
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
    warnings = [teacher_warning(optional_json(metrics_dir / "teacher.json")), reward_model_warning(rm_metrics)]
    if not validation_path.exists():
        warnings.append(f"Warning: no judge validation ({validation_path} missing): every judged verdict reads "
                        "'judge not validated'.")
    context = {
        "opening": opening(winrates, family, power, dropped, warnings),
        "judges_beside": {k.replace("_vs_", " vs "): v for k, v in winrates.items()},
        "params": {k: p.get(k) for k in ("base_model", "prepare", "teacher", "sft", "reward_model", "sample", "select",
                                         "rs", "dpo", "compare", "evaluate")},
        "sources": {"base": (optional_json(metrics_dir / "base_model.json") or {}).get("source"),
                    "teacher": ("local:" + base_dir) if get(p, "teacher.backend") == "local"
                               else f"{get(p, 'teacher.backend')}:{get(p, 'teacher.model')}",
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
                     for i in ids[: get(p, "evaluate.examples")]],
        "plots": {"Reward per model": rel("ridge.png"), "Win rates": rel("winrates.png"),
                  "Best-of-n": rel("best_of_n.png"), "Training curves": rel("training.png")},
    }
    render_report(context, rdir / "report.md", rdir / "report.html")
    means = ", ".join(f"{m} {s['mean']:.3f}" for m, s in reward_stats.items() if s["mean"] is not None)
    for pair, m in winrates.items():
        click.echo(f"{pair}: {m['verdict']['sentence'] if m['verdict'] else 'no votes'}")
    click.echo(f"report: mean reward {means}; report -> {rdir / 'report.md'}")


if __name__ == "__main__":
    main()
