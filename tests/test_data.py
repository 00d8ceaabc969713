import csv
import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from sciexplain import markup, records, sources, splits
from sciexplain.records import DataError, stable_id

FIXTURES = Path(__file__).parent / "fixtures"


def test_html_to_text_keeps_paragraphs_lists_code_and_latex():
    html = ("<p>First <b>para</b> with $E = mc^2$.</p>\n<p>Second &amp; last:</p>"
            "<ol><li>one</li><li>two <code>x=1</code></li></ol><pre><code>def f():\n    return 1\n</code></pre>")
    text = markup.html_to_text(html)
    assert text == ("First para with $E = mc^2$.\n\nSecond & last:\n\n1. one\n2. two `x=1`\n\n"
                    "```\ndef f():\n    return 1\n```")


@pytest.mark.parametrize("html", ["<p>x</p><script>alert(1)</script>", '<img src=x onerror="alert(1)">',
                                  '<a href="javascript:alert(1)">x</a>'])
def test_html_to_text_refuses_script(html):
    with pytest.raises(markup.UnsafeHTML):
        markup.html_to_text(html)


def test_parse_tags_old_and_new_syntax():
    assert sources.parse_tags("<neural-networks><ai-design>") == ["neural-networks", "ai-design"]
    assert sources.parse_tags("&lt;a&gt;&lt;b&gt;") == ["a", "b"]
    assert sources.parse_tags("|thermodynamics|entropy|") == ["thermodynamics", "entropy"]
    assert sources.parse_tags(None) == []


def test_stackexchange_fixture():
    drops = records.Drops()
    recs = sources.load_stackexchange(FIXTURES / "Posts.xml", drops, min_score=1, domain="physics")
    by_q = {r["question"]: r for r in recs}
    assert set(by_q) == {"Why does ice float on water?", "What is entropy, <i>really</i>?"}
    ice = by_q["Why does ice float on water?"]
    assert ice["answer"].startswith("Ice is less dense")  # the accepted answer, above min_score
    assert "- density of ice: 0.92 g/cm$^3$" in ice["answer"] and "```\nrho = m / V\n```" in ice["answer"]
    assert ice["tags"] == ["water", "density"] and ice["domain"] == "physics" and ice["id"] == stable_id(ice["question"])
    assert by_q["What is entropy, <i>really</i>?"]["answer"] == r"Entropy counts microstates: $S = k_B \ln \Omega$."
    assert drops.counts == {"unsafe_html": 1, "no_answer_above_min_score": 1}


def test_stackexchange_accepted_below_min_score_falls_back_to_top_voted():
    recs = sources.load_stackexchange(FIXTURES / "Posts.xml", records.Drops(), min_score=5)
    ice = next(r for r in recs if r["post_id"] == 1)
    assert ice["answer"] == "Top voted but not accepted."


@pytest.mark.parametrize("body, expect", [
    ('<posts><row Id="1" PostTypeId="1" Title="x"></posts>', "line 1"),
    ('<posts>\n<row PostTypeId="1" Title="x" />\n</posts>', "field 'Id'"),
    ('<posts>\n<row Id="1" PostTypeId="one" Title="x" />\n</posts>', "field 'PostTypeId'"),
    ('<posts>\n<row Id="2" PostTypeId="2" ParentId="1" Score="1" Body="a"/>\n</posts>', "no question rows"),
])
def test_stackexchange_bad_input(tmp_path, body, expect):
    path = tmp_path / "Posts.xml"
    path.write_text(body)
    with pytest.raises(DataError) as e:
        sources.load_stackexchange(path, records.Drops())
    assert str(path) in str(e.value) and expect in str(e.value)


def test_stackexchange_non_utf8_and_empty(tmp_path):
    bad = tmp_path / "Posts.xml"
    bad.write_bytes(b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n<row Id="1" PostTypeId="1" Title="caf\xe9" />\n</posts>')
    with pytest.raises(DataError, match="line 3"):
        sources.load_stackexchange(bad, records.Drops())
    empty = tmp_path / "empty.xml"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        sources.load_stackexchange(empty, records.Drops())


def test_qa_csv_and_jsonl(tmp_path):
    c = tmp_path / "qa.csv"
    with open(c, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "field"])
        w.writerow(["What is a gene?", "A gene is a\nstretch of DNA.", "Biology"])
        w.writerow(["What is a star?", "", "Astronomy"])
    recs = sources.load_qa(c, records.Drops(), domain_field="field")
    assert [(r["question"], r["answer"], r["domain"]) for r in recs] == [
        ("What is a gene?", "A gene is a\nstretch of DNA.", "biology"), ("What is a star?", None, "astronomy")]
    j = tmp_path / "qa.jsonl"
    j.write_text(json.dumps({"q": "Why?"}) + "\n" + json.dumps({"x": 1}) + "\n")
    with pytest.raises(DataError, match=r"line 2.*field 'q'"):
        sources.load_qa(j, records.Drops(), question_field="q")
    bad = tmp_path / "bad.csv"
    bad.write_text("title,answer\nx,y\n")
    with pytest.raises(DataError, match="field 'question'.*missing column"):
        sources.load_qa(bad, records.Drops())


def test_dedupe_and_length_filter():
    drops = records.Drops()
    recs = [sources._record(q, "physics", "t", a) for q, a in
            [("Why is the sky blue?", None), ("why is the SKY blue", "dup"), ("Hi?", None), ("What is light?", "x " * 50)]]
    recs = splits.dedupe(recs, drops)
    assert len(recs) == 3 and drops.counts["duplicate"] == 1
    kept = splits.filter_lengths(recs, lambda t: len(t.split()), drops, 2, 10, 20)
    assert [r["question"] for r in kept] == ["Why is the sky blue?", "What is light?"]
    assert kept[1]["answer"] is None
    assert drops.counts == {"duplicate": 1, "question_too_short": 1, "answer_too_long": 1}


def _bank(n):
    return [sources._record(f"Question number {i} about physics?", "physics", "bank") for i in range(n)]


def test_split_is_disjoint_deterministic_and_stable_when_sft_grows():
    recs = _bank(40)
    a = splits.split(recs, {"sft": 10, "rm": 5, "rs": 5, "eval": 5}, seed=0)
    b = splits.split(list(reversed(recs)), {"sft": 10, "rm": 5, "rs": 5, "eval": 5}, seed=0)
    assert a == b
    ids = [r["id"] for s in a.values() for r in s]
    assert len(ids) == len(set(ids)) == 25
    bigger = splits.split(recs, {"sft": 15, "rm": 5, "rs": 5, "eval": 5}, seed=0)
    for name in ("eval", "rs", "rm"):
        assert bigger[name] == a[name]
    assert splits.split(recs, {"sft": 10, "rm": 5, "rs": 5, "eval": 5}, seed=1)["eval"] != a["eval"]


def test_split_too_large_and_external_eval():
    recs = _bank(10)
    with pytest.raises(DataError, match="ask for 12 questions but only 10"):
        splits.split(recs, {"sft": 6, "rm": 2, "rs": 2, "eval": 2}, seed=0)
    ext = recs[:3]
    s = splits.split(recs, {"sft": 4, "rm": 1, "rs": 1, "eval": 99}, seed=0, eval_records=ext)
    assert s["eval"] == sorted(ext, key=lambda r: r["id"])
    assert not {r["id"] for r in ext} & {r["id"] for n in ("sft", "rm", "rs") for r in s[n]}


def test_split_refuses_a_missing_or_boolean_size():
    """A missing prepare.splits.rs once wrote an empty rs file; every split needs its size (eval may come from
    prepare.eval_file instead)."""
    recs = _bank(20)
    with pytest.raises(DataError, match="prepare.splits.*rs.*missing split size"):
        splits.split(recs, {"sft": 4, "rm": 2, "eval": 2}, seed=0)
    with pytest.raises(DataError, match="non-negative integer, not True"):
        splits.split(recs, {"sft": 4, "rm": 2, "rs": True, "eval": 2}, seed=0)
    assert splits.split(recs, {"sft": 4, "rm": 2, "rs": 2}, seed=0, eval_records=recs[:2])["eval"]


def test_question_bank_shipped_with_the_project():
    recs = sources.load_bank(Path(__file__).parents[1] / "data/raw/questions.jsonl", records.Drops())
    assert len(recs) >= 400
    assert len({r["id"] for r in recs}) == len(recs)
    domains = {r["domain"] for r in recs}
    assert domains == {"physics", "chemistry", "biology", "earth_science", "astronomy", "general_science"}
    raw = [json.loads(line) for line in (Path(__file__).parents[1] / "data/raw/questions.jsonl").read_text().splitlines()]
    assert all(r["id"] == stable_id(r["question"]) for r in raw)


# ---- the real data in ../shared/data (skipped when absent)
needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")


@needs_shared
def test_real_stackexchange_dump():
    drops = records.Drops()
    recs = sources.load_stackexchange(SHARED_DATA / "stackexchange-ai/Posts.xml", drops, min_score=1)
    assert 250 < len(recs) <= 421  # 421 questions in the dump
    assert all(r["question"] and r["answer"] for r in recs)
    assert not any("&lt;" in r["answer"] or "<p>" in r["answer"] for r in recs)
    assert any("$" in r["answer"] for r in recs)  # MathJax kept
    assert sum(drops.counts.values()) + len(recs) == 421
    back = next(r for r in recs if r["post_id"] == 1)
    assert back["question"] == 'What is "backprop"?' and back["tags"] == ["neural-networks", "definitions"]


@needs_shared
@pytest.mark.parametrize("rel, domain_field", [("stackexchange-skeptics/qa.jsonl", "category"),
                                               ("expertqa-science/train.jsonl", "field")])
def test_real_qa_files(rel, domain_field):
    drops = records.Drops()
    recs = sources.load_qa(SHARED_DATA / rel, drops, domain_field=domain_field)
    assert len(recs) > 100 and all(r["answer"] for r in recs)
    deduped = splits.dedupe(recs, drops)
    assert len({r["id"] for r in deduped}) == len(deduped)


def _posts(tmp_path, rows):
    body = "".join(f"<row {' '.join(f'{k}={json.dumps(str(v))}' for k, v in r.items())} />\n" for r in rows)
    path = tmp_path / "Posts.xml"
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n{body}</posts>\n')
    return path


def test_duplicate_post_ids_are_counted_and_never_paired(tmp_path):
    q = lambda i, title: {"Id": i, "PostTypeId": 1, "Title": title, "Body": "&lt;p&gt;b&lt;/p&gt;", "Score": 1}  # noqa: E731
    a = lambda i, parent, text: {"Id": i, "PostTypeId": 2, "ParentId": parent, "Body": text, "Score": 5}  # noqa: E731
    path = _posts(tmp_path, [q(1, "Why is the sky blue at noon?"), a(2, 1, "Rayleigh scattering."),
                             q(3, "Why do magnets attract iron?"), q(3, "What is a duplicate question id?"),
                             a(4, 3, "An answer of the repeated id."), a(5, 1, "dup a"), a(5, 3, "dup b")])
    drops = records.Drops()
    recs = sources.load_stackexchange(path, drops)
    assert [(r["post_id"], r["answer"]) for r in recs] == [(1, "Rayleigh scattering.")]
    assert drops.counts["duplicate_post_id_question"] == 2 and drops.counts["duplicate_post_id_answer"] == 2
    assert drops.counts["answer_of_duplicate_question"] == 1


def test_oversized_posts_are_dropped_and_counted(tmp_path):
    big = "&lt;p&gt;" + "x " * (sources.MAX_BODY_CHARS // 2 + 10) + "&lt;/p&gt;"
    path = _posts(tmp_path, [{"Id": 1, "PostTypeId": 1, "Title": "A huge question body?", "Body": big, "Score": 1},
                             {"Id": 2, "PostTypeId": 1, "Title": "A small question here?", "Body": "ok", "Score": 1},
                             {"Id": 3, "PostTypeId": 2, "ParentId": 2, "Body": "A fine answer.", "Score": 3}])
    drops = records.Drops()
    assert [r["post_id"] for r in sources.load_stackexchange(path, drops)] == [2]
    assert drops.counts["question_too_large"] == 1


def test_many_block_tags_convert_like_few():
    body = "<p>a</p>" * 3000 + "<ul><li>x</li></ul><pre>code</pre>"
    text = markup.html_to_text(body)
    assert text == "\n\n".join(["a"] * 3000) + "\n\n- x\n\n```\ncode\n```"


def test_malformed_csv_rows_name_the_line(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhy is water wet?,Because.\nWhy, oh why?,two,extra\n")
    with pytest.raises(DataError, match=r"qa.csv, line 3: .*fields but the header has 2"):
        sources.load_qa(path, records.Drops())
    path.write_text("question,answer\nWhy is water wet?\n")
    with pytest.raises(DataError, match=r"line 2, field 'answer': missing"):
        sources.load_qa(path, records.Drops())


def test_source_spec_errors(tmp_path):
    with pytest.raises(DataError, match="field 'min_scor'.*unknown key; allowed: type, path, domain, min_score"):
        sources.load_source({"type": "stackexchange", "path": "x.xml", "min_scor": 2}, records.Drops())
    (tmp_path / "dump").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        sources.load_source({"type": "stackexchange", "path": str(tmp_path / "dump")}, records.Drops())
