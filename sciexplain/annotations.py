"""Blind A/B annotation sheets and annotation files, each annotation bound to what was shown.

Files (one JSON object per line unless said otherwise):

* **sheet** (what annotators see): ``{"item_id", "item_hash", "question", "answer_a", "answer_b"}``, optionally
  ``"finished_a"``, ``"finished_b"`` (true when the answer stopped on its own, false when it was cut by the
  token budget; the judge panel uses them, see :func:`sciexplain.judges.apply_finished_rule`).
  ``item_hash`` is :func:`item_hash` of the question and the two answers in their A/B order: the one
  fingerprint of what an annotator saw. :func:`read_sheet` recomputes it and refuses a sheet whose stored hash
  does not match its text.
* **key** (kept apart, never shown): ``{"item_id", "a_model", "b_model"}``.
* **annotation file**, one per annotator, ``data/annotations/<pair>/<annotator>.{csv,jsonl}``;
  the annotator's name is the file stem. Records:
  ``{"item_id", "item_hash", "choice": "A"|"B"|"", "strength": one of STRENGTHS, "comment": optional,
  "annotator_type": optional "human"|"judge"}``. ``"Unsure"`` is a tie and its choice may be empty.
  Automatic judges write ``"annotator_type": "judge"`` on every row (``data/judgments/<pair>/judge-<name>.jsonl``);
  a row without the field counts as the folder's kind (human in ``data/annotations``), never by file name.
  A CSV annotation file is a filled-in copy of the sheet's CSV, whose ``item_hash`` column carries the hash.

**Stale rows.** A row counts only when its ``item_hash`` equals the current sheet item's: if the A/B order
(``compare.seed``) or an answer changed, the row is *stale* -- left out of every statistic, counted per file
(:class:`AnnotationFile` ``stale``) and reported by the readers (``stale_rows`` in the metrics, a warning on
stderr). A row **without** ``item_hash`` (a file from before hashes existed) is an error naming the file and
line: ``python -m sciexplain.annotations migrate --sheet <sheet.jsonl> FILE`` stamps the hashes of the
*current* sheet into it, after the user confirms it is the sheet they annotated (:func:`migrate_file`).

Duplicates: an item id may appear at most once in an annotation file; a duplicate is an
error in every file. Re-annotating an item (the web page, :func:`append_annotation`)
therefore does not append a second line: it rewrites the whole file atomically with the
item's record replaced in place, so the file on disk always holds exactly one, latest,
answer per item and a crash leaves the previous complete file. Writers of a file take its lock
(:class:`AnnotationLock`) and keep their temp files in :func:`work_dir`, outside the annotation folder
(a DVC dependency), so a crash leaves nothing there.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import random
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

from sciexplain.records import (DataError, UserError, atomic_path, read_csv_table, read_jsonl_lines,
                                read_text_file)
from sciexplain.strengths import STRENGTHS, UNSURE, normalize_strength  # noqa: F401  (re-exported)

CHOICES = ("A", "B")

HASH_FIELD = "item_hash"
TYPE_FIELD = "annotator_type"
HUMAN, JUDGE = "human", "judge"
ANNOTATOR_TYPES = (HUMAN, JUDGE)

SHEET_FIELDS = ("item_id", "question", "answer_a", "answer_b")
SHEET_OPTIONAL = ("finished_a", "finished_b")  # booleans; absent when unknown
KEY_FIELDS = ("item_id", "a_model", "b_model")
PAIR_FIELDS = ("item_id", "question", "answer_1", "answer_2", "model_1", "model_2")
ANNOTATION_FIELDS = ("item_id", HASH_FIELD, "choice", "strength", "comment", TYPE_FIELD)
CSV_COLUMNS = SHEET_FIELDS + ("choice", "strength", "comment", HASH_FIELD)
ANNOTATION_SUFFIXES = (".csv", ".jsonl")
WORK_DIR_NAME = ".annotate-work"
MIGRATE_HINT = "python -m sciexplain.annotations migrate --sheet {sheet} {file}"

# Cell starts that spreadsheets may evaluate as a formula (CSV injection); see write_sheet_csv.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_SPREADSHEETS = (".xlsx", ".xls", ".xlsm", ".ods", ".numbers")
_NOT_ANNOTATIONS = {".gitignore", ".gitkeep", ".DS_Store"}  # never worth a warning


class Annotation(NamedTuple):
    choice: str  # "A", "B", or "" (only with strength "Unsure")
    strength: str  # one of STRENGTHS
    comment: str  # "" when none


class AnnotationFile(NamedTuple):
    """One annotation file checked against the current sheet."""
    annotations: dict  # {item_id: Annotation}: rows whose item_hash matches the sheet
    stale: list  # item ids of rows made on another version of the sheet (hash differs), in file order
    annotator_type: str  # "human" or "judge"
    path: Path


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- sheets


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


# --------------------------------------------------------------------------- reading annotations


class Row(NamedTuple):
    """One checked row of an annotation file (not yet compared with a sheet)."""
    line: int
    item_id: str
    item_hash: str | None  # None: the row carries no hash
    annotation: Annotation  # choice, strength, comment (normalised)
    annotator_type: str | None  # None: not said (the folder's kind)


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


def _check_extra(path, where, hash_value, type_value) -> tuple[str | None, str | None]:
    """The optional item_hash and annotator_type of a row, checked."""
    if hash_value is not None and not isinstance(hash_value, str):
        raise DataError(path, where, HASH_FIELD, f"must be a string, got {type(hash_value).__name__}")
    if type_value is not None and not isinstance(type_value, str):
        raise DataError(path, where, TYPE_FIELD, f"must be a string, got {type(type_value).__name__}")
    type_value = (type_value or "").strip().lower() or None
    if type_value is not None and type_value not in ANNOTATOR_TYPES:
        raise DataError(path, where, TYPE_FIELD, f"must be one of {', '.join(ANNOTATOR_TYPES)}, got {type_value!r}")
    return (hash_value or "").strip() or None, type_value


def _rows_jsonl(path: Path):
    for lineno, rec in read_jsonl_lines(path):
        for field in ("item_id", "strength"):
            if field not in rec:
                raise DataError(path, lineno, field, "missing field")
        yield (lineno, rec.get("item_id"), rec.get("choice"), rec.get("strength"), rec.get("comment"),
               rec.get(HASH_FIELD), rec.get(TYPE_FIELD))


def _rows_csv(path: Path):
    header, rows = read_csv_table(path, ("item_id", "choice", "strength"), lower=True, rows_needed=False)
    columns = {name: i for i, name in enumerate(header)}
    for lineno, row in rows:
        cell = lambda name: row[columns[name]] if name in columns and columns[name] < len(row) else None  # noqa: E731
        yield (lineno, cell("item_id") or "", cell("choice") or "", cell("strength") or "", cell("comment") or "",
               cell(HASH_FIELD), cell(TYPE_FIELD))


def iter_rows(path: str | os.PathLike, sheet_ids: Iterable[str] | None = None) -> Iterator[Row]:
    """The annotated rows of one .csv or .jsonl file, checked (format, labels, types, duplicate ids; item ids
    against ``sheet_ids`` unless None); rows not yet annotated are skipped. Hashes are NOT compared here."""
    path = Path(path)
    if path.suffix not in ANNOTATION_SUFFIXES:
        raise DataError(path, None, None, f"annotation files must end in {' or '.join(ANNOTATION_SUFFIXES)}")
    ids = None if sheet_ids is None else set(sheet_ids)
    rows = _rows_csv(path) if path.suffix == ".csv" else _rows_jsonl(path)
    first_line: dict[str, int] = {}
    for lineno, item_id, choice, strength, comment, hash_value, type_value in rows:
        checked = _check(path, lineno, item_id, choice, strength, comment, ids)
        hash_value, type_value = _check_extra(path, lineno, hash_value, type_value)
        key = item_id.strip() if isinstance(item_id, str) else None
        if key:
            if key in first_line:
                raise DataError(path, lineno, "item_id", f"duplicate item id {key!r} (first on line {first_line[key]})")
            first_line[key] = lineno
        if checked is not None:
            yield Row(lineno, checked[0], hash_value, checked[1], type_value)


def read_annotations(path: str | os.PathLike, sheet_ids: Iterable[str] | None) -> dict[str, Annotation]:
    """Every annotated row of one .csv or .jsonl file as ``{item_id: Annotation(choice, strength, comment)}``,
    **without** comparing hashes: a low-level reader for tools and tests. Statistics must use
    :func:`load_annotations` (or :func:`read_annotation_dir`), which keep only rows bound to the current sheet.

    Strength labels are matched ignoring case and surrounding/repeated whitespace and returned in
    canonical form; choice is returned as "A", "B" or "" (only for "Unsure"). Rows whose choice and
    strength are both empty (not yet annotated) are skipped. ``sheet_ids=None`` skips the
    unknown-id check. Every problem raises :class:`DataError` naming file, line and field.
    """
    return {row.item_id: row.annotation for row in iter_rows(path, sheet_ids)}


def _migrate_message(path: Path, sheet_path, detail: str) -> str:
    sheet = str(sheet_path) if sheet_path is not None else "data/compare/<pair>/sheet.jsonl"
    return (f"{detail}: the file predates annotations bound to the sheet; if {sheet} is the sheet this file was "
            f"annotated on, stamp its hashes with: {MIGRATE_HINT.format(sheet=sheet, file=path)}")


def load_annotations(path: str | os.PathLike, hashes: Mapping[str, str], default_type: str = HUMAN,
                     sheet_path: str | os.PathLike | None = None) -> AnnotationFile:
    """One annotation file checked against the current sheet (``hashes`` = :func:`sheet_hashes` of it).

    Rows whose ``item_hash`` equals the sheet item's are returned in ``annotations``; rows with another hash
    (made on another version of the sheet) are listed in ``stale`` and left out. A row without a hash, an
    unknown item id, or a file mixing annotator types is a :class:`DataError` naming file, line and field
    (``sheet_path`` only improves the migration hint). Rows without ``annotator_type`` are ``default_type``."""
    path = Path(path)
    current, stale = {}, []
    kind, kind_line = None, None
    for row in iter_rows(path, hashes):
        if row.item_hash is None:
            raise DataError(path, row.line, HASH_FIELD, _migrate_message(path, sheet_path, "missing"))
        row_kind = row.annotator_type or default_type
        if kind is None:
            kind, kind_line = row_kind, row.line
        elif row_kind != kind:
            raise DataError(path, row.line, TYPE_FIELD, f"{row_kind!r}, but line {kind_line} is {kind!r}: "
                            "one file holds one annotator")
        if row.item_hash == hashes[row.item_id]:
            current[row.item_id] = row.annotation
        else:
            stale.append(row.item_id)
    return AnnotationFile(current, stale, kind or default_type, path)


def _skip_reason(path: Path) -> str | None:
    """Why a folder entry is not read as an annotation file (None: it is one)."""
    name, suffix = path.name, path.suffix
    if name.startswith("."):
        return "a hidden file is not read (a temp file left by a crash? delete it)"
    if path.is_dir():
        return None  # handled by the caller
    if suffix in ANNOTATION_SUFFIXES:
        return None
    if suffix.lower() in ANNOTATION_SUFFIXES:
        return f"the suffix must be lower case: rename it to {path.stem}{suffix.lower()}"
    if suffix.lower() == ".json":
        return f"a .json file is not read: write one JSON object per line and name it {path.stem}.jsonl"
    if suffix.lower() in _SPREADSHEETS:
        return f"a spreadsheet workbook is not read: save it as CSV (UTF-8) named {path.stem}.csv"
    return "not an annotation file (only <annotator>.csv and <annotator>.jsonl are read)"


def read_annotation_dir(directory: str | os.PathLike, hashes: Mapping[str, str], default_type: str = HUMAN,
                        sheet_path: str | os.PathLike | None = None,
                        warn: Callable[[str], None] | None = warn_stderr) -> dict[str, AnnotationFile]:
    """``{annotator: load_annotations(file)}`` for every ``*.csv`` / ``*.jsonl`` directly in ``directory``
    (sorted by name; the annotator is the file stem).

    Every other entry is skipped with one warning naming it and why (``.JSONL``, ``.json``, ``.xlsx``, hidden
    temp files, every file inside a sub-folder; ``.gitignore`` / ``.gitkeep`` silently). Two files with the same
    stem are an error. A folder without annotation files gives ``{}``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, None, None, "annotation folder not found")
    warn = warn or (lambda message: None)
    out: dict[str, AnnotationFile] = {}
    for path in sorted(directory.iterdir()):
        if path.name in _NOT_ANNOTATIONS:
            continue
        if path.is_dir() and not path.name.startswith("."):
            for inner in sorted(p for p in path.rglob("*") if p.is_file()):
                warn(f"{inner}: skipped: annotation files are read only directly in {directory}/, not in sub-folders")
            continue
        why = _skip_reason(path)
        if why is not None:
            warn(f"{path}: skipped: {why}")
            continue
        if path.stem in out:
            raise DataError(path, None, None, f"a second file for annotator {path.stem!r}")
        out[path.stem] = load_annotations(path, hashes, default_type, sheet_path)
    return out


def check_pair_folders(root: str | os.PathLike, pairs: Iterable[str], prefix: str = "",
                       warn: Callable[[str], None] | None = warn_stderr) -> list[str]:
    """Warn about annotations under ``root`` that no reader of these ``pairs`` (folder ``<root>/<prefix><pair>``)
    will read: a folder named after a reversed pair (``sft_vs_base`` for ``base_vs_sft``) and annotation files
    lying directly in ``root``. Returns the warnings."""
    root = Path(root)
    messages = []
    if not root.is_dir():
        return messages
    pairs = list(pairs)
    for pair in pairs:
        a, sep, b = pair.partition("_vs_")
        if not sep:
            continue
        reversed_dir = root / f"{prefix}{b}_vs_{a}"
        if f"{b}_vs_{a}" not in pairs and reversed_dir.is_dir():
            for inner in sorted(p for p in reversed_dir.rglob("*") if p.is_file()):
                messages.append(f"{inner}: skipped: {reversed_dir.name} is {prefix}{pair} reversed; annotations "
                                f"of this comparison are read from {root / (prefix + pair)}/ (move the file there; "
                                "A and B are the sheet's, whatever the folder's name)")
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix.lower() in ANNOTATION_SUFFIXES + (".json",):
            messages.append(f"{path}: skipped: annotation files go in {root}/<pair>/ (e.g. {root}/{prefix}{pairs[0]}/)"
                            if pairs else f"{path}: skipped: annotation files go in {root}/<pair>/")
    for message in messages:
        (warn or (lambda m: None))(message)
    return messages


# --------------------------------------------------------------------------- writing annotations


def validate_annotation(record: dict, hashes: Mapping[str, str] | None = None) -> dict:
    """Check one ``{item_id, item_hash, choice, strength, comment?}`` record; return it normalised (raises
    DataError). With ``hashes`` (:func:`sheet_hashes`), the item must be on the sheet and its hash current."""
    if not isinstance(record, dict):
        raise DataError(None, None, None, "a record must be a JSON object")
    extra = sorted(set(record) - set(ANNOTATION_FIELDS))
    if extra:
        raise DataError(None, None, extra[0], "unknown field")
    for field in ("item_id", HASH_FIELD, "strength"):
        if field not in record:
            raise DataError(None, None, field, "missing field")
    checked = _check(None, None, record.get("item_id"), record.get("choice"), record.get("strength"),
                     record.get("comment"), None if hashes is None else set(hashes))
    if checked is None:
        raise DataError(None, None, "strength", f"missing; one of {', '.join(STRENGTHS)}")
    item_id, ann = checked
    h, kind = _check_extra(None, None, record.get(HASH_FIELD), record.get(TYPE_FIELD))
    if h is None:
        raise DataError(None, None, HASH_FIELD, "missing or empty")
    if hashes is not None and hashes[item_id] != h:
        raise DataError(None, None, HASH_FIELD, f"{h!r} is not the current sheet's {hashes[item_id]!r} for item "
                        f"{item_id!r}: the sheet changed since this was shown; reload it")
    rec = {"item_id": item_id, HASH_FIELD: h, "choice": ann.choice, "strength": ann.strength, "comment": ann.comment}
    if kind is not None:
        rec[TYPE_FIELD] = kind
    return rec


def _fsync_dir(folder: Path) -> None:
    try:  # make a rename durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_rows(path: str | os.PathLike, records: Iterable[Mapping], tmp_dir: str | os.PathLike | None = None) -> None:
    """Write annotation records (dicts) as JSONL, atomically and durably: an fsynced temp file (in ``tmp_dir``,
    default beside ``path``) renamed into place, then the folder fsynced."""
    path = Path(path)
    with atomic_path(path, tmp_dir=tmp_dir) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(dict(rec), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(path.parent)


def write_annotations(path: str | os.PathLike, annotations: Mapping[str, Annotation],
                      hashes: Mapping[str, str] | None = None, annotator_type: str | None = None,
                      tmp_dir: str | os.PathLike | None = None) -> None:
    """Write ``{item_id: Annotation}`` as an annotation JSONL, atomically. ``hashes`` (:func:`sheet_hashes`)
    binds every row to its sheet item; ``annotator_type`` (e.g. ``"judge"``) is written on every row."""
    if annotator_type is not None and annotator_type not in ANNOTATOR_TYPES:
        raise ValueError(f"annotator_type must be one of {ANNOTATOR_TYPES}, got {annotator_type!r}")
    records = []
    for item_id, ann in annotations.items():
        rec = {"item_id": item_id}
        if hashes is not None:
            rec[HASH_FIELD] = hashes[item_id]
        rec.update(choice=ann[0], strength=ann[1], comment=ann[2])
        if annotator_type is not None:
            rec[TYPE_FIELD] = annotator_type
        records.append(rec)
    write_rows(path, records, tmp_dir)


def _row_record(row: Row) -> dict:
    rec = {"item_id": row.item_id, HASH_FIELD: row.item_hash, "choice": row.annotation.choice,
           "strength": row.annotation.strength, "comment": row.annotation.comment}
    if row.annotator_type is not None:
        rec[TYPE_FIELD] = row.annotator_type
    return rec


def append_annotation(path: str | os.PathLike, record: dict, hashes: Mapping[str, str],
                      tmp_dir: str | os.PathLike | None = None) -> dict:
    """Save one annotation to a .jsonl file, durably: insert it, or replace the item's earlier answer.

    ``record`` must carry the ``item_hash`` of what was shown, equal to the current sheet's (``hashes``).
    Not a raw append: the file is rewritten atomically (fsynced; temp file in ``tmp_dir``) with one line per
    item, so the latest answer wins and readers can keep treating duplicate ids as errors. Rows of other items
    are kept as they are, stale ones included (an answer on the current sheet replaces a stale one). New items
    go at the end (file order = order first annotated). Returns the normalised record. Callers that write
    concurrently must serialise calls (the web server holds a lock per process and :class:`AnnotationLock`).
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        raise DataError(path, None, None, "append_annotation writes .jsonl files only")
    rec = validate_annotation(record, hashes)
    rows = [_row_record(r) for r in iter_rows(path, None)] if path.exists() and path.stat().st_size else []
    for r in rows:
        if r[HASH_FIELD] is None:
            raise DataError(path, None, HASH_FIELD, _migrate_message(path, None, "rows without a hash"))
    for i, r in enumerate(rows):
        if r["item_id"] == rec["item_id"]:
            rows[i] = rec
            break
    else:
        rows.append(rec)
    write_rows(path, rows, tmp_dir)
    return rec


# --------------------------------------------------------------------------- writers: work folder, lock


def work_dir(out: str | os.PathLike) -> Path:
    """Where the writer of annotation file ``out`` keeps its lock and temp files: never inside the annotation
    folder (a DVC dependency of winrate and reward_model).

    ``<repo>/.annotate-work/<the out file's folder, relative to the repo>`` when ``out`` is inside a DVC or git
    repository (the nearest folder above it with ``.dvc`` or ``.git``), else ``.annotate-work/<folder name>``
    beside the out file's folder. The work folder ignores itself in git (a ``.gitignore`` of ``*``)."""
    folder = Path(os.path.realpath(Path(out).parent))
    for root in (folder, *folder.parents):
        if (root / ".dvc").is_dir() or (root / ".git").exists():
            return root / WORK_DIR_NAME / folder.relative_to(root)
    return folder.parent / WORK_DIR_NAME / folder.name


def _make_work_dir(out: Path) -> Path:
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    top = next((p for p in (work, *work.parents) if p.name == WORK_DIR_NAME), None)
    if top is not None and not (top / ".gitignore").exists():
        (top / ".gitignore").write_text("*\n", encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(work).st_dev != os.stat(out.parent).st_dev:  # a rename cannot cross file systems
        raise UserError(f"{work} and {out.parent} are on different file systems: annotation files cannot be written "
                        "atomically from there")
    return work


class AnnotationLock:
    """An exclusive lock on annotation file ``out`` (``fcntl.flock`` on ``<work_dir>/<name>.lock``) held until
    :meth:`release`, so two writers (two web servers, a migration) never write one file at once; taking it
    removes the temp files a crashed writer of this file left (in the work folder, and beside the file from
    older versions). ``tmp_dir`` is where the holder writes its temp files."""

    def __init__(self, out: str | os.PathLike):
        import fcntl

        self.out = Path(out)
        self.tmp_dir = _make_work_dir(self.out)
        self.path = self.tmp_dir / f"{self.out.name}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise UserError(f"{self.out} is already open in another annotation server or migration (pid {holder}, "
                            f"lock {self.path}): stop it first, or annotate into another file") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.cleaned = self._clean()

    def _clean(self) -> list[Path]:
        """Remove temp files of this annotation file left by a crashed writer; returns what was removed."""
        removed = []
        for folder in (self.tmp_dir, self.out.parent):
            for p in folder.glob(f".{self.out.name}.*.tmp"):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
        return removed

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------- migration of files without hashes


def migrate_file(path: str | os.PathLike, sheet: list[dict]) -> dict:
    """Stamp the ``item_hash`` of the given (current) sheet into every annotated row of ``path`` that has none.

    Only for a file annotated on exactly this sheet (same answers, same A/B order): the caller must have the
    user confirm that. Rows that already carry a hash are left as they are. A .jsonl file is rewritten as
    JSONL; a .csv file keeps its cells and gets an ``item_hash`` column. Takes the file's lock; atomic.
    Returns ``{"stamped": n, "kept": n}``."""
    path = Path(path)
    hashes = sheet_hashes(sheet)
    with AnnotationLock(path) as lock:
        if path.suffix == ".jsonl":
            rows = list(iter_rows(path, hashes))
            stamped = sum(r.item_hash is None for r in rows)
            write_rows(path, [_row_record(r._replace(item_hash=r.item_hash or hashes[r.item_id])) for r in rows],
                       lock.tmp_dir)
            return {"stamped": stamped, "kept": len(rows) - stamped}
        if path.suffix != ".csv":
            raise DataError(path, None, None, f"annotation files must end in {' or '.join(ANNOTATION_SUFFIXES)}")
        list(iter_rows(path, hashes))  # every problem of the file first
        table = list(csv.reader(io.StringIO(read_text_file(path), newline=""), strict=True))
        header_at = next(i for i, row in enumerate(table) if any(c.strip() for c in row))
        header = [c.strip().lower() for c in table[header_at]]
        if HASH_FIELD not in header:
            table[header_at].append(HASH_FIELD)
            header.append(HASH_FIELD)
        at, id_at = header.index(HASH_FIELD), header.index("item_id")
        stamped = kept = 0
        for row in table[header_at + 1:]:
            item = row[id_at].strip() if id_at < len(row) else ""
            if item not in hashes:
                continue  # an empty row
            row.extend([""] * (at + 1 - len(row)))
            if row[at].strip():
                kept += 1
            else:
                row[at] = hashes[item]
                stamped += 1
        with atomic_path(path, tmp_dir=lock.tmp_dir) as tmp:
            with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
                csv.writer(f, lineterminator="\r\n").writerows(table)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(path.parent)
        return {"stamped": stamped, "kept": kept}


def _cli():
    import click

    @click.group()
    def cli():
        """Annotation file tools."""

    @cli.command()
    @click.option("--sheet", "sheet_path", required=True, type=click.Path(exists=True, dir_okay=False),
                  help="the sheet.jsonl the files were annotated on (its current version is stamped)")
    @click.option("--yes", is_flag=True, help="do not ask: I confirm the files were annotated on this very sheet")
    @click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
    def migrate(sheet_path, yes, files):
        """Stamp the sheet's item hashes into annotation FILES written before annotations carried them.

        Only when the sheet is the one the files were annotated on: same answers in the same A/B order (the
        same compare.seed and generations). Otherwise the votes would count for answers nobody saw."""
        try:
            sheet = read_sheet(sheet_path)
            if not yes:
                click.confirm(f"Were {', '.join(files)} annotated on exactly {sheet_path} as it is now (same answers, "
                              "same A/B order)?", abort=True, err=True)
            for f in files:
                n = migrate_file(f, sheet)
                click.echo(f"{f}: {n['stamped']} rows stamped with the hashes of {sheet_path}"
                           + (f", {n['kept']} already had one" if n["kept"] else ""))
        except UserError as e:
            raise click.ClickException(str(e)) from None

    return cli


if __name__ == "__main__":
    _cli()()
