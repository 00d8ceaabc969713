"""Preference pairs for the reward model: human pairs first (:func:`human_pairs`, the validate stage's
``data/human_pairs/train.jsonl``; human annotation files on comparison sheets, :func:`annotation_pairs`), and
judge-labelled pairs only where a param asks for them (judge-* files on the sheets; the rubric judging the
rm split's answers, :func:`judge_pairs`); dedupe; train/dev split by question.

A pair record::

    {"id": question id (stable_id of the question), "question", "prompt" (the chat-templated question,
     :func:`sciexplain.reward.chat_prompt`, which builders take as ``prompt_fn``),
     "chosen", "rejected" (answer texts), "margin" (0..1: STRENGTH_MARGIN of the strength, or the
     vote-gap margin of a Stack Exchange pair), "strength" (None for vote pairs), "source"
     ("<pair>/<annotator>", "rm/judge-rubric" or "human_pairs/<source>"), "judge" (the judge whose label
     it is, None for a person's), "chosen_model", "rejected_model" (None when unknown), "item_id"}

Margins: the trainer's loss is ``-logsigmoid(r_chosen - r_rejected - margin)``. The study's strengths map to
1, 2/3, 1/3 (Unsure 0); a vote pair's margin (:func:`sciexplain.human_pairs.margin_from_gap`: gap 1 -> 0.25,
3 -> 0.5, 7 -> 0.75, >= 15 -> 1) is on the same 0..1 scale, so both kinds mix in one training set. A human pair
without strength or margin (a plain preference) gets margin 0: the chosen answer only has to score higher.

The reward model sees ``prompt + answer + end-of-turn`` (see :mod:`sciexplain.reward`).
"Unsure" verdicts are dropped (``unsure="drop"``) or kept with margin 0 (``unsure="keep"``); a kept
Unsure pair has no direction, so its chosen/rejected order is fixed by a hash of the two answers
(arbitrary but deterministic, independent of the A/B position on the sheet).
"""
from __future__ import annotations

import hashlib
import sys
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .annotations import HUMAN, JUDGE, read_annotation_dir
from .sheets import read_key, read_sheet, sheet_hashes
from .records import DataError, iter_answers, stable_id
from .rubric import RubricJudge
from .splits import hash_key, hash_order
from .stats import STRENGTH_MARGIN, UNSURE

ANNOTATOR_KINDS = ("all", "humans", "judges")
RUBRIC_SOURCE = "rm/judge-rubric"  # rm-split pairs labelled by the rubric judge
RUBRIC_JUDGE = "rubric"


# --------------------------------------------------------------------------- building pairs

def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_pair(question: str, prompt: str, answer_a: str, answer_b: str, choice: str | None, strength: str,
              source: str, unsure: str = "drop", model_a: str | None = None, model_b: str | None = None,
              item_id: str | None = None, judge: str | None = None) -> dict | None:
    """One pair from a verdict on (A, B); None when the verdict is Unsure and ``unsure == "drop"``.
    ``judge``: the judge that gave the verdict (None: a person)."""
    if strength == UNSURE or choice not in ("A", "B"):
        if unsure == "drop":
            return None
        # no direction: order by answer hash (then by position for identical answers), margin 0
        first_a = (_text_hash(answer_a), 0) <= (_text_hash(answer_b), 1)
        choice, strength = ("A" if first_a else "B"), UNSURE
    a_wins = choice == "A"
    return {
        "id": stable_id(question),
        "question": question,
        "prompt": prompt,
        "chosen": answer_a if a_wins else answer_b,
        "rejected": answer_b if a_wins else answer_a,
        "margin": float(STRENGTH_MARGIN[strength]),
        "strength": strength,
        "source": source,
        "judge": judge,
        "chosen_model": model_a if a_wins else model_b,
        "rejected_model": model_b if a_wins else model_a,
        "item_id": item_id,
    }


def judge_of(pair: Mapping) -> str | None:
    """The judge whose label a pair carries (None: a person's)."""
    return pair.get("judge")


def human_pairs(records: Iterable[Mapping], prompt_fn: Callable[[str], str]) -> tuple[list[dict], dict]:
    """Reward-model pairs from human pair records (:mod:`sciexplain.human_pairs`, e.g. the validate stage's
    ``data/human_pairs/train.jsonl``): the prompt added, ``source`` = ``human_pairs/<its source>``, no judge.

    A record's margin (0..1 from the vote gap, or from its strength) is kept; a missing margin becomes 0 (a
    plain preference), counted. Returns (pairs, counts ``{"pairs", "null_margin"}``)."""
    out, null = [], 0
    for n, r in enumerate(records, 1):
        for f in ("question", "chosen", "rejected"):
            if not isinstance(r.get(f), str) or not r[f].strip():
                raise DataError("human pairs", f"record {n}", f, "missing or empty")
        m = r.get("margin")
        if m is None and r.get("strength") in STRENGTH_MARGIN:
            m = STRENGTH_MARGIN[r["strength"]]
        if m is None:
            null += 1
            m = 0.0
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m >= 0:
            raise DataError("human pairs", f"record {n}", "margin", f"must be a number >= 0, got {m!r}")
        question = r["question"]
        out.append({
            "id": r.get("id") or stable_id(question), "question": question, "prompt": prompt_fn(question),
            "chosen": r["chosen"], "rejected": r["rejected"], "margin": float(m), "strength": r.get("strength"),
            "source": f"human_pairs/{r.get('source') or 'file'}", "judge": None,
            "chosen_model": None, "rejected_model": None, "item_id": r.get("pair_id"),
        })
    return out, {"pairs": len(out), "null_margin": null}


def read_pair_annotations(pair: str, compare_root: str | Path, annotation_roots: Iterable[str | Path]) -> dict:
    """Sheet, key and every annotator's verdicts for one compared pair.

    Returns ``{"sheet": {item_id: sheet record} (sheet order), "key": {...}, "annotations":
    {annotator: {item_id: Annotation}}, "judges": {annotators that are judges}, "stale_rows": {file: n}}``.
    Only rows bound to the current sheet (same ``item_hash``) are returned; stale rows are counted per file and
    warned about on stderr. A file is a judge's by its rows' ``annotator_type``, never by its name; rows without
    it are human, except in a root given as ``(path, "judge")`` (the judge stage's folder). Annotation folders ``<root>/<pair>`` that do not exist
    are skipped; the same annotator in two roots is an error.
    """
    cdir = Path(compare_root) / pair
    sheet = {r["item_id"]: r for r in read_sheet(cdir / "sheet.jsonl")}
    hashes = sheet_hashes(sheet.values())
    key = read_key(cdir / "key.jsonl", sheet) if (cdir / "key.jsonl").exists() else {}
    annotations: dict = {}
    judges, stale = set(), {}
    for root in annotation_roots:
        root, default = root if isinstance(root, tuple) else (root, HUMAN)
        d = Path(root) / pair
        if not d.is_dir():
            continue
        for name, f in read_annotation_dir(d, hashes, default, cdir / "sheet.jsonl").items():
            if name in annotations:
                raise DataError(d, None, None, f"annotator {name!r} also has a file in another annotation folder")
            annotations[name] = f.annotations
            stale[str(f.path)] = len(f.stale)
            if f.annotator_type == JUDGE:
                judges.add(name)
            if f.stale:
                print(f"warning: {f.path}: {len(f.stale)} rows were made on another version of the sheet and are "
                      "not used", file=sys.stderr, flush=True)
    return {"sheet": sheet, "key": key, "annotations": annotations, "judges": judges, "stale_rows": stale}


def annotation_pairs(pair: str, data: Mapping, prompt_fn: Callable[[str], str], unsure: str = "drop",
                     annotators: str = "all") -> list[dict]:
    """Pairs from one compared pair's annotations (see :func:`read_pair_annotations`): one pair per
    item and annotator, the annotator's preferred answer as ``chosen``. ``annotators``: all, humans
    or judges (``data["judges"]``, by their rows' annotator_type; their pairs name the judge in ``judge``)."""
    if annotators not in ANNOTATOR_KINDS:
        raise DataError(None, None, "annotators", f"must be one of {', '.join(ANNOTATOR_KINDS)}, got {annotators!r}")
    sheet, key = data["sheet"], data["key"]
    out = []
    judges = data.get("judges", set())
    for name in sorted(data["annotations"]):
        if (annotators == "humans" and name in judges) or (annotators == "judges" and name not in judges):
            continue
        anns = data["annotations"][name]
        for item_id, rec in sheet.items():  # sheet order
            ann = anns.get(item_id)
            if ann is None:
                continue
            k = key.get(item_id, {})
            p = make_pair(rec["question"], prompt_fn(rec["question"]), rec["answer_a"], rec["answer_b"], ann.choice,
                          ann.strength, f"{pair}/{name}", unsure, k.get("a_model"), k.get("b_model"), item_id,
                          judge=(name[len("judge-"):] if name.startswith("judge-") else name) if name in judges else None)
            if p is not None:
                out.append(p)
    return out


def read_generations(path: str | Path) -> dict[str, dict]:
    """``{question id: record}`` from a generations JSONL, one record per question (the lowest ``sample``).

    Records the teacher's filters dropped (``keep: false``) and empty answers are skipped: they would make
    trivial "anything beats nothing" pairs (counted as missing by :func:`judge_pairs`)."""
    out: dict[str, dict] = {}
    for _, rec in iter_answers(path, required=("id", "question")):
        if rec.get("keep") is False or not rec["answer"].strip():
            continue
        prev = out.get(rec["id"])
        if prev is None or int(rec.get("sample") or 0) < int(prev.get("sample") or 0):
            out[rec["id"]] = rec
    return out


def judge_pairs(questions: list[dict], generations: Mapping[str, Mapping[str, dict]], judge: RubricJudge,
                prompt_fn: Callable[[str], str], unsure: str = "drop") -> tuple[list[dict], dict]:
    """Pairs on the rm split: for each question, every two models' answers judged by the rubric judge.

    ``questions``: records with ``id`` and ``question`` (the rm split); ``generations``:
    ``{model: {question id: record}}`` (model order = pair order). Returns (pairs, counts) with
    counts ``{"compared", "unsure", "missing"}`` (missing: a model has no answer for the question).
    """
    models = list(generations)
    pairs, counts = [], {"compared": 0, "unsure": 0, "missing": 0}
    for q in questions:
        qid, question = q["id"], q["question"]
        for ma, mb in combinations(models, 2):
            ra, rb = generations[ma].get(qid), generations[mb].get(qid)
            if ra is None or rb is None:
                counts["missing"] += 1
                continue
            counts["compared"] += 1
            choice, strength = judge.judge_pair(question, ra["answer"], rb["answer"])
            if strength == UNSURE:
                counts["unsure"] += 1
            p = make_pair(question, prompt_fn(question), ra["answer"], rb["answer"], choice, strength,
                          RUBRIC_SOURCE, unsure, ma, mb, f"{qid}:{ma}:{mb}", judge=RUBRIC_JUDGE)
            if p is not None:
                pairs.append(p)
    return pairs, counts


# --------------------------------------------------------------------------- dedupe and split

def dedupe_pairs(pairs: Iterable[dict]) -> tuple[list[dict], int]:
    """Keep the first of identical (prompt, chosen, rejected) pairs; returns (pairs, number removed)."""
    pairs = list(pairs)
    seen, out = set(), []
    for p in pairs:
        k = (p["prompt"], p["chosen"], p["rejected"])
        if k in seen:
            continue
        seen.add(k)
        out.append(p)
    return out, len(pairs) - len(out)


def validation_ids(question_ids: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The question ids that go to validation: rank the distinct ids by sha256("reward-val:seed:id") and take the
    first ``round(val_fraction * n)`` (at least 1 when ``val_fraction > 0`` and there are >= 2 questions)."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError("params.yaml", None, "reward_model.val_fraction", f"must be in [0, 1), got {val_fraction!r}")
    # salted: prepare ranks questions by sha256(f"{seed}:{id}") too, and the same ranking would put
    # exactly its first split (eval) into validation
    ids = hash_order(set(question_ids), seed, key=str, salt="reward-val")
    n_val = round(float(val_fraction) * len(ids))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    return set(ids[:n_val])


def split_pairs(pairs: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) by question id, so no question is in both."""
    val_ids = validation_ids((p["id"] for p in pairs), val_fraction, seed)
    return [p for p in pairs if p["id"] not in val_ids], [p for p in pairs if p["id"] in val_ids]


def drop_questions(pairs: Iterable[dict], question_ids: set) -> tuple[list[dict], int]:
    """The pairs whose question is not in ``question_ids`` (e.g. the held-out human test questions), and how
    many were removed."""
    pairs = list(pairs)
    kept = [p for p in pairs if p["id"] not in question_ids]
    return kept, len(pairs) - len(kept)


def cap_pairs(pairs: list[dict], max_pairs: int | None, seed: int) -> tuple[list[dict], int]:
    """At most ``max_pairs`` pairs (None/0 = all): people's pairs before judge-labelled ones, each
    group ranked by sha256(seed, pair); the kept pairs stay in their input order. Returns (kept, n_removed)."""
    if not max_pairs or len(pairs) <= int(max_pairs):
        return list(pairs), 0

    def rank(i: int):
        p = pairs[i]
        h = hash_key(seed, f"{p['prompt']}\0{p['chosen']}\0{p['rejected']}", salt="reward-cap")
        return (judge_of(p) is not None or p["source"] == RUBRIC_SOURCE, h)

    keep = sorted(sorted(range(len(pairs)), key=rank)[: int(max_pairs)])
    return [pairs[i] for i in keep], len(pairs) - len(keep)
