"""Human preference pairs: Stack Exchange votes -> pairs, plain pair files, the split by question."""
import json
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA
from sciexplain import sources
from sciexplain.human_pairs import (load_pairs, load_source, margin_from_gap, prepared_question_ids, read_pair_file,
                                    split_pairs, stackexchange_pairs)
from sciexplain.records import DataError, Drops, stable_id

FIXTURES = ROOT / "tests" / "fixtures"
SHIPPED = ROOT / "data" / "raw" / "human_pairs" / "ai_stackexchange.jsonl"


def _posts(tmp_path, rows: list[str]) -> Path:
    path = tmp_path / "site" / "Posts.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n")
    return path


def _q(i, title="Why is the sky blue?"):
    return f'<row Id="{i}" PostTypeId="1" Score="3" Title="{title}" Body="&lt;p&gt;body&lt;/p&gt;" />'


def _a(i, parent, score, body=None, date=None):
    d = f' CreationDate="{date}"' if date else ""
    return (f'<row Id="{i}" PostTypeId="2" ParentId="{parent}" Score="{score}"{d} OwnerUserId="{100 + i}" '
            f'Body="&lt;p&gt;{body or f"answer {i}"}&lt;/p&gt;" />')


# --------------------------------------------------------------------------- Stack Exchange
def test_fixture_posts_to_pairs():
    drops = Drops()
    pairs = stackexchange_pairs(FIXTURES / "Posts.xml", drops, min_score_gap=1)
    by_q = {p["question_post_id"]: p for p in pairs}
    assert sorted(by_q) == [1, 4]  # 7: its only answer has a script; 9: no answer
    assert by_q[1]["chosen"] == "Top voted but not accepted." and by_q[1]["chosen_score"] == 9
    assert by_q[1]["rejected"].startswith("Ice is less dense") and "- density of ice" in by_q[1]["rejected"]
    assert by_q[4]["chosen"].startswith("Entropy counts microstates: $S = k_B") and by_q[4]["score_gap"] == 3
    assert by_q[1]["margin"] == margin_from_gap(5) and by_q[1]["chosen_later"] is None  # the fixture has no dates
    assert drops.counts["unsafe_html_answer"] == 1
    # the same question text and stable id as the prepare stage gives the same question
    prepared = {r["post_id"]: r for r in sources.load_stackexchange(FIXTURES / "Posts.xml", Drops(), min_score=0)}
    for qid, p in by_q.items():
        assert p["question"] == prepared[qid]["question"] and p["id"] == prepared[qid]["id"] == stable_id(p["question"])
    assert stackexchange_pairs(FIXTURES / "Posts.xml", Drops(), min_score_gap=4)[0]["question_post_id"] == 1


def test_margin_is_log_scaled_and_capped():
    assert [margin_from_gap(g) for g in (0, 1, 3, 7, 15, 40)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert margin_from_gap(1, full_gap=1) == 1.0


def test_gap_cap_and_later_posted_higher_score_first(tmp_path):
    rows = [_q(1), _a(2, 1, 10, date="2016-01-01T00:00:00.000"), _a(3, 1, 6, date="2016-01-02T00:00:00.000"),
            _a(4, 1, 1, date="2016-01-03T00:00:00.000"), _a(5, 1, 9, date="2016-01-04T00:00:00.000"),
            _a(6, 1, 0)]  # no date
    drops = Drops()
    pairs = stackexchange_pairs(_posts(tmp_path, rows), drops, min_score_gap=2, max_pairs_per_question=3)
    got = [(p["chosen_post_id"], p["rejected_post_id"]) for p in pairs]
    # later-posted higher-scored first (5 > 4, gap 8, then 5 > 3, gap 3), then undated (2 > 6, gap 10) ...
    assert got == [(5, 4), (5, 3), (2, 6)]
    assert [p["chosen_later"] for p in pairs] == [True, True, None]
    # all pairs with gap >= 2: (2,3) (2,4) (2,6) (3,4) (3,6) (5,3) (5,4) (5,6) (2,5 gap 1: no) -> 8, 3 kept
    assert drops.counts["pairs_over_per_question_cap"] == 5
    assert all(p["chosen_score"] - p["rejected_score"] >= 2 for p in pairs)
    assert pairs[0]["url"] == "https://site.stackexchange.com/q/1" and pairs[0]["chosen_url"].endswith("/a/5")
    assert pairs[0]["chosen_author"] == "https://site.stackexchange.com/users/105"
    assert stackexchange_pairs(_posts(tmp_path, rows), Drops(), min_score_gap=11) == []


def test_duplicate_post_ids_are_counted_and_never_paired(tmp_path):
    rows = [_q(1, "First question?"), _q(1, "Second question with the same id?"), _a(2, 1, 5), _a(3, 1, 0),
            _q(10, "A clean question?"), _a(11, 10, 4), _a(12, 10, 0), _a(12, 10, 9), _a(13, 10, 1)]
    drops = Drops()
    pairs = stackexchange_pairs(_posts(tmp_path, rows), drops, min_score_gap=1)
    assert drops.counts["duplicate_post_id_rows"] == 4  # both copies of question 1 and of answer 12
    assert drops.counts["answer_of_duplicate_question_id"] == 2
    assert {p["question_post_id"] for p in pairs} == {10}
    assert {(p["chosen_post_id"], p["rejected_post_id"]) for p in pairs} == {(11, 13)}


@pytest.mark.skipif(not (SHARED_DATA / "stackexchange-ai/Posts.xml").exists(), reason="shared data not present")
def test_real_dump_and_the_shipped_file_regenerates():
    drops = Drops()
    pairs = stackexchange_pairs(SHARED_DATA / "stackexchange-ai/Posts.xml", drops, min_score_gap=2,
                                max_pairs_per_question=3, max_answer_chars=2500, site="ai.stackexchange.com")
    assert 150 <= len(pairs) <= 400 and drops.counts["duplicate_post_id_rows"] == 0
    per_q = {}
    for p in pairs:
        per_q[p["id"]] = per_q.get(p["id"], 0) + 1
        assert p["chosen_score"] - p["rejected_score"] >= 2 and p["chosen"] != p["rejected"]
        assert max(len(p["chosen"]), len(p["rejected"])) <= 2500 and 0 < p["margin"] <= 1
    assert max(per_q.values()) <= 3 and len(per_q) >= 100
    assert any(p["chosen_later"] for p in pairs) and any(p["chosen_later"] is False for p in pairs)
    shipped = [json.loads(line) for line in SHIPPED.read_text().splitlines()]
    assert shipped == json.loads(json.dumps(pairs))  # scripts/make_human_pairs.py's defaults


def test_shipped_file_is_a_pair_source_with_attribution():
    assert SHIPPED.stat().st_size < 1_000_000
    pairs = read_pair_file(SHIPPED, Drops())
    assert 150 <= len(pairs) <= 400 and len({p["pair_id"] for p in pairs}) == len(pairs)
    raw = [json.loads(line) for line in SHIPPED.read_text().splitlines()]
    assert [p["pair_id"] for p in pairs] == [r["pair_id"] for r in raw] and [p["id"] for p in pairs] == [r["id"] for r in raw]
    assert all(p["url"].startswith("https://ai.stackexchange.com/q/") for p in pairs)
    note = (SHIPPED.parent / "ATTRIBUTION.md").read_text()
    for needed in ("CC BY-SA 4.0", "CC BY-SA 3.0", "ai.stackexchange.com", "Modified", "scripts/make_human_pairs.py"):
        assert needed in note


# --------------------------------------------------------------------------- plain pair files
def test_pair_files_jsonl_and_csv(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Why?", "chosen": "Because A.", "rejected": "No.", "strength": "better", "rater": "x"},
        {"question": "Why?", "chosen": "Because B.", "rejected": "No.", "margin": 0.5},
        {"question": "How?", "chosen": "Like so.", "rejected": "Dunno."}]) + "\n\n")
    got = read_pair_file(jl, Drops())
    assert [p["margin"] for p in got] == [0.6667, 0.5, None] and got[0]["strength"] == "Better"
    assert got[0]["rater"] == "x" and got[0]["id"] == got[1]["id"] == stable_id("Why?") and got[0]["source"] == "pairs:p.jsonl"
    csv = tmp_path / "p.csv"
    csv.write_text('question,chosen,rejected,strength,margin\nWhy?,"Because A.\nTwo lines.",No.,,0.25\nHow?,Like so.,Dunno.,Slightly better,\n')
    got = read_pair_file(csv, Drops())
    assert got[0]["chosen"] == "Because A.\nTwo lines." and got[0]["margin"] == 0.25 and got[1]["margin"] == 0.3333


@pytest.mark.parametrize("name,text,where,field", [
    ("p.jsonl", '{"question": "Q", "chosen": "a", "rejected": "b"}\n{"question": "Q", "rejected": "b"}\n', "line 2", "chosen"),
    ("p.jsonl", '{"question": "Q", "chosen": "same", "rejected": " same"}\n', "line 1", "rejected"),
    ("p.jsonl", '{"question": "Q", "chosen": "a", "rejected": "b", "strength": "Unsure"}\n', "line 1", "strength"),
    ("p.jsonl", '{"question": "Q", "chosen": "a", "rejected": "b", "strength": "great"}\n', "line 1", "strength"),
    ("p.jsonl", '{"question": "Q", "chosen": "a", "rejected": "b", "strength": "Better", "margin": 1}\n', "line 1", "margin"),
    ("p.jsonl", '{"question": "Q", "chosen": "a", "rejected": "b", "margin": -1}\n', "line 1", "margin"),
    ("p.jsonl", '\n{"question": "Q", "chosen": "a", "rejected": "b", "margin": "lots"}\n', "line 2", "margin"),
    ("p.jsonl", '{"question": "Q", "chosen": 3, "rejected": "b"}\n', "line 1", "chosen"),
    ("p.jsonl", '{"question": "Q", "chosen": "a", "rejected": "b"}\n{not json\n', "line 2", None),
    ("p.csv", "question,chosen\nQ,a\n", "line 1", "rejected"),
    ("p.csv", 'question,chosen,rejected\nQ,"a\nb",c\nQ2,,c\n', "line 4", "chosen"),
    ("p.csv", "question,chosen,rejected\nQ,a,b,extra\n", "line 2", None),
])
def test_pair_file_errors_name_file_line_and_field(tmp_path, name, text, where, field):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_pair_file(path, Drops())
    msg = str(e.value)
    assert name in msg and where in msg, msg
    if field:
        assert f"field '{field}'" in msg, msg


def test_source_specs_are_checked(tmp_path):
    with pytest.raises(DataError, match="unknown source type"):
        load_source({"type": "bank", "path": "x"}, Drops())
    with pytest.raises(DataError, match="field 'min_score'"):
        load_source({"type": "stackexchange", "path": "x", "min_score": 2}, Drops())
    with pytest.raises(DataError, match="field 'path'"):
        load_source({"type": "pairs"}, Drops())
    with pytest.raises(DataError, match="file not found"):
        load_source({"type": "pairs", "path": "missing.jsonl"}, Drops(), root=tmp_path)
    with pytest.raises(DataError, match="validate.sources"):
        load_pairs([], Drops())


def test_stackexchange_source_defaults_and_dedupe(tmp_path):
    posts = _posts(tmp_path, [_q(1), _a(2, 1, 5), _a(3, 1, 4), _a(4, 1, 0)])
    spec = {"type": "stackexchange", "path": str(posts)}
    assert len(load_source(spec, Drops(), defaults={"min_score_gap": 1})) == 3
    assert len(load_source({**spec, "min_score_gap": 5}, Drops(), defaults={"min_score_gap": 1})) == 1
    drops = Drops()
    assert len(load_pairs([spec, spec], drops, defaults={"min_score_gap": 2})) == 2
    assert drops.counts["duplicate_pair"] == 2


# --------------------------------------------------------------------------- split
def _pairs(n_questions, per_q=2):
    return [{"id": stable_id(f"question {q}?"), "pair_id": f"{q}-{k}", "question": f"question {q}?"}
            for q in range(n_questions) for k in range(per_q)]


def test_split_by_question_disjoint_from_prepared_and_deterministic(tmp_path):
    pairs = _pairs(40)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "eval.jsonl").write_text(json.dumps({"id": stable_id("Question 3"), "question": "Question 3"}) + "\n")
    (prepared / "rm.jsonl").write_text(json.dumps({"id": stable_id("question 7?"), "question": "question 7?"}) + "\n")
    excluded = prepared_question_ids(prepared)
    drops = Drops()
    train, test = split_pairs(pairs, 0.25, 0, excluded, drops)
    assert drops.counts["in_prepared_split"] == 4  # both pairs of questions 3 and 7
    train_q, test_q = {p["id"] for p in train}, {p["id"] for p in test}
    assert not train_q & test_q and not (train_q | test_q) & excluded
    assert len(test_q) == round(0.25 * 38) and len(train) + len(test) == 76
    assert split_pairs(pairs, 0.25, 0, excluded) == (train, test)
    assert {p["id"] for p in split_pairs(pairs, 0.25, 1, excluded)[1]} != test_q
    with pytest.raises(DataError, match="validate.test_fraction"):
        split_pairs(pairs, 1.0, 0)
    with pytest.raises(DataError, match="run the prepare stage"):
        prepared_question_ids(tmp_path / "nothing")
