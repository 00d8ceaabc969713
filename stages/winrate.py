"""Stage winrate: win rates, strengths and agreement of every blind comparison, from judges and humans.

For each ``<compare>/<pair>/`` sheet: the judges' files in ``<judgments>/<pair>/`` and the human files
in ``<annotations>/<pair>/`` (*.csv or *.jsonl, one per annotator, optional) are checked against the
sheet, un-blinded with the key and summarised by :func:`sciexplain.stats.summarize_pair` three ways:
all annotators, humans only, judges only. Writes one metrics JSON per pair and one long-format CSV
(bar, pair, who, model, strength, votes) for the stacked strength bars: one bar per
(pair, model, who), stacked by strength; ``who`` is all / humans / judges.
"""
import csv
import io
from pathlib import Path

import click

from sciexplain.annotations import read_sheet
from sciexplain.cli import stage
from sciexplain.comparisons import read_groups, read_key, summarize
from sciexplain.io import DataError, write_json, write_text
from sciexplain.stats import DECISIVE_STRENGTHS

PLOT_COLUMNS = ("bar", "pair", "who", "model", "strength", "votes")


def strength_rows(pair: str, metrics: dict) -> list[tuple]:
    rows = []
    for who in ("all", "humans", "judges"):
        if metrics[who] is None:
            continue
        for model, counts in metrics[who]["strength"].items():
            rows.extend((f"{pair} {model} ({who})", pair, who, model, s, counts[s]) for s in DECISIVE_STRENGTHS)
    return rows


@click.command()
@click.option("--compare", "compare_dir", default="data/compare", show_default=True, help="<pair>/sheet.jsonl + key.jsonl")
@click.option("--judgments", "judgments_dir", default="data/judgments", show_default=True, help="<pair>/judge-*.jsonl")
@click.option("--annotations", "annotations_dir", default="data/annotations", show_default=True,
              help="<pair>/<annotator>.csv|jsonl written by humans")
@click.option("--metrics", "metrics_pattern", default="metrics/compare_{pair}.json", show_default=True)
@click.option("--plot", "plot_path", default="plots/compare_strengths.csv", show_default=True)
@stage
def main(compare_dir, judgments_dir, annotations_dir, metrics_pattern, plot_path):
    if "{pair}" not in metrics_pattern:
        raise click.BadParameter("must contain {pair}", param_hint="--metrics")
    sheets = sorted(Path(compare_dir).glob("*/sheet.jsonl"))
    if not sheets:
        raise DataError(compare_dir, None, None, "no <pair>/sheet.jsonl found: run the compare stage first")
    rows = []
    for sheet_path in sheets:
        pair = sheet_path.parent.name
        sheet = read_sheet(sheet_path)
        ids = [r["item_id"] for r in sheet]
        key = read_key(sheet_path.parent / "key.jsonl", ids)
        judges, humans = read_groups(pair, ids, judgments_dir, annotations_dir)
        if not any(a for g in (judges, humans) for a in g.values()):
            raise DataError(Path(annotations_dir) / pair, None, None,
                            f"no annotations for {pair}: add human files here or a judge to judge.panel")
        metrics = summarize(pair, sheet, key, judges, humans)
        write_json(metrics_pattern.format(pair=pair), metrics)
        rows.extend(strength_rows(pair, metrics))
        rates = ", ".join(f"{m} {r:.0%}" for m, r in metrics["win_rate"].items())
        click.echo(f"{pair}: {metrics['all']['n_items']} items, {len(humans)} humans + "
                   f"{len(judges)} judges; win rate {rates}, ties {metrics['all']['ties']['count']}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PLOT_COLUMNS)
    writer.writerows(rows)
    write_text(plot_path, buf.getvalue())


if __name__ == "__main__":
    main()
