"""Blind A/B sheets: what annotators see, and the key kept apart from it.

* **sheet**: ``{"item_id", "item_hash", "question", "answer_a", "answer_b"}``, optionally ``"finished_a"``,
  ``"finished_b"`` (true when the answer stopped on its own, false when it was cut by the token budget; the judge
  panel uses them, :func:`sciexplain.panel.apply_finished_rule`). ``item_hash`` is :func:`item_hash` of the
  question and the two answers in their A/B order: the one fingerprint of what an annotator saw. :func:`read_sheet`
  recomputes it and refuses a sheet whose stored hash does not match its text.
* **key** (never shown): ``{"item_id", "a_model", "b_model"}``.

:func:`build_sheet` makes both from pairs of answers with a seeded A/B order per item; :func:`write_sheet_csv`
writes the spreadsheet copy people fill in (cells a spreadsheet would evaluate are defused). Annotation files are
:mod:`sciexplain.annotations`'s.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Iterable, Mapping

from .records import DataError, atomic_path, read_jsonl_lines

HASH_FIELD = "item_hash"
SHEET_FIELDS = ("item_id", "question", "answer_a", "answer_b")
SHEET_OPTIONAL = ("finished_a", "finished_b")  # booleans; absent when unknown
KEY_FIELDS = ("item_id", "a_model", "b_model")
PAIR_FIELDS = ("item_id", "question", "answer_1", "answer_2", "model_1", "model_2")
CSV_COLUMNS = SHEET_FIELDS + ("choice", "strength", "comment", HASH_FIELD)

# Cell starts that spreadsheets may evaluate as a formula (CSV injection); see write_sheet_csv.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def item_hash(question: str, answer_a: str, answer_b: str) -> str:
    """What an annotator saw, as 16 characters: the first 80 bits of sha256 of the question and both answers in
    their A/B order, in lower-case base32 (a-z, 2-7: a spreadsheet never reads it as a number, as it would
    ``1234567e89012345``).

    The one function every writer and reader of sheets and annotations uses; exact text (no normalisation),
    so any change to a shown text or to the A/B order gives another hash."""
    payload = json.dumps(["sciexplain-item/1", question, answer_a, answer_b], ensure_ascii=False)
    return base64.b32encode(hashlib.sha256(payload.encode("utf-8")).digest()[:10]).decode("ascii").lower()


def sheet_hashes(sheet: Iterable[Mapping]) -> dict[str, str]:
    """``{item_id: item_hash}`` of sheet records (the hash recomputed from the text when a record has none)."""
    return {it["item_id"]: it.get(HASH_FIELD) or item_hash(it["question"], it["answer_a"], it["answer_b"])
            for it in sheet}


def _ab_swap(seed: int, item_id: str) -> bool:
    """True when answer_2 is shown as A. Depends only on (seed, item_id), stable across runs/Pythons."""
    return random.Random(f"sciexplain-ab:{seed}:{item_id}").random() < 0.5


def build_sheet(pairs: Iterable[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Blind sheet and key from ``{item_id, question, answer_1, answer_2, model_1, model_2}`` records.

    Every sheet item carries its ``item_hash`` (:func:`item_hash` of what is shown, in the shown order).
    Optional ``finished_1`` / ``finished_2`` (booleans: did the answer stop on its own?) become the sheet's
    ``finished_a`` / ``finished_b`` in the shown order; they are left out when either is missing or None.
    The A/B order of an item is drawn from an RNG seeded by ``(seed, item_id)`` only, so adding or
    removing items never reshuffles the others. Output keeps the input order.
    """
    sheet, key, seen = [], [], {}
    for n, pair in enumerate(pairs, 1):
        where = f"pair {n}"
        if not isinstance(pair, dict):
            raise DataError(None, where, None, "a pair must be an object")
        for field in PAIR_FIELDS:
            value = pair.get(field)
            if not isinstance(value, str) or (field != "answer_1" and field != "answer_2" and not value.strip()):
                raise DataError(None, where, field, "missing, empty or not a string")
        item_id = pair["item_id"]
        if item_id in seen:
            raise DataError(None, where, "item_id", f"duplicate item id {item_id!r} (first in pair {seen[item_id]})")
        seen[item_id] = n
        first, second = (2, 1) if _ab_swap(seed, item_id) else (1, 2)
        a, b = pair[f"answer_{first}"], pair[f"answer_{second}"]
        item = {"item_id": item_id, HASH_FIELD: item_hash(pair["question"], a, b), "question": pair["question"],
                "answer_a": a, "answer_b": b}
        flags = (pair.get(f"finished_{first}"), pair.get(f"finished_{second}"))
        if all(f is not None for f in flags):
            for field, value in zip(("finished_1", "finished_2"), (pair.get("finished_1"), pair.get("finished_2"))):
                if not isinstance(value, bool):
                    raise DataError(None, where, field, f"must be true or false, got {value!r}")
            item["finished_a"], item["finished_b"] = flags
        sheet.append(item)
        key.append({"item_id": item_id, "a_model": pair[f"model_{first}"], "b_model": pair[f"model_{second}"]})
    return sheet, key


def read_sheet(path: str | os.PathLike) -> list[dict]:
    """Read a sheet JSONL; checks fields and unique ids, refuses records that carry the key.

    Every returned item has ``item_hash``: the stored one, which must equal :func:`item_hash` of its text (a
    sheet edited after ``compare`` wrote it is an error), or the computed one for a sheet without hashes."""
    path = Path(path)
    records = read_jsonl_lines(path)
    out, seen = [], {}
    for lineno, rec in records:
        for field in SHEET_FIELDS:
            value = rec.get(field)
            if not isinstance(value, str) or (field in ("item_id", "question") and not value.strip()):
                raise DataError(path, lineno, field, "missing, empty or not a string")
        for field in rec:
            if field not in SHEET_FIELDS and ("model" in field.lower()):
                raise DataError(path, lineno, field, "a sheet must not carry the key (model names)")
        item_id = rec["item_id"]
        if item_id in seen:
            raise DataError(path, lineno, "item_id", f"duplicate item id {item_id!r} (first on line {seen[item_id]})")
        seen[item_id] = lineno
        computed = item_hash(rec["question"], rec["answer_a"], rec["answer_b"])
        stored = rec.get(HASH_FIELD)
        if stored is not None and stored != computed:
            raise DataError(path, lineno, HASH_FIELD, f"{stored!r} does not match the question and answers "
                            f"({computed!r}): the sheet was edited after compare wrote it; rerun compare")
        item = {"item_id": item_id, HASH_FIELD: computed, **{f: rec[f] for f in SHEET_FIELDS[1:]}}
        for field in SHEET_OPTIONAL:
            if field in rec and rec[field] is not None:
                if not isinstance(rec[field], bool):
                    raise DataError(path, lineno, field, f"must be true or false, got {rec[field]!r}")
                item[field] = rec[field]
        out.append(item)
    return out


def read_key(path: str | os.PathLike, sheet_ids: Iterable[str]) -> dict[str, dict]:
    """``{item_id: {a_model, b_model}}`` from a compare stage's key.jsonl; the key must cover exactly the sheet's
    items (``sheet_ids``), once each."""
    path = Path(path)
    sheet_ids = set(sheet_ids)
    key = {}
    for lineno, rec in read_jsonl_lines(path, required=KEY_FIELDS):
        if rec["item_id"] in key:
            raise DataError(path, lineno, "item_id", f"duplicate item id {rec['item_id']!r}")
        key[rec["item_id"]] = {"a_model": rec["a_model"], "b_model": rec["b_model"]}
    missing, extra = sheet_ids - set(key), set(key) - sheet_ids
    if missing or extra:
        which = f"no entry for sheet item {sorted(missing)[0]!r}" if missing else f"item {sorted(extra)[0]!r} is not in the sheet"
        raise DataError(path, None, "item_id", f"key and sheet differ: {which}")
    return key


def _defuse_cell(text: str) -> str:
    """Prefix a formula-looking cell with ' so spreadsheets show it as text (OWASP CSV injection)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def write_sheet_csv(sheet: Iterable[dict], path: str | os.PathLike) -> int:
    """Write the sheet as CSV for spreadsheet annotators, with empty choice/strength/comment columns and, last,
    each item's ``item_hash`` (keep it: it binds a filled-in row to what was shown).

    RFC 4180 quoting (multi-line answers stay in one cell), UTF-8 with BOM so spreadsheets detect
    the encoding; written atomically. Question/answer cells that start with = + - @ (which a
    spreadsheet could run as a formula) are prefixed with a single quote; only the item_id,
    choice, strength, comment and item_hash columns are read back. Returns the number of rows.
    """
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
            writer.writerow(CSV_COLUMNS)
            for rec in sheet:
                h = rec.get(HASH_FIELD) or item_hash(rec["question"], rec["answer_a"], rec["answer_b"])
                writer.writerow([rec["item_id"], _defuse_cell(rec["question"]), _defuse_cell(rec["answer_a"]),
                                 _defuse_cell(rec["answer_b"]), "", "", "", h])
                n += 1
            f.flush()
            os.fsync(f.fileno())
    return n
