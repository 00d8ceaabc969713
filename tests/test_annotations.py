import csv
import json

import pytest

from sciexplain.annotations import (
    STRENGTHS, Annotation, append_annotation, build_sheet, read_annotation_dir, read_annotations,
    read_sheet, validate_annotation, write_sheet_csv,
)
from sciexplain.io import DataError, write_jsonl

IDS = ["q1", "q2", "q3"]


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
        assert set(s) == {"item_id", "question", "answer_a", "answer_b"}
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
    assert list(rows[0]) == ["item_id", "question", "answer_a", "answer_b", "choice", "strength", "comment"]
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


def test_read_annotation_dir(tmp_path):
    write_csv(tmp_path / "alice.csv", [("q1", "A", "Better", "")])
    write_lines(tmp_path / "judge-gpt.jsonl", [{"item_id": "q2", "choice": "B", "strength": "Better"}])
    (tmp_path / ".bob.jsonl.123.tmp").write_text("junk")
    (tmp_path / "notes.txt").write_text("junk")
    got = read_annotation_dir(tmp_path, IDS)
    assert got == {"alice": {"q1": ("A", "Better", "")}, "judge-gpt": {"q2": ("B", "Better", "")}}
    write_lines(tmp_path / "alice.jsonl", [{"item_id": "q2", "choice": "B", "strength": "Better"}])
    with pytest.raises(DataError, match="second file for annotator 'alice'"):
        read_annotation_dir(tmp_path, IDS)


def test_append_annotation_latest_wins_and_no_duplicates(tmp_path):
    p = tmp_path / "sub" / "alice.jsonl"
    append_annotation(p, {"item_id": "q2", "choice": "a", "strength": "better"}, IDS)
    append_annotation(p, {"item_id": "q1", "choice": "B", "strength": "Unsure", "comment": "hm"}, IDS)
    append_annotation(p, {"item_id": "q2", "choice": "B", "strength": "Slightly better"}, IDS)
    lines = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]
    assert [x["item_id"] for x in lines] == ["q2", "q1"]  # replaced in place, no duplicate line
    assert lines[0] == {"item_id": "q2", "choice": "B", "strength": "Slightly better", "comment": ""}
    assert read_annotations(p, IDS) == {"q2": ("B", "Slightly better", ""), "q1": ("B", "Unsure", "hm")}
    assert [x.name for x in p.parent.iterdir()] == ["alice.jsonl"]
    with pytest.raises(DataError, match="item_id.*unknown"):
        append_annotation(p, {"item_id": "zz", "choice": "A", "strength": "Better"}, IDS)
    with pytest.raises(DataError, match=".jsonl"):
        append_annotation(tmp_path / "alice.csv", {"item_id": "q1", "choice": "A", "strength": "Better"}, IDS)


def test_validate_annotation():
    assert validate_annotation({"item_id": "q1", "choice": "b", "strength": " UNSURE"}, IDS) == \
        {"item_id": "q1", "choice": "B", "strength": "Unsure", "comment": ""}
    for bad, field in [({"item_id": "q1", "choice": "A"}, "strength"),
                       ({"item_id": "q1", "choice": "", "strength": ""}, "strength"),
                       ({"item_id": "q1", "choice": "A", "strength": "Better", "a_model": "x"}, "a_model"),
                       ({"item_id": "q1", "choice": "A", "strength": "Better", "comment": 3}, "comment")]:
        with pytest.raises(DataError) as ei:
            validate_annotation(bad, IDS)
        assert ei.value.field == field


def make(tmp_path, fmt, rows):
    if fmt == "csv":
        return write_csv(tmp_path / "a.csv", rows)
    return write_lines(tmp_path / "a.jsonl",
                       [dict(zip(("item_id", "choice", "strength", "comment"), r)) for r in rows])
