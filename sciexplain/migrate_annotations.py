"""Stamp the current sheet's item hashes into annotation files written before annotations carried them.

    python -m sciexplain.migrate_annotations --sheet data/compare/sft_vs_base/sheet.jsonl data/annotations/sft_vs_base/alice.csv

Only for files annotated on exactly this sheet (same answers, same A/B order): the command asks first.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import click

from .annotation_store import AnnotationLock, _fsync_dir, write_rows
from .annotations import ANNOTATION_SUFFIXES, iter_rows, row_record
from .records import DataError, UserError, atomic_path, read_text_file
from .sheets import HASH_FIELD, read_sheet, sheet_hashes


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
            write_rows(path, [row_record(r._replace(item_hash=r.item_hash or hashes[r.item_id])) for r in rows],
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


@click.command()
@click.option("--sheet", "sheet_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the sheet.jsonl the files were annotated on (its current version is stamped)")
@click.option("--yes", is_flag=True, help="do not ask: I confirm the files were annotated on this very sheet")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def main(sheet_path, yes, files):
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


if __name__ == "__main__":
    main()
