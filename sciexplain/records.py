"""The one data layer every stage shares: reading and writing records, with clear errors, and stable ids.

Contract: every record between stages is one JSON object per line with a stable ``id``
(see :func:`stable_id`). A write goes to a temp file in the target folder and is renamed
into place (:func:`atomic_path`; a whole folder: :func:`new_dir`), so a crash leaves the old
file or none, never half a file.

Reading: JSONL through :func:`iter_jsonl` / :func:`read_jsonl_lines` (BOM, torn last line, per-line field
checks), generation files through :func:`iter_answers` / :func:`first_answers`, CSV through
:func:`read_csv_rows` / :func:`read_csv_table` (encoding, NUL bytes, strict quoting). Every problem raises
:class:`DataError` naming the file, the line and the field.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator


class UserError(Exception):
    """An error in the user's input or setup: stages print it as one line, without a traceback."""


class DataError(UserError, ValueError):
    """Bad input. The message names the file, the line/record and the field."""

    def __init__(self, path: str | os.PathLike | None, where: str | int | None, field: str | None, problem: str):
        self.path, self.where, self.field, self.problem = path, where, field, problem
        parts = [str(path) if path is not None else "<input>"]
        if where is not None:
            parts.append(f"line {where}" if isinstance(where, int) else str(where))
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join([", ".join(parts), problem]))


@dataclasses.dataclass
class Drops:
    """Counted drops by reason (reported in metrics/prepare.json)."""

    counts: Counter = dataclasses.field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n


def normalize_text(text: str) -> str:
    """Normalised form used for ids and dedupe: NFKC, lower case, collapsed whitespace, no trailing punctuation."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\s+", " ", text).strip()
    return text.rstrip(" ?.!")


def stable_id(question: str) -> str:
    """Stable record id: the first 16 hex digits of sha256 of the normalised question."""
    return hashlib.sha256(normalize_text(question).encode("utf-8")).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_UMASK = os.umask(0)  # read once at import (reading it means setting it; threads come later)
os.umask(_UMASK)


def default_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` (0600 / 0700) the mode a plain ``open``/``mkdir`` would have
    given it under the user's umask, so outputs are as readable as the user's other files."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", tmp_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temp path in the same folder as ``path`` (or in ``tmp_dir``, which must be on the same file
    system); rename it into place on success, delete it on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp",
                               dir=path.parent if tmp_dir is None else tmp_dir)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def replace_dir(new: str | os.PathLike, out: str | os.PathLike) -> None:
    """Swap a fully written folder ``new`` into place at ``out`` (the old folder, if any, is removed after)."""
    import shutil

    new, out = Path(new), Path(out)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    default_mode(new)
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def new_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; when the block ends without error, swap it into place at ``out``
    (:func:`replace_dir`). Whatever happens, no temp folder is left: a crash leaves the old ``out`` or none."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"byte {e.start}", None, "not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"invalid JSON: {e.msg}") from None


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
               list: "a list"}


def type_name(kind: type | tuple) -> str:
    """``a string``, ``an integer``, ``an object``, ...: a type as an error message says it."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def iter_jsonl(path: str | os.PathLike, what: str = "record") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON value)`` of every non-blank line of a JSONL file. A UTF-8 BOM at the start is
    accepted; a BOM further down (files concatenated), bytes that are not UTF-8, invalid JSON, a last line cut off
    before its newline (a file still being written) and a value that is not a JSON object raise :class:`DataError`
    naming the line. ``what`` names a line's value in that last message ("a record must be a JSON object")."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, None, "is a folder, not a JSONL file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, None, f"not valid UTF-8 (byte {e.start + 1} of the line)") from None
            if line.startswith("\ufeff"):
                raise DataError(path, lineno, None, "a UTF-8 BOM inside the file (were files concatenated?)")
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if not raw.endswith(b"\n") and not f.read(1):
                    raise DataError(path, lineno, None, "invalid JSON: the last line is cut off (no newline at its end: "
                                    "was the file still being written?); delete or complete it") from None
                raise DataError(path, lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
            except RecursionError:
                raise DataError(path, lineno, None, "invalid JSON: nested too deeply") from None
            if not isinstance(rec, dict):
                raise DataError(path, lineno, None, f"a {what} must be a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def read_jsonl_lines(path: str | os.PathLike, required: Iterable[str] = (), allow_empty: bool = False) -> list[tuple[int, dict]]:
    """``(line number, record)`` of a JSONL file (see :func:`iter_jsonl`); every record must hold the
    ``required`` fields (non-empty)."""
    required = tuple(required)
    records = []
    for lineno, rec in iter_jsonl(path):
        for field in required:
            value = rec.get(field)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(path, lineno, field, "missing or empty")
        records.append((lineno, rec))
    if not records and not allow_empty:
        raise DataError(path, None, None, "file is empty")
    return records


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = (), allow_empty: bool = False) -> list[dict]:
    """Read a JSONL file; every record must be an object holding the ``required`` fields (non-empty)."""
    return [rec for _, rec in read_jsonl_lines(path, required, allow_empty)]


def iter_answers(path: str | os.PathLike, required: Iterable[str] = ("id",), model: str | None = None
                 ) -> Iterator[tuple[int, dict]]:
    """``(line, record)`` of a generations JSONL (:func:`read_jsonl_lines`): every record holds the ``required``
    fields, an ``answer`` string and an integer ``sample`` (0 when absent); with ``model``, its ``model`` field
    must be that name."""
    for lineno, rec in read_jsonl_lines(path, required):
        if model is not None and rec.get("model") != model:
            raise DataError(path, lineno, "model", f"expected {model!r}, got {rec.get('model')!r}")
        if not isinstance(rec.get("answer"), str):
            raise DataError(path, lineno, "answer", "missing or not a string")
        sample = rec.get("sample", 0)
        if not isinstance(sample, int) or isinstance(sample, bool):
            raise DataError(path, lineno, "sample", f"must be an integer, got {sample!r}")
        yield lineno, rec


def first_answers(path: str | os.PathLike, required: Iterable[str] = ("id",), model: str | None = None) -> dict[str, dict]:
    """``{question id: record}`` of the sample-0 answers of a generations JSONL (checked as :func:`iter_answers`
    does); a second sample-0 answer to one question is an error."""
    answers: dict[str, dict] = {}
    for lineno, rec in iter_answers(path, required, model):
        if rec.get("sample", 0) != 0:
            continue
        if rec["id"] in answers:
            raise DataError(path, lineno, "id", "a second sample-0 answer for this question")
        answers[rec["id"]] = rec
    return answers


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a UTF-8 file (a BOM at the start is dropped). A missing file, a folder, bytes that are not
    UTF-8 (naming the line and byte), a NUL byte (binary data) and a blank file raise :class:`DataError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, None, f"is a folder, not a {what}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(path, data.count(b"\n", 0, offset) + 1, None,
                        f"not valid UTF-8 (byte {offset}): save the file as UTF-8") from None
    if "\x00" in text:
        raise DataError(path, text[:text.index("\x00")].count("\n") + 1, None, "a NUL byte: binary data, not text")
    if not text.strip():
        raise DataError(path, None, None, "file is empty")
    return text


def read_csv_rows(path: str | os.PathLike, what: str = "CSV file") -> list[tuple[int, list[str]]]:
    """``(line, cells)`` of every non-blank row of a CSV file (:func:`read_text_file` checks; strict RFC 4180
    quoting). A row's line is where it starts; a quote never closed names the line it opened on."""
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text_file(path, what), newline=""), strict=True)
    rows, start = [], 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if any(cell.strip() for cell in row):
                rows.append((line, row))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataError(path, start, None, "bad CSV: a quote opened here is never closed") from None
        raise DataError(path, reader.line_num, None, f"bad CSV: {e}") from None
    return rows


def read_csv_table(path: str | os.PathLike, needed: Iterable[str] = (), lower: bool = False, rows_needed: bool = True,
                   what: str = "CSV file") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line, cells), ...])`` of a CSV file whose first non-blank row is the header (see
    :func:`read_csv_rows`). ``lower``: header names stripped and lower-cased, then checked for duplicates. Every
    ``needed`` column must be in the header; ``rows_needed``: a header without rows is an error."""
    path = Path(path)
    rows = read_csv_rows(path, what)
    if not rows:
        raise DataError(path, None, None, "file is empty")
    (header_line, header), rows = rows[0], rows[1:]
    if lower:
        header = [cell.strip().lower() for cell in header]
        seen = set()
        for name in header:
            if name and name in seen:
                raise DataError(path, header_line, name, "duplicate column")
            seen.add(name)
    for name in needed:
        if name not in header:
            columns = ", ".join(" ".join(c.split()) for c in header)
            raise DataError(path, header_line, name, f"missing column (columns: {columns})")
    if rows_needed and not rows:
        raise DataError(path, None, None, "file has a header but no rows")
    return header, rows


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise DataError(path, None, None, "params file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, None, f"invalid YAML: {getattr(e, 'problem', e)}") from None
