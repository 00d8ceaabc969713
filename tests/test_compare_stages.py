"""The compare -> judge -> winrate stages on hand-made generation files (CliRunner, no DVC)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT, WordCountScorer, read_jsonl, write_params


def set_pairs(path, *names):
    """compare.pairs = exactly these pairs ({x_vs_y: [x, y]}; write_params would merge mappings)."""
    write_params(path, {"compare": {"pairs": None}})
    write_params(path, {"compare": {"pairs": {n: n.split("_vs_") for n in names}}})
from sciexplain.sheets import item_hash
from stages import compare, judge, winrate

PROMPT = str(ROOT / "prompts" / "judge.md")
QUESTIONS = ["Why is the sky blue?", "Why does ice float on water?", "How do vaccines train the immune system?",
             "Why do seasons change on Earth?"]
GOOD = ("{q} The short answer is a physical mechanism. Sunlight, water and molecules follow simple laws, and "
        "scientists describe them with measurable quantities.\n\nFirst, the cause acts on a small scale; therefore "
        "the effect appears on a large scale, which is called emergence. However, the details depend on conditions.\n\n"
        "In summary, the mechanism explains the observation in a few clear steps.")
POOR = "Great question!!! I think it's just how things are lol. Hope this helps!!"


def ids():
    return [f"q{i:02d}" for i in range(len(QUESTIONS))]


@pytest.fixture()
def project(workdir):
    """Prepared eval questions, base (poor) and sft (good) answers, params for the three stages."""
    prepared = [{"id": i, "question": q, "domain": "physics"} for i, q in zip(ids(), QUESTIONS)]
    _write(workdir / "data/prepared/eval.jsonl", prepared)
    for model, text in (("base", POOR), ("sft", GOOD), ("teacher", GOOD)):
        recs = [{"id": i, "question": q, "model": model, "sample": s, "answer": text.format(q=q) + ("" if s == 0 else " Again."),
                 "completion_tokens": 50, "finished": True} for i, q in zip(ids(), QUESTIONS) for s in (0, 1)]
        recs.append({**recs[0], "id": "not-in-eval"})  # ignored: not an eval question
        _write(workdir / f"data/generations/{model}/eval.jsonl", recs)
    set_pairs(workdir / "params.yaml", "base_vs_sft")
    write_params(workdir / "params.yaml", {"compare": {"seed": 0}, "judge": {"panel": [{"name": "rubric", "type": "rubric"}]}})
    return workdir


def _write(path: Path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def run(cmd, args=()):
    r = CliRunner().invoke(cmd.main, list(args))
    assert r.exit_code == 0, r.output
    return r


def fails(cmd, args=()):
    r = CliRunner().invoke(cmd.main, list(args))
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    return r.output


def test_compare_builds_blind_sheets(project):
    set_pairs(project / "params.yaml", "base_vs_sft", "sft_vs_teacher")
    run(compare)
    d = project / "data/compare/base_vs_sft"
    sheet, key = read_jsonl(d / "sheet.jsonl"), read_jsonl(d / "key.jsonl")
    assert [s["item_id"] for s in sheet] == ids() and [s["question"] for s in sheet] == QUESTIONS
    assert "base" not in (d / "sheet.jsonl").read_text() and set(sheet[0]) == {
        "item_id", "item_hash", "question", "answer_a", "answer_b", "finished_a", "finished_b"}
    assert all(s["item_hash"] == item_hash(s["question"], s["answer_a"], s["answer_b"]) for s in sheet)
    for s, k in zip(sheet, key):
        assert {k["a_model"], k["b_model"]} == {"base", "sft"}
        good = "answer_a" if k["a_model"] == "sft" else "answer_b"
        assert s[good].startswith(s["question"]) and "Again" not in s[good]  # sample 0
    assert {k["a_model"] for k in key} == {"base", "sft"}  # A/B shuffled
    rows = list(csv.DictReader((d / "sheet.csv").open(encoding="utf-8-sig")))
    assert [r["item_id"] for r in rows] == ids() and rows[0]["choice"] == ""
    assert [r["item_hash"] for r in rows] == [s["item_hash"] for s in sheet]  # a filled-in copy carries the hashes
    assert (project / "data/compare/sft_vs_teacher/key.jsonl").exists()
    assert json.loads((d / "meta.json").read_text()) == {
        "pair": "base_vs_sft", "models": ["base", "sft"], "split": "eval", "questions": 4, "items": 4,
        "excluded_dropped_answers": {"base": 0, "sft": 0}}
    before = (d / "sheet.jsonl").read_bytes(), (d / "key.jsonl").read_bytes()
    teacher = (project / "data/compare/sft_vs_teacher/sheet.jsonl").read_bytes()
    run(compare, ["--pair", "base_vs_sft"])  # one pair (as compare@base_vs_sft runs): only its folder is written
    assert ((d / "sheet.jsonl").read_bytes(), (d / "key.jsonl").read_bytes()) == before  # deterministic
    assert (project / "data/compare/sft_vs_teacher/sheet.jsonl").read_bytes() == teacher
    assert "no such pair" in fails(compare, ["--pair", "rs_vs_base"])


def test_compare_leaves_out_answers_their_stage_dropped(project):
    """A teacher answer its own filter dropped (keep: false) is no answer: the item leaves the sheet, counted."""
    path = project / "data/generations/teacher/eval.jsonl"
    recs = read_jsonl(path)
    recs[2].update(keep=False, drop_reason="empty")  # q01, sample 0
    _write(path, recs)
    set_pairs(project / "params.yaml", "sft_vs_teacher")
    run(compare)
    sheet = read_jsonl(project / "data/compare/sft_vs_teacher/sheet.jsonl")
    assert [s["item_id"] for s in sheet] == [i for i in ids() if i != "q01"]
    meta = json.loads((project / "data/compare/sft_vs_teacher/meta.json").read_text())
    assert meta["questions"] == 4 and meta["excluded_dropped_answers"] == {"sft": 0, "teacher": 1}


def test_compare_missing_answer_names_the_file(project):
    path = project / "data/generations/sft/eval.jsonl"
    _write(path, [r for r in read_jsonl(path) if not (r["id"] == "q02" and r["sample"] == 0)])
    out = fails(compare)
    assert "data/generations/sft/eval.jsonl" in out and "q02" in out


@pytest.mark.parametrize("pairs, words", [({"base-sft": ["base", "sft"]}, "base-sft"),
                                          ({"base_vs_base": ["base", "base"]}, "base_vs_base"),
                                          ({"base_vs_sft": ["sft", "base"]}, "compare.pairs.base_vs_sft"),
                                          ({"base_vs_rs": ["base", "rs"]}, "data/generations/rs/eval.jsonl")])
def test_compare_bad_pairs(project, pairs, words):
    write_params(project / "params.yaml", {"compare": {"pairs": None}})
    write_params(project / "params.yaml", {"compare": {"pairs": pairs}})
    assert words in fails(compare)


def test_judge_and_winrate_then_a_human_file(project, tiny_base):
    write_params(project / "params.yaml", {"judge": {"panel": [
        {"name": "rubric", "type": "rubric"},
        {"name": "tiny", "type": "llm", "backend": "local", "max_new_tokens": 3}]}})
    run(compare)
    run(judge, ["--base", str(tiny_base), "--prompt", PROMPT])
    jdir = project / "data/judgments/base_vs_sft"
    assert sorted(p.name for p in jdir.iterdir()) == ["judge-rubric.jsonl", "judge-tiny.jsonl"]
    assert (project / "data/cache/judge/tiny.jsonl").exists()
    jm = json.loads((project / "metrics/judge.json").read_text())  # (judge@<pair> writes metrics/judge/<pair>.json)
    assert jm["judges"] == ["rubric", "tiny"] and jm["pairs"]["base_vs_sft"]["tiny"]["calls"] == 8
    assert "hits" not in jm["pairs"]["base_vs_sft"]["tiny"]  # metrics do not depend on the cache state
    key = {k["item_id"]: k for k in read_jsonl(project / "data/compare/base_vs_sft/key.jsonl")}
    hashes = {s["item_id"]: s["item_hash"] for s in read_jsonl(project / "data/compare/base_vs_sft/sheet.jsonl")}
    for rec in read_jsonl(jdir / "judge-rubric.jsonl"):  # the rubric prefers sft everywhere
        assert rec["choice"] == ("A" if key[rec["item_id"]]["a_model"] == "sft" else "B")
        assert rec["item_hash"] == hashes[rec["item_id"]] and rec["annotator_type"] == "judge"  # bound, and a judge

    run(winrate)
    metrics_path = project / "metrics/compare/base_vs_sft.json"
    m = json.loads(metrics_path.read_text())
    assert m["judge_annotators"] == ["judge-rubric", "judge-tiny"] and m["human_annotators"] == []
    assert m["humans"] is None and m["judge_vs_humans"] is None and "all" not in m  # never pooled
    assert m["annotators"]["judge-rubric"] == {"kind": "judge", "n": 4, "ties": 0, "wins": {"base": 0, "sft": 4},
                                               "win_rate": {"base": 0.0, "sft": 1.0}}
    assert sorted(m["judges"]) == ["judge-rubric", "judge-tiny"]
    assert all(j["annotators"] == [name] for name, j in m["judges"].items())  # each judge on its own
    # no metrics/validate.json here: no judge is validated, the headline judge is the first by name
    assert m["headline_source"] == "judge-rubric" and (m["subject"], m["opponent"]) == ("sft", "base")
    assert m["win_rate"]["sft"] == m["judges"]["judge-rubric"]["models"]["sft"]["win_rate"] and m["n_sheet_items"] == 4
    assert m["verdict"]["verdict"] == "judge not validated" and m["verdict"]["n"] == 4
    assert "multiple_testing" not in m  # the report adjusts the pairs of the study as one family
    assert m["power_at_eval_n"]["n"] == 4 and m["excluded_dropped_answers"] == {"base": 0, "sft": 0}
    assert m["stale_rows"] == {f"data/judgments/base_vs_sft/judge-{n}.jsonl": 0 for n in ("rubric", "tiny")}
    from sciexplain.study_report import strength_rows
    plot = strength_rows("base_vs_sft", m)
    assert {(r[1], r[2], r[3]) for r in plot} >= {("base_vs_sft", "judge-rubric", "sft")}
    assert sum(r[5] for r in plot if r[2] == "judge-rubric" and r[3] == "sft") == 4

    # a human annotator who prefers base on every item, as a filled-in copy of sheet.csv
    sheet_csv = project / "data/compare/base_vs_sft/sheet.csv"
    rows = list(csv.DictReader(sheet_csv.open(encoding="utf-8-sig")))
    for r in rows:
        r["choice"] = "a" if key[r["item_id"]]["a_model"] == "base" else "B"
        r["strength"] = "better"
    human = project / "data/annotations/base_vs_sft/alice.csv"
    human.parent.mkdir(parents=True)
    with human.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    judged = {p.name: p.read_bytes() for p in jdir.iterdir()}
    run(winrate)
    m2 = json.loads(metrics_path.read_text())
    assert m2["human_annotators"] == ["alice"] and m2["humans"]["models"]["base"]["wins"] == 4
    assert m2["headline_source"] == "humans" and m2["win_rate"] == {"base": 1.0, "sft": 0.0}  # the judges said 0.0
    assert m2["verdict"]["human"] and m2["verdict"]["verdict"] == "cannot tell at this n"  # 4 of 4: p = 0.125
    assert m2["verdict"]["detectable_win_rate"] is None  # 4 decisive votes can never reach p <= 0.05
    assert m2["annotators"]["alice"] == {"kind": "human", "n": 4, "ties": 0, "wins": {"base": 4, "sft": 0},
                                         "win_rate": {"base": 1.0, "sft": 0.0}}
    assert m2["humans"]["n_annotators"] == 1 and m2["humans"]["annotators"] == ["alice"]
    assert m2["judges"] == m["judges"]  # the judges beside the humans are unchanged
    assert m2["judge_vs_humans"]["judge-rubric"]["agreement"] == 0.0 and m2["judge_vs_humans"]["judge-rubric"]["n"] == 4
    assert {p.name: p.read_bytes() for p in jdir.iterdir()} == judged  # judgments untouched

    # a human row about an item that is not on the sheet: one clean line naming the file
    with human.open("a", newline="", encoding="utf-8") as f:
        f.write('"zz-unknown","q","a","b","A","Better","","0123456789abcdef"\r\n')
    out = fails(winrate)
    assert "alice.csv" in out and "zz-unknown" in out


def test_judge_needs_sheets_and_valid_panel(project):
    assert "data/compare" in fails(judge)
    run(compare)
    write_params(project / "params.yaml", {"judge": {"panel": [{"name": "x", "type": "oracle"}]}})
    assert "judge.panel[0]" in fails(judge, ["--prompt", PROMPT])


def test_winrate_without_any_annotation_is_a_clean_error(project):
    write_params(project / "params.yaml", {"judge": {"panel": []}})
    run(compare)
    run(judge, ["--prompt", PROMPT])
    assert "no annotations for base_vs_sft" in fails(winrate)


# --------------------------------------------------------------------------- annotations bound to what was shown

SHEET = "data/compare/base_vs_sft/sheet.jsonl"
ALICE = "data/annotations/base_vs_sft/alice.jsonl"


@pytest.fixture()
def judged(project):
    """compare + the rubric judge done: winrate can run."""
    run(compare)
    run(judge, ["--prompt", PROMPT])
    return project


def _key(root):
    return {k["item_id"]: k for k in read_jsonl(root / "data/compare/base_vs_sft/key.jsonl")}


def _votes(root, prefer="base", **extra):
    """One row per sheet item for ``prefer``, bound to the item as the sheet shows it now."""
    key = _key(root)
    return [{"item_id": s["item_id"], "item_hash": s["item_hash"],
             "choice": "A" if key[s["item_id"]]["a_model"] == prefer else "B", "strength": "Better", **extra}
            for s in read_jsonl(root / SHEET)]


def _winrate(root):
    r = run(winrate)
    return json.loads((root / "metrics/compare/base_vs_sft.json").read_text()), r.stderr


def test_stale_human_rows_are_not_counted_and_are_reported(judged):
    """A/B order (compare.seed) or an answer changes after annotation: those votes no longer count, per file."""
    from sciexplain.sheets import _ab_swap

    _write(judged / ALICE, _votes(judged, "base"))  # alice prefers base everywhere, on the sheet of seed 0
    m, err = _winrate(judged)
    assert m["humans"]["models"]["base"]["wins"] == 4 and m["stale_rows"][ALICE] == 0 and "another version" not in err

    # a seed that flips the A/B order of some items, not all
    seed = next(s for s in range(1, 100) if 0 < sum(_ab_swap(s, i) != _ab_swap(0, i) for i in ids()) < 4)
    flipped = sum(_ab_swap(seed, i) != _ab_swap(0, i) for i in ids())
    write_params(judged / "params.yaml", {"compare": {"seed": seed}})
    run(compare)
    run(judge, ["--prompt", PROMPT])
    m, err = _winrate(judged)
    assert m["stale_rows"][ALICE] == flipped  # the old A/B votes would now name the other model
    assert m["humans"]["models"]["base"]["wins"] == 4 - flipped and m["humans"]["n_items"] == 4 - flipped
    assert m["annotators"]["alice"]["n"] == 4 - flipped
    warning = [line for line in err.splitlines() if ALICE in line]
    assert len(warning) == 1 and f"{flipped} of 4 rows" in warning[0] and "not counted" in warning[0]

    # regenerated answers: the item whose answer changed is stale too
    gen = judged / "data/generations/sft/eval.jsonl"
    recs = read_jsonl(gen)
    recs[0]["answer"] += " Revised."
    _write(gen, recs)
    run(compare)
    run(judge, ["--prompt", PROMPT])
    m, _ = _winrate(judged)
    assert m["stale_rows"][ALICE] == flipped + (0 if _ab_swap(seed, "q00") != _ab_swap(0, "q00") else 1)
    assert m["stale_rows"]["data/judgments/base_vs_sft/judge-rubric.jsonl"] == 0  # the judge judged the new sheet

    # the annotator re-annotates on the current sheet: nothing is stale any more
    _write(judged / ALICE, _votes(judged, "base"))
    m, _ = _winrate(judged)
    assert m["stale_rows"][ALICE] == 0 and m["humans"]["models"]["base"]["wins"] == 4


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_old_files_without_hashes_are_an_error_until_migrated(judged, fmt):
    from sciexplain.migrate_annotations import main as migrate_cli

    path = judged / f"data/annotations/base_vs_sft/alice.{fmt}"
    rows = [{k: v for k, v in r.items() if k != "item_hash"} for r in _votes(judged, "base")]
    if fmt == "csv":
        path.parent.mkdir(parents=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["item_id", "choice", "strength"])
            w.writeheader()
            w.writerows(rows)
    else:
        _write(path, rows)
    before = path.read_bytes()
    r = CliRunner().invoke(winrate.main, [])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output
    rel = f"data/annotations/base_vs_sft/alice.{fmt}"
    assert f"{rel}, line {2 if fmt == 'csv' else 1}, field 'item_hash'" in r.stderr
    assert f"python -m sciexplain.migrate_annotations --sheet {SHEET} {rel}" in r.stderr
    assert not (judged / "metrics/compare/base_vs_sft.json").exists()

    # the migration asks first; "no" changes nothing
    r = CliRunner().invoke(migrate_cli, ["--sheet", SHEET, rel], input="n\n")
    assert r.exit_code != 0 and path.read_bytes() == before
    r = CliRunner().invoke(migrate_cli, ["--sheet", SHEET, rel], input="y\n")
    assert r.exit_code == 0 and "4 rows stamped" in r.output, r.output
    m, _ = _winrate(judged)
    assert m["human_annotators"] == ["alice"] and m["humans"]["models"]["base"]["wins"] == 4
    assert m["stale_rows"][rel] == 0
    assert not list(path.parent.glob(".*"))  # the migration's temp file went elsewhere and is gone


def test_judges_and_humans_are_told_apart_by_a_field_not_the_file_name(judged):
    from sciexplain import preferences as prefs

    # a person whose file happens to be named judge-x.jsonl is a person; a judge's file in the human folder a judge
    _write(judged / "data/annotations/base_vs_sft/judge-x.jsonl", _votes(judged, "base"))
    _write(judged / "data/annotations/base_vs_sft/robo.jsonl", _votes(judged, "sft", annotator_type="judge"))
    m, _ = _winrate(judged)
    assert m["human_annotators"] == ["judge-x"] and m["humans"]["models"]["base"]["wins"] == 4
    assert m["judge_annotators"] == ["judge-rubric", "robo"] and m["annotators"]["robo"]["kind"] == "judge"
    assert m["annotators"]["judge-x"]["kind"] == "human"

    data = prefs.read_pair_annotations("base_vs_sft", judged / "data/compare",
                                       [judged / "data/annotations", (judged / "data/judgments", "judge")])
    assert data["judges"] == {"robo", "judge-rubric"}
    humans = prefs.annotation_pairs("base_vs_sft", data, str, "drop", annotators="humans")
    assert {p["source"] for p in humans} == {"base_vs_sft/judge-x"} and {p["judge"] for p in humans} == {None}
    judges = prefs.annotation_pairs("base_vs_sft", data, str, "drop", annotators="judges")
    assert {p["judge"] for p in judges} == {"robo", "rubric"}

    # one file, two kinds of rows: an error naming file, line and field
    rows = _votes(judged, "base")
    rows[2]["annotator_type"] = "judge"
    _write(judged / "data/annotations/base_vs_sft/judge-x.jsonl", rows)
    out = fails(winrate)
    assert "judge-x.jsonl, line 3, field 'annotator_type'" in out


def test_reward_model_reads_only_current_rows(judged):
    from sciexplain import preferences as prefs

    rows = _votes(judged, "base")
    rows[1]["item_hash"] = "0" * 16  # annotated on another version of item q01
    _write(judged / ALICE, rows)
    data = prefs.read_pair_annotations("base_vs_sft", judged / "data/compare", [judged / "data/annotations"])
    assert sorted(data["annotations"]["alice"]) == ["q00", "q02", "q03"]
    assert data["stale_rows"] == {str(judged / ALICE): 1}
    assert len(prefs.annotation_pairs("base_vs_sft", data, str, "drop", annotators="humans")) == 3


def test_skipped_annotation_files_are_each_named_with_a_reason(judged):
    root = judged / "data/annotations"
    _write(root / "base_vs_sft/alice.jsonl", _votes(judged, "base"))
    skipped = {"base_vs_sft/bob.JSONL": "lower case", "base_vs_sft/carol.json": "one JSON object per line",
               "base_vs_sft/dave.xlsx": "save it as CSV", "base_vs_sft/round2/erin.jsonl": "sub-folders",
               "sft_vs_base/frank.jsonl": "base_vs_sft reversed", "gina.jsonl": "go in"}
    for name in skipped:
        _write(root / name, _votes(judged, "sft"))
    m, err = _winrate(judged)
    assert m["human_annotators"] == ["alice"] and m["humans"]["models"]["base"]["wins"] == 4
    for name, why in skipped.items():
        lines = [line for line in err.splitlines() if f"data/annotations/{name}:" in line]
        assert len(lines) == 1 and why in lines[0] and lines[0].startswith("warning: "), (name, err)


def test_the_report_reads_each_pairs_metrics_and_adjusts_the_family(judged, monkeypatch):
    """score_eval@<model> -> data/eval_scores, winrate@<pair> -> metrics/compare, then the report: stale human rows left
    out and counted (per pair), the headline tests Holm-adjusted as one family in eval_winrates.json."""
    import sciexplain.reward
    from stages import report, score_eval

    monkeypatch.setattr(sciexplain.reward, "RewardScorer", WordCountScorer)
    metrics = judged / "metrics"
    metrics.mkdir(exist_ok=True)
    for name, obj in (("select", {}), ("base_model", {"source": "tiny"}), ("reward_model", {"validation": {"cleared": True}}),
                      ("teacher", {}), ("validate", {})):
        (metrics / f"{name}.json").write_text(json.dumps(obj))
    write_params(judged / "params.yaml", {"evaluate": {"models": ["base", "sft"], "examples": 1,
                                                       "bootstrap_resamples": 50, "max_questions": None}})
    for m in ("base", "sft"):
        run(score_eval, ["--model", m, "--base", "unused", "--reward", "unused", "--out", f"data/eval_scores/{m}.json"])
    rows = _votes(judged, "sft")
    rows[0]["item_hash"] = "a" * 16  # made on another version of this item
    _write(judged / ALICE, rows)
    r = run(winrate, ["--pair", "base_vs_sft"])
    assert f"{ALICE}: 1 of 4 rows" in r.stderr
    r = run(report)
    win = json.loads((metrics / "eval_winrates.json").read_text())["base_vs_sft"]
    assert win["stale_rows"][ALICE] == 1 and win["annotators"]["alice"]["n"] == 3
    assert win["headline_source"] == "humans" and win["multiple_testing"]["members"] == ["base_vs_sft"]
    assert win["verdict"]["p_holm"] is not None
    rewards_m = json.loads((metrics / "eval_rewards.json").read_text())
    assert rewards_m["base"]["n"] == 4 and rewards_m["sft"]["wilcoxon"] is not None
    assert (judged / "plots/compare_strengths.csv").read_text().startswith("bar,pair,who,model,strength,votes")
    assert "base vs sft" in (judged / "reports/report.md").read_text()
