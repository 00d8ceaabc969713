"""Stage winrate: win rates, strengths, agreement and a verdict for every blind comparison.

For each ``<compare>/<pair>/`` sheet: the judges' files in ``<judgments>/<pair>/`` and the human files
in ``<annotations>/<pair>/`` (*.csv or *.jsonl, one per annotator, optional) are checked against the
sheet -- only rows whose ``item_hash`` is the current sheet item's count; stale rows are counted per file
(``stale_rows`` in the pair's metrics) and warned about on stderr, as is every file that is not read --,
un-blinded with the key and summarised by :func:`sciexplain.comparisons.summarize`: the humans
together (never pooled with a judge), each judge on its own with its human agreement from
``metrics/validate.json``, and a headline verdict (humans where any human file exists). The headline
tests of all pairs form one Holm family. Writes one metrics JSON per pair, ``--summary`` (every pair's
verdict and the family) and one long-format CSV (bar, pair, who, model, strength, votes) for the stacked
strength bars: one bar per (pair, model, who); ``who`` is ``humans`` or a judge's name.
"""
import csv
import io
from pathlib import Path

import click

from sciexplain.annotations import check_pair_folders, read_sheet, sheet_hashes
from sciexplain.cli import stage
from sciexplain.comparisons import adjust_family, headline_summary, read_groups, read_key, summarize
from sciexplain.io import DataError, read_json, write_json, write_text
from sciexplain.stats import DECISIVE_STRENGTHS

PLOT_COLUMNS = ("bar", "pair", "who", "model", "strength", "votes")


def strength_rows(pair: str, metrics: dict) -> list[tuple]:
    rows = []
    groups = ([("humans", metrics["humans"])] if metrics["humans"] else []) + list(metrics["judges"].items())
    for who, summary in groups:
        for model, counts in summary["strength"].items():
            rows.extend((f"{pair} {model} ({who})", pair, who, model, s, counts[s]) for s in DECISIVE_STRENGTHS)
    return rows


@click.command()
@click.option("--compare", "compare_dir", default="data/compare", show_default=True, help="<pair>/sheet.jsonl + key.jsonl")
@click.option("--judgments", "judgments_dir", default="data/judgments", show_default=True, help="<pair>/judge-*.jsonl")
@click.option("--annotations", "annotations_dir", default="data/annotations", show_default=True,
              help="<pair>/<annotator>.csv|jsonl written by humans")
@click.option("--metrics", "metrics_pattern", default="metrics/compare_{pair}.json", show_default=True)
@click.option("--plot", "plot_path", default="plots/compare_strengths.csv", show_default=True)
@click.option("--validation", "validation_path", default="metrics/validate.json", show_default=True,
              help="every judge's human agreement (the validate stage); a judge missing there is not validated")
@click.option("--summary", "summary_path", default="metrics/winrate.json", show_default=True,
              help="every pair's headline verdict and the Holm family")
@stage
def main(compare_dir, judgments_dir, annotations_dir, metrics_pattern, plot_path, validation_path, summary_path):
    if "{pair}" not in metrics_pattern:
        raise click.BadParameter("must contain {pair}", param_hint="--metrics")
    sheets = sorted(Path(compare_dir).glob("*/sheet.jsonl"))
    if not sheets:
        raise DataError(compare_dir, None, None, "no <pair>/sheet.jsonl found: run the compare stage first")
    validation = read_json(validation_path) if Path(validation_path).exists() else None
    rows, all_metrics = [], {}
    check_pair_folders(annotations_dir, [s.parent.name for s in sheets])
    for sheet_path in sheets:
        pair = sheet_path.parent.name
        sheet = read_sheet(sheet_path)
        ids = [r["item_id"] for r in sheet]
        key = read_key(sheet_path.parent / "key.jsonl", ids)
        groups = read_groups(pair, sheet_hashes(sheet), judgments_dir, annotations_dir, sheet_path)
        if not any(a for g in (groups.judges, groups.humans) for a in g.values()):
            stale = sum(groups.stale_rows.values())
            raise DataError(Path(annotations_dir) / pair, None, None, f"no annotations for {pair}: add human files here "
                            "or a judge to judge.panel" + (f" ({stale} stale rows do not count)" if stale else ""))
        all_metrics[pair] = summarize(pair, sheet, key, groups.judges, groups.humans, validation)
        all_metrics[pair]["stale_rows"] = groups.stale_rows
    family = adjust_family(all_metrics, "winrate: the headline sign test of every compare pair")
    for pair, metrics in all_metrics.items():
        metrics["multiple_testing"] = family
        write_json(metrics_pattern.format(pair=pair), metrics)
        rows.extend(strength_rows(pair, metrics))
        head = headline_summary(metrics)
        click.echo(f"{pair}: {head['n_items']} items, {len(metrics['human_annotators'])} humans, "
                   f"{len(metrics['judge_annotators'])} judges; headline from {metrics['headline_source']}: "
                   f"{metrics['verdict']['sentence']}")
    write_json(summary_path, {"multiple_testing": family, "validation_found": validation is not None,
                              "pairs": {pair: {"headline_source": m["headline_source"], "verdict": m["verdict"],
                                               "judges": {n: j["verdict"] for n, j in m["judges"].items()},
                                               "agreement": (m["humans"] or {}).get("agreement")}
                                        for pair, m in all_metrics.items()}})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PLOT_COLUMNS)
    writer.writerows(rows)
    write_text(plot_path, buf.getvalue())


if __name__ == "__main__":
    main()
