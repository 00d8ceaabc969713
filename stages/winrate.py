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

from sciexplain.annotations import KEY_FIELDS, read_annotation_dir, read_sheet
from sciexplain.cli import stage
from sciexplain.io import DataError, read_jsonl, write_json, write_text
from sciexplain.stats import DECISIVE_STRENGTHS, TIE, majority_vote, summarize_pair, verdict_side

PLOT_COLUMNS = ("bar", "pair", "who", "model", "strength", "votes")


def read_key(path: Path, sheet_ids: list[str]) -> dict[str, dict]:
    """``{item_id: {a_model, b_model}}``; the key must cover exactly the sheet's items."""
    key = {}
    for n, rec in enumerate(read_jsonl(path, required=KEY_FIELDS), 1):
        if rec["item_id"] in key:
            raise DataError(path, f"record {n}", "item_id", f"duplicate item id {rec['item_id']!r}")
        key[rec["item_id"]] = {"a_model": rec["a_model"], "b_model": rec["b_model"]}
    missing, extra = set(sheet_ids) - set(key), set(key) - set(sheet_ids)
    if missing or extra:
        which = f"no entry for sheet item {sorted(missing)[0]!r}" if missing else f"item {sorted(extra)[0]!r} is not in the sheet"
        raise DataError(path, None, "item_id", f"key and sheet differ: {which}")
    return key


def annotator_summary(ratings: dict, key: dict, models: tuple[str, str], kind: str) -> dict:
    """One annotator on their own: n rated, ties, wins and win rate per model."""
    wins = {m: 0 for m in models}
    ties = 0
    for item, ann in ratings.items():
        side = verdict_side((ann.choice or None, ann.strength), f"item {item!r}")
        if side == TIE:
            ties += 1
        else:
            wins[key[item]["a_model" if side == "A" else "b_model"]] += 1
    n = len(ratings)
    return {"kind": kind, "n": n, "ties": ties, "wins": wins,
            "win_rate": {m: round(w / n, 4) if n else None for m, w in wins.items()}}


def agreement_with_humans(judge: dict, humans: dict[str, dict], key: dict) -> dict:
    """Share of items where a judge's label equals the humans' majority (items with a decisive majority)."""
    hits = n = 0
    for item, ann in judge.items():
        votes = [(h[item].choice or None, h[item].strength) for h in humans.values() if item in h]
        if not votes:
            continue
        major = majority_vote(votes)
        if major == TIE:
            continue
        n += 1
        hits += verdict_side((ann.choice or None, ann.strength)) == major  # A/B order is the same for both
    return {"agreement": round(hits / n, 4) if n else None, "n": n}


def summarize(pair: str, sheet: list[dict], key: dict, judges: dict, humans: dict) -> dict:
    """The metrics of one pair (see the module docstring)."""
    key_models = sorted({key[i][f] for i in key for f in ("a_model", "b_model")})
    models = tuple(pair.split("_vs_", 1)) if "_vs_" in pair else tuple(key_models)
    if sorted(models) != key_models:
        raise DataError(f"{pair}/key.jsonl", None, "a_model", f"the key names {key_models}, the pair {list(models)}")
    lengths = {r["item_id"]: {"A": len(r["answer_a"]), "B": len(r["answer_b"])} for r in sheet}
    verdicts = lambda group: {name: {i: (a.choice or None, a.strength) for i, a in anns.items()}  # noqa: E731
                              for name, anns in group.items() if anns}
    sections = {}
    for who, group in (("all", {**judges, **humans}), ("humans", humans), ("judges", judges)):
        v = verdicts(group)
        sections[who] = summarize_pair(v, key, lengths) if v else None
    headline = sections["all"] or {}
    return {
        "pair": pair,
        "n_sheet_items": len(sheet),
        "human_annotators": sorted(humans),
        "judge_annotators": sorted(judges),
        "win_rate": {m: headline["models"][m]["win_rate"] for m in models} if headline else None,
        "annotators": {**{n: annotator_summary(a, key, models, "judge") for n, a in judges.items()},
                       **{n: annotator_summary(a, key, models, "human") for n, a in humans.items()}},
        "judge_vs_humans": {n: agreement_with_humans(a, humans, key) for n, a in judges.items()} if humans else None,
        **sections,
    }


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
        groups = {}
        for kind, root in (("judge", Path(judgments_dir)), ("human", Path(annotations_dir))):
            folder = root / pair
            groups[kind] = read_annotation_dir(folder, ids) if folder.is_dir() else {}
        both = set(groups["judge"]) & set(groups["human"])
        if both:
            raise DataError(Path(annotations_dir) / pair, None, None,
                            f"annotator {sorted(both)[0]!r} also names a judge file: rename the human file")
        if not any(a for g in groups.values() for a in g.values()):
            raise DataError(Path(annotations_dir) / pair, None, None,
                            f"no annotations for {pair}: add human files here or a judge to judge.panel")
        judges, humans = groups["judge"], groups["human"]
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
