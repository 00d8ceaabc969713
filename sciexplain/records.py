"""Small I/O helpers every stage shares: atomic writes, JSONL with clear errors, stable ids.

Contract: every record between stages is one JSON object per line with a stable ``id``
(see :func:`stable_id`). A write goes to a temp file in the target folder and is renamed
into place, so a crash leaves the old file or none, never half a file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import unicodedata
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
                                    "was the file still being written?)") from None
                raise DataError(path, lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
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
