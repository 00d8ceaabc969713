import json

import pytest

from sciexplain.records import (DataError, atomic_path, first_answers, new_dir, normalize_text, read_csv_table, read_jsonl,
                                stable_id, write_jsonl)
from sciexplain.splits import hash_key, hash_order


def test_stable_id_ignores_case_space_and_final_punctuation():
    assert stable_id("Why is the sky blue?") == stable_id("  why is the  SKY blue ")
    assert stable_id("Why is the sky blue?") != stable_id("Why is the sea blue?")
    assert len(stable_id("x")) == 16
    assert normalize_text("A\u00a0B?") == "a b"


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"id": "1"}])

    def boom():
        yield {"id": "2"}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(target, boom())
    assert read_jsonl(target) == [{"id": "1"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp file left


def test_atomic_path_creates_nothing_on_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "sub" / "x.json") as tmp:
            tmp.write_text("half")
            raise ValueError
    assert list((tmp_path / "sub").iterdir()) == []


@pytest.mark.parametrize("content, expect", [
    (b'{"question": "a"}\n{"question": \n', "line 2"),
    (b'{"question": "a"}\n[1, 2]\n', "line 2"),
    (b'{"question": "a"}\n{"other": 1}\n', "field 'question'"),
    (b'{"question": "caf\xe9"}\n', "not valid UTF-8"),
    (b"", "empty"),
])
def test_read_jsonl_errors_name_file_line_field(tmp_path, content, expect):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_jsonl(path, required=("question",))
    assert str(path) in str(e.value) and expect in str(e.value)


def test_read_jsonl_accepts_bom_and_blank_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"question": "q"}).encode() + b"\n\n")
    assert read_jsonl(path, required=("question",)) == [{"question": "q"}]


def test_outputs_follow_the_umask_not_tempfiles_0600(tmp_path):
    import os
    import stat

    from pathlib import Path

    from sciexplain.records import _UMASK, replace_dir, write_json

    write_json(tmp_path / "m.json", {"a": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode) == 0o666 & ~_UMASK
    import tempfile

    new = Path(tempfile.mkdtemp(dir=tmp_path))
    replace_dir(new, tmp_path / "out")
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o777 & ~_UMASK


def test_new_dir_swaps_in_whole_or_not_at_all(tmp_path):
    out = tmp_path / "pair"
    with new_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with new_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair"]  # no temp folder left


def test_read_csv_table_checks_header_quoting_and_encoding(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(b"\xef\xbb\xbfQuestion , Answer\r\n\r\n\"a, b\",c\r\n")
    header, rows = read_csv_table(p, ("question",), lower=True)
    assert header == ["question", "answer"] and rows == [(3, ["a, b", "c"])]
    with pytest.raises(DataError, match=r"t.csv, line 1, field 'domain': missing column \(columns: question, answer\)"):
        read_csv_table(p, ("domain",), lower=True)
    p.write_text("q,a\n\"open,x\n")
    with pytest.raises(DataError, match=r"line 2: bad CSV: a quote opened here is never closed"):
        read_csv_table(p)
    p.write_bytes(b"q,a\nx,caf\xe9\n")
    with pytest.raises(DataError, match=r"line 2: not valid UTF-8"):
        read_csv_table(p)
    p.write_text("q,a\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        read_csv_table(p)
    assert read_csv_table(p, rows_needed=False) == (["q", "a"], [])


def test_first_answers_takes_sample_zero_and_names_the_line(tmp_path):
    p = tmp_path / "eval.jsonl"
    write_jsonl(p, [{"id": "q1", "model": "sft", "sample": 1, "answer": "b"},
                    {"id": "q1", "model": "sft", "sample": 0, "answer": "a"}])
    assert first_answers(p, model="sft") == {"q1": {"id": "q1", "model": "sft", "sample": 0, "answer": "a"}}
    with pytest.raises(DataError, match=r"line 1, field 'model': expected 'rs', got 'sft'"):
        first_answers(p, model="rs")
    write_jsonl(p, [{"id": "q1", "answer": "a"}, {"id": "q1", "answer": "b"}])
    with pytest.raises(DataError, match=r"line 2, field 'id': a second sample-0 answer"):
        first_answers(p)


def test_hash_order_is_the_seed_colon_key_sha256_ranking():
    import hashlib

    ids = [f"q{i}" for i in range(20)]
    want = sorted(ids, key=lambda i: hashlib.sha256(f"3:{i}".encode()).hexdigest())
    assert hash_order(reversed(ids), 3, key=str) == want
    assert hash_key(3, "q1", salt="reward-val") == hashlib.sha256(b"reward-val:3:q1").hexdigest()
