"""Stage report: the study's tables, plots and report from what the other stages wrote -- no model is loaded, so
it reruns in seconds when only the presentation changes.

Reads the reward model's scores of every model of ``evaluate.models`` (``data/eval_scores/<model>.json``, the
``score_eval`` stages) and every comparison of ``compare.pairs`` (``metrics/compare/<pair>.json``, the ``winrate``
stages). Writes reward statistics (``metrics/eval_rewards.json``: mean, median, bootstrap CI, Wilcoxon vs base,
Holm-adjusted across models), every comparison with the headline sign tests Holm-adjusted as one family
(``metrics/eval_winrates.json``), the strength bars' data (``plots/compare_strengths.csv``), each figure's DVC plot
data once (``plots/eval/data/*.csv``), the report's PNGs drawn from those same files, and the report, which opens
with warnings and verdicts. Answers a stage's own filter dropped are counted there.
"""
from pathlib import Path

import click

from sciexplain.cli import params_option, read_params, stage

@click.command()
@click.option("--scores", "scores_dir", default="data/eval_scores", show_default=True, help="<model>.json of the score_eval stages")
@click.option("--comparisons", "comparisons_dir", default="metrics/compare", show_default=True,
              help="<pair>.json of the winrate stages")
@click.option("--prepared", default="data/prepared/eval.jsonl", show_default=True)
@click.option("--generations", default="data/generations", show_default=True, help="the answers shown side by side")
@click.option("--annotations", default="data/annotations", show_default=True, help="checked for misplaced files")
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--plots", "plots_dir", default="plots/eval", show_default=True)
@click.option("--strengths", "strengths_path", default="plots/compare_strengths.csv", show_default=True)
@click.option("--report", "report_dir", default="reports", show_default=True)
@params_option
@stage
def main(scores_dir, comparisons_dir, prepared, generations, annotations, metrics_dir, plots_dir, strengths_path,
         report_dir, params_path):
    from sciexplain.comparisons import verdict_sentence
    from sciexplain.study_report import make_report

    p = read_params(params_path, "report")
    reward_stats, winrates = make_report(
        p, scores_dir=scores_dir, comparisons_dir=comparisons_dir, prepared=prepared, generations=generations,
        annotations=annotations, metrics_dir=metrics_dir, plots_dir=plots_dir, strengths_path=strengths_path,
        report_dir=report_dir)
    means = ", ".join(f"{m} {s['mean']:.3f}" for m, s in reward_stats.items() if s["mean"] is not None)
    for pair, m in winrates.items():
        click.echo(f"{pair}: {verdict_sentence(m['verdict']) if m['verdict'] else 'no votes'}")
    click.echo(f"report: mean reward {means}; report -> {Path(report_dir) / 'report.md'}")


if __name__ == "__main__":
    main()
