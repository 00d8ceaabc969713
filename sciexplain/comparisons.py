"""Un-blind and summarise one pairwise comparison: the key, judge and human annotation files -> metrics.

Shared by the ``winrate`` stage (the compare sheets) and the ``evaluate`` stage (every model vs base).
"""
from __future__ import annotations

from pathlib import Path

from .annotations import KEY_FIELDS, read_annotation_dir
from .io import DataError, read_jsonl
from .stats import TIE, majority_vote, summarize_pair, verdict_side


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


def read_groups(pair: str, ids: list[str], judgments_dir, annotations_dir) -> tuple[dict, dict]:
    """(judges, humans): ``{annotator: {item_id: Annotation}}`` from ``<judgments>/<pair>/`` and ``<annotations>/<pair>/``."""
    groups = {}
    for kind, root in (("judge", judgments_dir), ("human", annotations_dir)):
        folder = Path(root) / pair if root is not None else None
        groups[kind] = read_annotation_dir(folder, ids) if folder is not None and folder.is_dir() else {}
    both = set(groups["judge"]) & set(groups["human"])
    if both:
        raise DataError(Path(annotations_dir) / pair, None, None,
                        f"annotator {sorted(both)[0]!r} also names a judge file: rename the human file")
    return groups["judge"], groups["human"]
