import csv
import json
import os

import pytest

from sciexplain.annotation_store import AnnotationLock, append_annotation, work_dir
from sciexplain.annotations import STRENGTHS, Annotation, load_annotations, read_annotation_dir, read_annotations, validate_annotation
from sciexplain.migrate_annotations import migrate_file
from sciexplain.sheets import build_sheet, item_hash, read_sheet, sheet_hashes, write_sheet_csv
from sciexplain.records import DataError, UserError, write_jsonl

IDS = ["q1", "q2", "q3"]
HASHES = {i: f"{n:016x}" for n, i in enumerate(IDS, 1)}  # a made-up sheet's hashes


def pair(i, **kw):
    rec = {"item_id": f"q{i}", "question": f"Why {i}?", "answer_1": f"base answer {i}",
           "answer_2": f"sft answer {i}", "model_1": "base", "model_2": "sft"}
    rec.update(kw)
    return rec


def write_lines(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def write_csv(path, rows, header=("item_id", "choice", "strength", "comment")):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def expect_error(path, sheet_ids, line, field, match):
    with pytest.raises(DataError) as ei:
        read_annotations(path, sheet_ids)
    e = ei.value
    assert e.path is not None and str(path) in str(e)
    assert e.where == line, str(e)
    assert e.field == field, str(e)
    assert f"line {line}" in str(e) if line is not None else True
    assert f"field '{field}'" in str(e) if field is not None else True
    assert match in str(e)


# ------------------------------------------------------------------ sheets


def test_build_sheet_blind_and_consistent_with_key():
    pairs = [pair(i) for i in range(50)]
    sheet, key = build_sheet(pairs, seed=7)
    assert [s["item_id"] for s in sheet] == [p["item_id"] for p in pairs] == [k["item_id"] for k in key]
    for s, k, p in zip(sheet, key, pairs):
        assert set(s) == {"item_id", "item_hash", "question", "answer_a", "answer_b"}
        assert s["item_hash"] == item_hash(s["question"], s["answer_a"], s["answer_b"])
        assert set(k) == {"item_id", "a_model", "b_model"}
        by_model = {p["model_1"]: p["answer_1"], p["model_2"]: p["answer_2"]}
        assert s["answer_a"] == by_model[k["a_model"]] and s["answer_b"] == by_model[k["b_model"]]
        assert {k["a_model"], k["b_model"]} == {"base", "sft"}


def test_build_sheet_order_stable_per_item_and_balanced():
    pairs = [pair(i) for i in range(400)]
    _, key = build_sheet(pairs, seed=3)
    a_of = {k["item_id"]: k["a_model"] for k in key}
    # same seed: identical; a subset, a superset and another order do not reshuffle anyone
    assert build_sheet(pairs, seed=3)[1] == key
    _, key_sub = build_sheet(pairs[100:200][::-1] + [pair(999)], seed=3)
    assert all(a_of[k["item_id"]] == k["a_model"] for k in key_sub if k["item_id"] in a_of)
    # roughly balanced: 400 fair coins lie in [140, 260] with overwhelming probability
    n_base_a = sum(1 for k in key if k["a_model"] == "base")
    assert 140 < n_base_a < 260
    # the seed matters
    _, key_other = build_sheet(pairs, seed=4)
    assert key_other != key


def test_build_sheet_rejects_bad_pairs():
    with pytest.raises(DataError, match="pair 2.*answer_2"):
        build_sheet([pair(1), {k: v for k, v in pair(2).items() if k != "answer_2"}], seed=0)
    with pytest.raises(DataError, match="pair 2.*item_id.*duplicate"):
        build_sheet([pair(1), pair(1)], seed=0)


def test_read_sheet_refuses_key_fields(tmp_path):
    sheet, key = build_sheet([pair(1)], seed=0)
    bad = dict(sheet[0], a_model="base")
    p = write_lines(tmp_path / "sheet.jsonl", [bad])
    with pytest.raises(DataError, match="line 1.*a_model"):
        read_sheet(p)
    write_jsonl(tmp_path / "ok.jsonl", sheet)
    assert read_sheet(tmp_path / "ok.jsonl") == sheet


# ------------------------------------------------------------------ CSV export / round trip


def test_csv_round_trip_multiline_answers(tmp_path):
    tricky = 'line one\nline "two", with comma\r\n\n  indented; tab\there\n'
    pairs = [pair(1, answer_1=tricky), pair(2, answer_2="=HYPERLINK(\"http://x\")"), pair(3, question="Ünïcødé ✓?")]
    sheet, _ = build_sheet(pairs, seed=1)
    path = tmp_path / "sheet.csv"
    assert write_sheet_csv(sheet, path) == 3
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["item_id", "question", "answer_a", "answer_b", "choice", "strength", "comment", "item_hash"]
    assert [r["item_hash"] for r in rows] == [s["item_hash"] for s in sheet]
    assert [r["item_id"] for r in rows] == IDS
    assert tricky in (rows[0]["answer_a"], rows[0]["answer_b"])  # multi-line cell intact
    assert rows[2]["question"] == "Ünïcødé ✓?"
    formula = rows[1]["answer_a"] if "HYPERLINK" in rows[1]["answer_a"] else rows[1]["answer_b"]
    assert formula.startswith("'=")  # defused for spreadsheets
    assert all(r["choice"] == r["strength"] == r["comment"] == "" for r in rows)

    # nothing filled in yet: every row skipped, not an error
    assert read_annotations(path, IDS) == {}

    # an annotator fills two of three rows in a spreadsheet, with sloppy labels
    rows[0].update(choice=" a ", strength="  significantly   BETTER ", comment="clearer\nshorter")
    rows[2].update(choice="", strength="unsure")
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    got = read_annotations(path, IDS)
    assert got == {"q1": Annotation("A", "Significantly better", "clearer\nshorter"),
                   "q3": Annotation("", "Unsure", "")}
    assert got["q1"] == ("A", "Significantly better", "clearer\nshorter")  # a plain tuple too
    checked = load_annotations(path, sheet_hashes(sheet))  # bound to the sheet by the hash column
    assert checked.annotations == got and checked.stale == [] and checked.annotator_type == "human"


def test_jsonl_reading_and_unsure(tmp_path):
    p = write_lines(tmp_path / "judge-gpt.jsonl", [
        {"item_id": "q1", "choice": "B", "strength": "Slightly better"},
        {"item_id": "q2", "choice": "", "strength": "Unsure", "comment": "both fine"},
        {"item_id": "q3", "choice": "a", "strength": "unsure", "comment": None},
    ])
    assert read_annotations(p, IDS) == {
        "q1": ("B", "Slightly better", ""), "q2": ("", "Unsure", "both fine"), "q3": ("A", "Unsure", "")}
    assert read_annotations(p, None)["q1"].strength == "Slightly better"


# ------------------------------------------------------------------ validation errors


def test_csv_missing_column(tmp_path):
    p = write_csv(tmp_path / "a.csv", [["q1", "A"]], header=("item_id", "choice"))
    expect_error(p, IDS, 1, "strength", "missing column")


def test_jsonl_missing_field(tmp_path):
    p = write_lines(tmp_path / "a.jsonl", [{"item_id": "q1", "choice": "A", "strength": "Better"},
                                           {"item_id": "q2", "choice": "A"}])
    expect_error(p, IDS, 2, "strength", "missing")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_unknown_item_id(tmp_path, fmt):
    rows = [("q1", "A", "Better", ""), ("q9", "B", "Better", "")]
    p = make(tmp_path, fmt, rows)
    expect_error(p, IDS, 3 if fmt == "csv" else 2, "item_id", "unknown item id 'q9'")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_unknown_strength(tmp_path, fmt):
    p = make(tmp_path, fmt, [("q1", "A", "Better", ""), ("q2", "A", "much better", "")])
    expect_error(p, IDS, 3 if fmt == "csv" else 2, "strength", "unknown label 'much better'")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("choice", ["", "C", "tie"])
def test_bad_choice_for_non_unsure(tmp_path, fmt, choice):
    p = make(tmp_path, fmt, [("q1", choice, "Better", "")])
    expect_error(p, IDS, 2 if fmt == "csv" else 1, "choice", "must be A or B")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_strength_missing_but_choice_given(tmp_path, fmt):
    p = make(tmp_path, fmt, [("q1", "A", "", "")])
    expect_error(p, IDS, 2 if fmt == "csv" else 1, "strength", "missing")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_duplicate_item_id(tmp_path, fmt):
    p = make(tmp_path, fmt, [("q1", "A", "Better", ""), ("q2", "B", "Better", ""), ("q1", "B", "Better", "")])
    expect_error(p, IDS, 4 if fmt == "csv" else 3, "item_id", "duplicate item id 'q1' (first on line")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_non_utf8(tmp_path, fmt):
    p = make(tmp_path, fmt, [("q1", "A", "Better", "ok"), ("q2", "B", "Better", "CAFE")])
    p.write_bytes(p.read_bytes().replace(b"CAFE", b"caf\xe9"))  # Latin-1, not UTF-8
    expect_error(p, IDS, 3 if fmt == "csv" else 2, None, "not valid UTF-8")


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl"])
@pytest.mark.parametrize("content", [b"", b"\n \n"])
def test_empty_file(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    expect_error(p, IDS, None, None, "file is empty")


def test_csv_line_numbers_count_multiline_cells(tmp_path):
    p = write_csv(tmp_path / "a.csv", [("q1", "A", "Better", "one\ntwo\nthree"), ("q2", "A", "Bogus", "")])
    expect_error(p, IDS, 5, "strength", "unknown label")


def test_jsonl_invalid_json_and_wrong_type(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"item_id": "q1", "choice": "A", "strength": "Better"}\n{oops\n', encoding="utf-8")
    expect_error(p, IDS, 2, None, "invalid JSON")
    write_lines(p, [{"item_id": "q1", "choice": 1, "strength": "Better"}])
    expect_error(p, IDS, 1, "choice", "must be a string")


def test_unfilled_rows_skipped(tmp_path):
    p = write_csv(tmp_path / "a.csv", [("q1", "", "", ""), ("q2", "B", "Better", ""), ("q3", "  ", "", ""),
                                       ("", "", "", ""), []])
    assert read_annotations(p, IDS) == {"q2": ("B", "Better", "")}
    j = write_lines(tmp_path / "b.jsonl", [{"item_id": "q1", "choice": "", "strength": ""},
                                           {"item_id": "q2", "choice": "A", "strength": "Better"}])
    assert read_annotations(j, IDS) == {"q2": ("A", "Better", "")}


def test_strengths_are_the_fixed_scale():
    assert STRENGTHS == ("Significantly better", "Better", "Slightly better", "Unsure")


# ------------------------------------------------------------------ folders and writing


def test_read_annotation_dir(tmp_path, capsys):
    write_csv(tmp_path / "alice.csv", [("q1", "A", "Better", "", HASHES["q1"])],
              header=("item_id", "choice", "strength", "comment", "item_hash"))
    write_lines(tmp_path / "judge-gpt.jsonl", [{"item_id": "q2", "item_hash": HASHES["q2"], "choice": "B",
                                               "strength": "Better", "annotator_type": "judge"}])
    (tmp_path / ".bob.jsonl.123.tmp").write_text("junk")
    (tmp_path / "notes.txt").write_text("junk")
    (tmp_path / ".gitkeep").write_text("")
    got = read_annotation_dir(tmp_path, HASHES)
    assert {n: f.annotations for n, f in got.items()} == {"alice": {"q1": ("A", "Better", "")},
                                                         "judge-gpt": {"q2": ("B", "Better", "")}}
    assert got["alice"].annotator_type == "human" and got["judge-gpt"].annotator_type == "judge"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and ".bob.jsonl.123.tmp: skipped: a hidden file" in err[0] and "notes.txt: skipped" in err[1]
    write_lines(tmp_path / "alice.jsonl", [{"item_id": "q2", "item_hash": HASHES["q2"], "choice": "B", "strength": "Better"}])
    with pytest.raises(DataError, match="second file for annotator 'alice'"):
        read_annotation_dir(tmp_path, HASHES, warn=None)


def test_item_hash_is_what_was_shown():
    h = item_hash("Why?", "one", "two")
    assert len(h) == 16 and h == item_hash("Why?", "one", "two")
    assert set(h) <= set("abcdefghijklmnopqrstuvwxyz234567")  # a spreadsheet never takes it for a number
    assert len({h, item_hash("Why?", "two", "one"), item_hash("Why ?", "one", "two"), item_hash("Why?", "one", "two ")}) == 4
    assert item_hash("a", "b\u0000c", "d") != item_hash("a", "b", "\u0000cd")  # no ambiguous joins


def test_read_sheet_checks_stored_hashes_and_computes_missing_ones(tmp_path):
    sheet, _ = build_sheet([pair(1), pair(2)], seed=0)
    p = tmp_path / "sheet.jsonl"
    write_lines(p, [{k: v for k, v in s.items() if k != "item_hash"} for s in sheet])
    assert read_sheet(p) == sheet  # a sheet written before hashes: computed
    edited = [dict(sheet[0]), dict(sheet[1], answer_a="edited by hand")]
    write_lines(p, edited)
    with pytest.raises(DataError) as ei:
        read_sheet(p)
    assert ei.value.where == 2 and ei.value.field == "item_hash" and "rerun compare" in str(ei.value)


def test_load_annotations_keeps_current_rows_and_counts_stale_ones(tmp_path):
    p = write_lines(tmp_path / "a.jsonl", [
        {"item_id": "q1", "item_hash": HASHES["q1"], "choice": "A", "strength": "Better"},
        {"item_id": "q2", "item_hash": "ffffffffffffffff", "choice": "B", "strength": "Better"},
        {"item_id": "q3", "item_hash": HASHES["q3"], "choice": "", "strength": ""},  # not yet annotated
    ])
    got = load_annotations(p, HASHES)
    assert got.annotations == {"q1": ("A", "Better", "")} and got.stale == ["q2"]
    write_lines(p, [{"item_id": "q1", "item_hash": HASHES["q1"], "choice": "A", "strength": "Better"},
                    {"item_id": "q2", "choice": "B", "strength": "Better"}])
    with pytest.raises(DataError) as ei:
        load_annotations(p, HASHES, sheet_path="data/compare/x/sheet.jsonl")
    assert (ei.value.where, ei.value.field) == (2, "item_hash")
    assert f"python -m sciexplain.migrate_annotations --sheet data/compare/x/sheet.jsonl {p}" in str(ei.value)
    assert "\n" not in str(ei.value)
    write_lines(p, [{"item_id": "q1", "item_hash": HASHES["q1"], "choice": "A", "strength": "Better",
                     "annotator_type": "robot"}])
    with pytest.raises(DataError, match="line 1, field 'annotator_type'"):
        load_annotations(p, HASHES)
    write_lines(p, [{"item_id": "q1", "item_hash": 7, "choice": "A", "strength": "Better"}])
    with pytest.raises(DataError, match="line 1, field 'item_hash': must be a string"):
        load_annotations(p, HASHES)


def test_torn_last_line_and_deep_nesting_are_clean_errors(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"item_id": "q1", "item_hash": "x", "choice": "A", "strength": "Better"}\n{"item_id": "q2", "cho')
    expect_error(p, IDS, 2, None, "the last line is cut off")
    p.write_text("[" * 100_000 + "\n")
    expect_error(p, IDS, 1, None, "nested too deeply")


def test_append_annotation_latest_wins_and_no_duplicates(tmp_path):
    p = tmp_path / "sub" / "alice.jsonl"
    h = HASHES
    append_annotation(p, {"item_id": "q2", "item_hash": h["q2"], "choice": "a", "strength": "better"}, h)
    append_annotation(p, {"item_id": "q1", "item_hash": h["q1"], "choice": "B", "strength": "Unsure", "comment": "hm"}, h)
    append_annotation(p, {"item_id": "q2", "item_hash": h["q2"], "choice": "B", "strength": "Slightly better"}, h)
    lines = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]
    assert [x["item_id"] for x in lines] == ["q2", "q1"]  # replaced in place, no duplicate line
    assert lines[0] == {"item_id": "q2", "item_hash": h["q2"], "choice": "B", "strength": "Slightly better", "comment": ""}
    assert read_annotations(p, IDS) == {"q2": ("B", "Slightly better", ""), "q1": ("B", "Unsure", "hm")}
    assert [x.name for x in p.parent.iterdir()] == ["alice.jsonl"]
    with pytest.raises(DataError, match="item_id.*unknown"):
        append_annotation(p, {"item_id": "zz", "item_hash": h["q1"], "choice": "A", "strength": "Better"}, h)
    with pytest.raises(DataError, match="item_hash.*not the current sheet"):
        append_annotation(p, {"item_id": "q3", "item_hash": h["q1"], "choice": "A", "strength": "Better"}, h)
    with pytest.raises(DataError, match=".jsonl"):
        append_annotation(tmp_path / "alice.csv", {"item_id": "q1", "item_hash": h["q1"], "choice": "A",
                                                   "strength": "Better"}, h)
    # a stale row of another item is kept as it is; answering its item on the current sheet replaces it
    newer = dict(h, q2="feedfeedfeedfeed")
    append_annotation(p, {"item_id": "q1", "item_hash": h["q1"], "choice": "A", "strength": "Better"}, newer,
                      tmp_dir=tmp_path)
    assert load_annotations(p, newer).stale == ["q2"]
    append_annotation(p, {"item_id": "q2", "item_hash": newer["q2"], "choice": "A", "strength": "Better"}, newer)
    got = load_annotations(p, newer)
    assert got.stale == [] and got.annotations["q2"] == ("A", "Better", "")
    assert not list(tmp_path.glob(".*.tmp"))


def test_validate_annotation():
    assert validate_annotation({"item_id": "q1", "item_hash": HASHES["q1"], "choice": "b", "strength": " UNSURE"},
                               HASHES) == {"item_id": "q1", "item_hash": HASHES["q1"], "choice": "B",
                                           "strength": "Unsure", "comment": ""}
    ok = {"item_id": "q1", "item_hash": HASHES["q1"], "choice": "A", "strength": "Better"}
    for bad, field in [({"item_id": "q1", "item_hash": HASHES["q1"], "choice": "A"}, "strength"),
                       ({**ok, "choice": "", "strength": ""}, "strength"),
                       ({**ok, "a_model": "x"}, "a_model"),
                       ({**ok, "comment": 3}, "comment"),
                       ({k: v for k, v in ok.items() if k != "item_hash"}, "item_hash"),
                       ({**ok, "item_hash": ""}, "item_hash"),
                       ({**ok, "item_hash": HASHES["q2"]}, "item_hash")]:
        with pytest.raises(DataError) as ei:
            validate_annotation(bad, HASHES)
        assert ei.value.field == field


# ------------------------------------------------------------------ writers: work folder, lock, migration


def test_work_dir_is_outside_the_annotation_folder(tmp_path):
    (tmp_path / ".dvc").mkdir()
    out = tmp_path / "data" / "annotations" / "base_vs_sft" / "alice.jsonl"
    assert work_dir(out) == tmp_path / ".annotate-work" / "data" / "annotations" / "base_vs_sft"
    assert work_dir(tmp_path / "x" / "pair" / "a.jsonl") == tmp_path / ".annotate-work" / "x" / "pair"


def test_lock_is_exclusive_and_cleans_what_a_crash_left(tmp_path):
    (tmp_path / ".dvc").mkdir()
    out = tmp_path / "data" / "annotations" / "p" / "alice.jsonl"
    out.parent.mkdir(parents=True)
    work = work_dir(out)
    work.mkdir(parents=True)
    left = [work / ".alice.jsonl.abc123.tmp", out.parent / ".alice.jsonl.old999.tmp"]  # new and old temp places
    other = work / ".bob.jsonl.abc123.tmp"  # another file's: not ours to remove
    for p in left + [other]:
        p.write_bytes(b"x" * 1000)
    lock = AnnotationLock(out)
    assert sorted(lock.cleaned) == sorted(left) and not any(p.exists() for p in left) and other.exists()
    with pytest.raises(UserError, match=f"already open in another annotation server or migration \\(pid {os.getpid()}"):
        AnnotationLock(out)
    lock.release()
    with AnnotationLock(out):  # free again
        pass
    assert (tmp_path / ".annotate-work" / ".gitignore").read_text() == "*\n"


def test_migrate_stamps_the_current_sheet(tmp_path):
    sheet, _ = build_sheet([pair(1), pair(2), pair(3)], seed=0)
    hashes = sheet_hashes(sheet)
    j = write_lines(tmp_path / "a.jsonl", [{"item_id": "q1", "choice": "A", "strength": "Better"},
                                           {"item_id": "q2", "item_hash": "0" * 16, "choice": "B", "strength": "Better"}])
    assert migrate_file(j, sheet) == {"stamped": 1, "kept": 1}
    got = load_annotations(j, hashes)
    assert got.annotations == {"q1": ("A", "Better", "")} and got.stale == ["q2"]  # a hash it had is never replaced
    c = write_csv(tmp_path / "b.csv", [("q1", "A", "Better", "x"), ("", "", "", ""), ("q3", "", "Unsure", "")])
    assert migrate_file(c, sheet) == {"stamped": 2, "kept": 0}
    assert load_annotations(c, hashes).annotations == {"q1": ("A", "Better", "x"), "q3": ("", "Unsure", "")}
    bad = write_lines(tmp_path / "c.jsonl", [{"item_id": "zz", "choice": "A", "strength": "Better"}])
    with pytest.raises(DataError, match="unknown item id"):
        migrate_file(bad, sheet)


def make(tmp_path, fmt, rows):
    if fmt == "csv":
        return write_csv(tmp_path / "a.csv", rows)
    return write_lines(tmp_path / "a.jsonl",
                       [dict(zip(("item_id", "choice", "strength", "comment"), r)) for r in rows])
