"""Annotation files, each annotation bound to what was shown: reading and checking them.

The sheet they answer is :mod:`sciexplain.sheets`'s; writing them durably (and the writer's lock) is
:mod:`sciexplain.annotation_store`'s; stamping old files with hashes is :mod:`sciexplain.migrate_annotations`'s.

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
line: ``python -m sciexplain.migrate_annotations --sheet <sheet.jsonl> FILE`` stamps the hashes of the
*current* sheet into it, after the user confirms it is the sheet they annotated (:func:`sciexplain.migrate_annotations.migrate_file`).

Duplicates: an item id may appear at most once in an annotation file; a duplicate is an
error in every file. Re-annotating an item (the web page, :func:`sciexplain.annotation_store.append_annotation`)
therefore does not append a second line: it rewrites the whole file atomically with the
item's record replaced in place, so the file on disk always holds exactly one, latest,
answer per item and a crash leaves the previous complete file. Writers of a file take its lock
(:class:`sciexplain.annotation_store.AnnotationLock`) and keep their temp files in its work folder, outside the annotation folder
(a DVC dependency), so a crash leaves nothing there.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

from .records import DataError, read_csv_table, read_jsonl_lines
from .sheets import HASH_FIELD
from .strengths import STRENGTHS, UNSURE, normalize_strength  # noqa: F401  (re-exported)

CHOICES = ("A", "B")
TYPE_FIELD = "annotator_type"
HUMAN, JUDGE = "human", "judge"
ANNOTATOR_TYPES = (HUMAN, JUDGE)
ANNOTATION_FIELDS = ("item_id", HASH_FIELD, "choice", "strength", "comment", TYPE_FIELD)
ANNOTATION_SUFFIXES = (".csv", ".jsonl")
MIGRATE_HINT = "python -m sciexplain.migrate_annotations --sheet {sheet} {file}"

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


def migrate_message(path: Path, sheet_path, detail: str) -> str:
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
            raise DataError(path, row.line, HASH_FIELD, migrate_message(path, sheet_path, "missing"))
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


def row_record(row: Row) -> dict:
    rec = {"item_id": row.item_id, HASH_FIELD: row.item_hash, "choice": row.annotation.choice,
           "strength": row.annotation.strength, "comment": row.annotation.comment}
    if row.annotator_type is not None:
        rec[TYPE_FIELD] = row.annotator_type
    return rec


if __name__ == "__main__":
    sys.exit("Error: the migrate command moved: python -m sciexplain.migrate_annotations --sheet <sheet.jsonl> FILE ...")
