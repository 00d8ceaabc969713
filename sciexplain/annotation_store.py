"""Writing annotation files durably, one writer at a time.

:func:`write_rows` / :func:`write_annotations` write a whole file atomically (an fsynced temp file renamed into
place, then the folder fsynced); :func:`append_annotation` saves one answer by rewriting the file with the item's
record replaced (the latest answer wins, one line per item). Writers take :class:`AnnotationLock` on the file and keep
their temp files in :func:`work_dir`, outside the annotation folder (a DVC dependency), so a crash leaves nothing
there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from .annotations import (ANNOTATOR_TYPES, TYPE_FIELD, Annotation, iter_rows, migrate_message, row_record,
                          validate_annotation)
from .records import DataError, UserError, atomic_path
from .sheets import HASH_FIELD

WORK_DIR_NAME = ".annotate-work"


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
    rows = [row_record(r) for r in iter_rows(path, None)] if path.exists() and path.stat().st_size else []
    for r in rows:
        if r[HASH_FIELD] is None:
            raise DataError(path, None, HASH_FIELD, migrate_message(path, None, "rows without a hash"))
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
