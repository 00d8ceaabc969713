"""Bad annotation files through the real ``python -m stages.winrate`` command.

``tests/data/bad/annotations/`` holds one small file per case and ``setup/``: a 3-item compare sheet (with its
item hashes), its key and a judge file. Each case copies the setup (whose outputs a good run already wrote) to a
fresh folder, drops the case's file into ``data/annotations/base_vs_sft/`` and runs the stage:

* an **error** exits non-zero with ONE line on stderr naming the file, the line and (where a field is to blame)
  the field, and leaves every other file -- the metrics and plots of the previous run included -- byte for byte;
* a **warning** case runs (exit 0) and says on stderr, in one line naming the file, what was not counted;
* a UTF-8 BOM at the start of a file is accepted as if it were not there.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BAD = ROOT / "tests" / "data" / "bad" / "annotations"
PAIR = "data/annotations/base_vs_sft"

# file: (line, field, words in the message); field None: a syntax/encoding error, where no field is to blame
ERRORS = {
    "bad_json_line.jsonl": (2, None, "invalid JSON"),
    "not_an_object.jsonl": (2, None, "must be a JSON object"),
    "torn_last_line.jsonl": (3, None, "the last line is cut off"),
    "missing_strength.jsonl": (2, "strength", "missing field"),
    "unknown_choice.jsonl": (3, "choice", "must be A or B"),
    "unknown_item_id.jsonl": (2, "item_id", "unknown item id 'q9'"),
    "hash_missing.jsonl": (2, "item_hash", "python -m sciexplain.migrate_annotations --sheet "
                                           "data/compare/base_vs_sft/sheet.jsonl"),
    "hash_wrong_type.jsonl": (2, "item_hash", "must be a string, got int"),
    "wrong_type.jsonl": (1, "strength", "must be a string, got int"),
    "annotator_type_unknown.jsonl": (1, "annotator_type", "must be one of human, judge"),
    "annotator_type_mixed.jsonl": (2, "annotator_type", "one file holds one annotator"),
    "wrong_strength.csv": (3, "strength", "unknown label 'Much better'"),
    "duplicate_item.csv": (4, "item_id", "duplicate item id 'q1'"),
    "hash_column_missing.csv": (2, "item_hash", "predates annotations bound to the sheet"),
    "not_utf8.csv": (2, None, "not valid UTF-8"),
}
# file: (exit 0; the one warning line's words, or None for none; humans counted)
ACCEPTED = {
    "bom.jsonl": (None, ["bom"]),
    "stale_row.jsonl": ("1 of 3 rows were made on another version of the sheet", ["stale_row"]),
    "upper_suffix.JSONL": ("the suffix must be lower case: rename it to upper_suffix.jsonl", []),
    "workbook.xlsx": ("save it as CSV (UTF-8) named workbook.csv", []),
}


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the annotation folder (what the stage must not touch)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not str(p.relative_to(root)).startswith(PAIR)}


def _winrate(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.winrate"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """The setup after one good run: the metrics exist, to be left alone by a failing run."""
    root = tmp_path_factory.mktemp("setup")
    shutil.copytree(BAD / "setup", root, dirs_exist_ok=True)
    r = _winrate(root)
    assert r.returncode == 0, r.stderr
    assert (root / "metrics/compare/base_vs_sft.json").exists()
    return root


def _case(ran: Path, tmp_path: Path, name: str) -> Path:
    work = tmp_path / "case"
    shutil.copytree(ran, work)
    (work / PAIR).mkdir(parents=True)
    shutil.copy(BAD / name, work / PAIR / name)
    return work


def test_every_bad_file_is_in_the_table():
    files = {p.name for p in BAD.iterdir() if p.is_file() and p.name != "README.md"}
    assert files == set(ERRORS) | set(ACCEPTED) and len(ERRORS) >= 8


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(ERRORS))
def test_a_bad_annotation_file_stops_winrate_with_one_line(ran, tmp_path, name):
    line, field, words = ERRORS[name]
    work = _case(ran, tmp_path, name)
    before = _snapshot(work)
    r = _winrate(work)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    where = f"{PAIR}/{name}, line {line}" + (f", field '{field}'" if field else ":")
    assert where in lines[0] and words in lines[0], lines[0]
    assert _snapshot(work) == before  # no output changed, no temp file left


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_files_run_and_say_what_was_not_counted(ran, tmp_path, name):
    warning, humans = ACCEPTED[name]
    work = _case(ran, tmp_path, name)
    r = _winrate(work)
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning: ")]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"{PAIR}/{name}" in warnings[0] and warning in warnings[0], r.stderr
    m = json.loads((work / "metrics/compare/base_vs_sft.json").read_text())
    assert m["human_annotators"] == humans
    if name == "bom.jsonl":
        assert m["annotators"]["bom"]["n"] == 3 and m["stale_rows"][f"{PAIR}/bom.jsonl"] == 0
    if name == "stale_row.jsonl":
        assert m["annotators"]["stale_row"]["n"] == 2 and m["stale_rows"][f"{PAIR}/stale_row.jsonl"] == 1
