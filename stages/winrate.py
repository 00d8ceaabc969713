"""Stage winrate@<pair>: win rates, strengths, agreement and a verdict for one blind comparison.

For the ``<compare>/<pair>/`` sheet (``--pair``; without it, every sheet): the judges' files in
``<judgments>/<pair>/`` and the human files in ``<annotations>/<pair>/`` (*.csv or *.jsonl, one per annotator,
optional) are checked against the sheet -- only rows whose ``item_hash`` is the current sheet item's count; stale
rows are counted per file (``stale_rows``) and warned about on stderr, as is every file that is not read --,
un-blinded with the key and summarised by :func:`sciexplain.comparisons.summarize`: the humans together (never
pooled with a judge), each judge on its own with its human agreement from ``metrics/validate.json``, and a
headline verdict (humans where any human file exists). With the sheet's ``meta.json`` (the compare stage's): how
many eval questions each side's own filter dropped (``excluded_dropped_answers``) and what the eval n can detect
(``power_at_eval_n``). Writes one metrics JSON per pair. The verdict here is the pair's own: the ``report`` stage
Holm-adjusts the headline tests of every pair of the study as one family (``metrics/eval_winrates.json``).
"""
from pathlib import Path

import click

from sciexplain.annotations import check_pair_folders
from sciexplain.sheets import read_key, read_sheet, sheet_hashes
from sciexplain.cli import stage
from sciexplain.comparisons import power_at, read_groups, summarize, verdict_sentence
from sciexplain.records import DataError, read_json, write_json


def pair_metrics(sheet_path: Path, judgments_dir, annotations_dir, validation) -> dict:
    """The metrics of the pair whose sheet is ``sheet_path`` (see the module docstring)."""
    pair = sheet_path.parent.name
    sheet = read_sheet(sheet_path)
    key = read_key(sheet_path.parent / "key.jsonl", [r["item_id"] for r in sheet])
    groups = read_groups(pair, sheet_hashes(sheet), judgments_dir, annotations_dir, sheet_path)
    if not any(a for g in (groups.judges, groups.humans) for a in g.values()):
        stale = sum(groups.stale_rows.values())
        raise DataError(Path(annotations_dir) / pair, None, None, f"no annotations for {pair}: add human files here "
                        "or a judge to judge.panel" + (f" ({stale} stale rows do not count)" if stale else ""))
    metrics = summarize(pair, sheet, key, groups.judges, groups.humans, validation)
    meta_path = sheet_path.parent / "meta.json"
    meta = read_json(meta_path) if meta_path.exists() else {}
    metrics["excluded_dropped_answers"] = dict(meta.get("excluded_dropped_answers") or {})
    metrics["stale_rows"] = groups.stale_rows
    metrics["power_at_eval_n"] = power_at(int(meta.get("questions", len(sheet))))
    return metrics


@click.command()
@click.option("--pair", "only", multiple=True, help="the pair(s) to summarise (default: every <compare>/<pair>/ sheet)")
@click.option("--compare", "compare_dir", default="data/compare", show_default=True, help="<pair>/sheet.jsonl + key.jsonl")
@click.option("--judgments", "judgments_dir", default="data/judgments", show_default=True, help="<pair>/judge-*.jsonl")
@click.option("--annotations", "annotations_dir", default="data/annotations", show_default=True,
              help="<pair>/<annotator>.csv|jsonl written by humans")
@click.option("--metrics", "metrics_pattern", default="metrics/compare/{pair}.json", show_default=True)
@click.option("--validation", "validation_path", default="metrics/validate.json", show_default=True,
              help="every judge's human agreement (the validate stage); a judge missing there is not validated")
@stage
def main(only, compare_dir, judgments_dir, annotations_dir, metrics_pattern, validation_path):
    if "{pair}" not in metrics_pattern:
        raise click.BadParameter("must contain {pair}", param_hint="--metrics")
    sheets = ([Path(compare_dir) / pair / "sheet.jsonl" for pair in only] if only
              else sorted(Path(compare_dir).glob("*/sheet.jsonl")))
    missing = [s for s in sheets if not s.exists()]
    if missing:
        raise DataError(missing[0], None, None, "no sheet: run the compare stage of this pair first")
    if not sheets:
        raise DataError(compare_dir, None, None, "no <pair>/sheet.jsonl found: run the compare stage first")
    validation = read_json(validation_path) if Path(validation_path).exists() else None
    check_pair_folders(annotations_dir, [s.parent.name for s in sheets])
    for sheet_path in sheets:
        pair = sheet_path.parent.name
        metrics = pair_metrics(sheet_path, judgments_dir, annotations_dir, validation)
        write_json(metrics_pattern.format(pair=pair), metrics)
        head = metrics["verdict"]
        click.echo(f"{pair}: {metrics['n_sheet_items']} items, {len(metrics['human_annotators'])} humans, "
                   f"{len(metrics['judge_annotators'])} judges; headline from {metrics['headline_source']} "
                   f"(before the family's Holm adjustment): {verdict_sentence(head) if head else 'no votes'}")


if __name__ == "__main__":
    main()
