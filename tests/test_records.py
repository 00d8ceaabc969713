import json

import pytest

from sciexplain.records import DataError, atomic_path, normalize_text, read_jsonl, stable_id, write_jsonl


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
