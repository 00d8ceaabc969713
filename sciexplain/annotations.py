"""Blind A/B annotation sheets and annotation files.

Files (one JSON object per line unless said otherwise):

* **sheet** (what annotators see): ``{"item_id", "question", "answer_a", "answer_b"}``, optionally
  ``"finished_a"``, ``"finished_b"`` (true when the answer stopped on its own, false when it was cut by the
  token budget; the judge panel uses them, see :func:`sciexplain.judges.apply_finished_rule`).
* **key** (kept apart, never shown): ``{"item_id", "a_model", "b_model"}``.
* **annotation file**, one per annotator, ``data/annotations/<pair>/<annotator>.{csv,jsonl}``;
  the annotator's name is the file stem, judges write ``judge-<name>.jsonl``. Records:
  ``{"item_id", "choice": "A"|"B"|"", "strength": one of STRENGTHS, "comment": optional}``.
  ``"Unsure"`` is a tie and its choice may be empty.

Duplicates: an item id may appear at most once in an annotation file; a duplicate is an
error in every file. Re-annotating an item (the web page, :func:`append_annotation`)
therefore does not append a second line: it rewrites the whole file atomically with the
item's record replaced in place, so the file on disk always holds exactly one, latest,
answer per item and a crash leaves the previous complete file.
"""
from __future__ import annotations

import csv
import io
import os
import random
from pathlib import Path
from typing import Iterable, NamedTuple

from sciexplain.io import DataError, atomic_path

STRENGTHS = ("Significantly better", "Better", "Slightly better", "Unsure")
UNSURE = "Unsure"
CHOICES = ("A", "B")

SHEET_FIELDS = ("item_id", "question", "answer_a", "answer_b")
SHEET_OPTIONAL = ("finished_a", "finished_b")  # booleans; absent when unknown
KEY_FIELDS = ("item_id", "a_model", "b_model")
PAIR_FIELDS = ("item_id", "question", "answer_1", "answer_2", "model_1", "model_2")
ANNOTATION_FIELDS = ("item_id", "choice", "strength", "comment")
CSV_COLUMNS = SHEET_FIELDS + ("choice", "strength", "comment")
ANNOTATION_SUFFIXES = (".csv", ".jsonl")

# Cell starts that spreadsheets may evaluate as a formula (CSV injection); see write_sheet_csv.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_STRENGTH_BY_KEY = {" ".join(s.lower().split()): s for s in STRENGTHS}


class Annotation(NamedTuple):
    choice: str  # "A", "B", or "" (only with strength "Unsure")
    strength: str  # one of STRENGTHS
    comment: str  # "" when none


def normalize_strength(value: str) -> str | None:
    """The canonical STRENGTHS label for ``value`` (any case, extra whitespace), or None."""
    return _STRENGTH_BY_KEY.get(" ".join(value.lower().split()))


# --------------------------------------------------------------------------- sheets


def _ab_swap(seed: int, item_id: str) -> bool:
    """True when answer_2 is shown as A. Depends only on (seed, item_id), stable across runs/Pythons."""
    return random.Random(f"sciexplain-ab:{seed}:{item_id}").random() < 0.5


def build_sheet(pairs: Iterable[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Blind sheet and key from ``{item_id, question, answer_1, answer_2, model_1, model_2}`` records.

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
        item = {"item_id": item_id, "question": pair["question"],
                "answer_a": pair[f"answer_{first}"], "answer_b": pair[f"answer_{second}"]}
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
    """Read a sheet JSONL; checks fields and unique ids, refuses records that carry the key."""
    path = Path(path)
    records = _read_jsonl_lines(path)
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
        item = {f: rec[f] for f in SHEET_FIELDS}
        for field in SHEET_OPTIONAL:
            if field in rec and rec[field] is not None:
                if not isinstance(rec[field], bool):
                    raise DataError(path, lineno, field, f"must be true or false, got {rec[field]!r}")
                item[field] = rec[field]
        out.append(item)
    return out


def _defuse_cell(text: str) -> str:
    """Prefix a formula-looking cell with ' so spreadsheets show it as text (OWASP CSV injection)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def write_sheet_csv(sheet: Iterable[dict], path: str | os.PathLike) -> int:
    """Write the sheet as CSV for spreadsheet annotators, with empty choice/strength/comment columns.

    RFC 4180 quoting (multi-line answers stay in one cell), UTF-8 with BOM so spreadsheets detect
    the encoding; written atomically. Question/answer cells that start with = + - @ (which a
    spreadsheet could run as a formula) are prefixed with a single quote; only the item_id,
    choice, strength and comment columns are read back. Returns the number of rows.
    """
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
            writer.writerow(CSV_COLUMNS)
            for rec in sheet:
                writer.writerow([rec["item_id"], _defuse_cell(rec["question"]), _defuse_cell(rec["answer_a"]),
                                 _defuse_cell(rec["answer_b"]), "", "", ""])
                n += 1
            f.flush()
            os.fsync(f.fileno())
    return n


# --------------------------------------------------------------------------- reading annotations


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(path, data.count(b"\n", 0, offset) + 1, None, f"not valid UTF-8 (byte {offset})") from None
    if not text.strip():
        raise DataError(path, None, None, "file is empty")
    return text


def _read_jsonl_lines(path: Path) -> list[tuple[int, dict]]:
    import json

    out = []
    for lineno, line in enumerate(_decode(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, lineno, None, f"invalid JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise DataError(path, lineno, None, "a record must be a JSON object")
        out.append((lineno, rec))
    return out


def _check(path, where, item_id, choice, strength, comment, sheet_ids) -> tuple[str, Annotation] | None:
    """Validate one row; None for a row not yet annotated (choice and strength both empty)."""
    for field, value in (("item_id", item_id), ("choice", choice), ("strength", strength), ("comment", comment)):
        if value is not None and not isinstance(value, str):
            raise DataError(path, where, field, f"must be a string, got {type(value).__name__}")
    item_id = (item_id or "").strip()
    choice = (choice or "").strip()
    strength_raw = (strength or "").strip()
    comment = (comment or "").strip()
    if not item_id:
        if not (choice or strength_raw or comment):
            return None  # an empty spreadsheet row
        raise DataError(path, where, "item_id", "missing or empty")
    if sheet_ids is not None and item_id not in sheet_ids:
        raise DataError(path, where, "item_id", f"unknown item id {item_id!r} (not in the sheet)")
    if not choice and not strength_raw:
        return None  # not yet annotated
    if not strength_raw:
        raise DataError(path, where, "strength", f"missing; one of {', '.join(STRENGTHS)}")
    strength = normalize_strength(strength_raw)
    if strength is None:
        raise DataError(path, where, "strength", f"unknown label {strength_raw!r}; one of {', '.join(STRENGTHS)}")
    if choice.upper() in CHOICES:
        choice = choice.upper()
    elif choice or strength != UNSURE:
        raise DataError(path, where, "choice", f"must be A or B for strength {strength!r}, got {choice!r}")
    return item_id, Annotation(choice, strength, comment)


def _rows_jsonl(path: Path):
    for lineno, rec in _read_jsonl_lines(path):
        for field in ("item_id", "strength"):
            if field not in rec:
                raise DataError(path, lineno, field, "missing field")
        yield lineno, rec.get("item_id"), rec.get("choice"), rec.get("strength"), rec.get("comment")


def _rows_csv(path: Path):
    reader = csv.reader(io.StringIO(_decode(path), newline=""), strict=True)
    header, columns, start = None, {}, 1
    try:
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                for i, name in enumerate(header):
                    if name and name in columns:
                        raise DataError(path, lineno, name, "duplicate column")
                    columns[name] = i
                for name in ("item_id", "choice", "strength"):
                    if name not in columns:
                        raise DataError(path, lineno, name, f"missing column (header: {', '.join(header)})")
                continue
            cell = lambda name: row[columns[name]] if name in columns and columns[name] < len(row) else ""  # noqa: E731
            yield lineno, cell("item_id"), cell("choice"), cell("strength"), cell("comment")
    except csv.Error as e:
        raise DataError(path, reader.line_num, None, f"bad CSV: {e}") from None
    if header is None:
        raise DataError(path, None, None, "file is empty")


def read_annotations(path: str | os.PathLike, sheet_ids: Iterable[str] | None) -> dict[str, Annotation]:
    """Read one annotator's .csv or .jsonl file into ``{item_id: Annotation(choice, strength, comment)}``.

    Strength labels are matched ignoring case and surrounding/repeated whitespace and returned in
    canonical form; choice is returned as "A", "B" or "" (only for "Unsure"). Rows whose choice and
    strength are both empty (not yet annotated) are skipped. ``sheet_ids=None`` skips the
    unknown-id check. Every problem raises :class:`DataError` naming file, line and field.
    """
    path = Path(path)
    if path.suffix not in ANNOTATION_SUFFIXES:
        raise DataError(path, None, None, f"annotation files must end in {' or '.join(ANNOTATION_SUFFIXES)}")
    ids = None if sheet_ids is None else set(sheet_ids)
    rows = _rows_csv(path) if path.suffix == ".csv" else _rows_jsonl(path)
    out: dict[str, Annotation] = {}
    first_line: dict[str, int] = {}
    for lineno, item_id, choice, strength, comment in rows:
        checked = _check(path, lineno, item_id, choice, strength, comment, ids)
        key = item_id.strip() if isinstance(item_id, str) else None
        if key:
            if key in first_line:
                raise DataError(path, lineno, "item_id", f"duplicate item id {key!r} (first on line {first_line[key]})")
            first_line[key] = lineno
        if checked is not None:
            out[checked[0]] = checked[1]
    return out


def read_annotation_dir(directory: str | os.PathLike, sheet_ids: Iterable[str] | None) -> dict[str, dict[str, Annotation]]:
    """``{annotator: read_annotations(file)}`` for every *.csv / *.jsonl in ``directory`` (sorted by name).

    The annotator is the file stem (judges: ``judge-<name>``); hidden files (temp files) are ignored.
    Two files with the same stem are an error. A folder without annotation files gives ``{}``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, None, None, "annotation folder not found")
    ids = None if sheet_ids is None else set(sheet_ids)
    out: dict[str, dict[str, Annotation]] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in ANNOTATION_SUFFIXES or not path.is_file():
            continue
        if path.stem in out:
            raise DataError(path, None, None, f"a second file for annotator {path.stem!r}")
        out[path.stem] = read_annotations(path, ids)
    return out


# --------------------------------------------------------------------------- writing annotations


def validate_annotation(record: dict, sheet_ids: Iterable[str] | None = None) -> dict:
    """Check one ``{item_id, choice, strength, comment?}`` record; return it normalised (raises DataError)."""
    if not isinstance(record, dict):
        raise DataError(None, None, None, "a record must be a JSON object")
    extra = sorted(set(record) - set(ANNOTATION_FIELDS))
    if extra:
        raise DataError(None, None, extra[0], "unknown field")
    for field in ("item_id", "strength"):
        if field not in record:
            raise DataError(None, None, field, "missing field")
    ids = None if sheet_ids is None else set(sheet_ids)
    checked = _check(None, None, record.get("item_id"), record.get("choice"), record.get("strength"),
                     record.get("comment"), ids)
    if checked is None:
        raise DataError(None, None, "strength", f"missing; one of {', '.join(STRENGTHS)}")
    item_id, ann = checked
    return {"item_id": item_id, "choice": ann.choice, "strength": ann.strength, "comment": ann.comment}


def write_annotations(path: str | os.PathLike, annotations: dict[str, Annotation]) -> None:
    """Write ``{item_id: Annotation}`` as an annotation JSONL, atomically (fsynced temp file + rename)."""
    import json

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for item_id, ann in annotations.items():
                rec = {"item_id": item_id, "choice": ann[0], "strength": ann[1], "comment": ann[2]}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    try:  # make the rename itself durable
        fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def append_annotation(path: str | os.PathLike, record: dict, sheet_ids: Iterable[str] | None = None) -> dict:
    """Save one annotation to a .jsonl file, durably: insert it, or replace the item's earlier answer.

    Not a raw append: the file is rewritten atomically (fsynced) with one line per item, so the
    latest answer wins and :func:`read_annotations` can keep treating duplicate ids as errors.
    New items go at the end (file order = order first annotated). Returns the normalised record.
    Callers that write concurrently must serialise calls (the web server holds a lock).
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        raise DataError(path, None, None, "append_annotation writes .jsonl files only")
    rec = validate_annotation(record, sheet_ids)
    current = read_annotations(path, None) if path.exists() and path.stat().st_size else {}
    current[rec["item_id"]] = Annotation(rec["choice"], rec["strength"], rec["comment"])
    write_annotations(path, current)
    return rec
