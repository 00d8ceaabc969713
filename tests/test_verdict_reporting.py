"""A verdict on every number (issue 11, builds 5-7): humans-only headlines with each judge beside them, Holm
families, answers dropped by their own filter excluded and counted, several annotators (assignment,
Krippendorff's alpha), and a report that opens with the verdicts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import WordCountScorer, read_jsonl, write_params
from sciexplain import report
from sciexplain.annotate_web import assign_items, make_server
from sciexplain.annotations import Annotation
from sciexplain.sheets import build_sheet
from sciexplain.comparisons import adjust_family, summarize, verdict_sentence
from sciexplain.evaluation import load_eval_answers
from sciexplain.study_report import (opening, reward_model_warning, reward_statistics,
                                   teacher_warning)
from sciexplain.records import write_jsonl
from sciexplain.comparisons import summarize_pair
from sciexplain.stats import holm, krippendorff_alpha

# --------------------------------------------------------------------------- helpers


def _pairs(n, a="sft", b="base"):
    return [{"item_id": f"q{i:02d}", "question": f"Question {i}?", "answer_1": f"{a} answer {i} " * (1 + i % 3),
             "answer_2": f"{b} answer {i}", "model_1": a, "model_2": b} for i in range(n)]


def _sheet(n, a="sft", b="base", seed=0):
    sheet, key = build_sheet(_pairs(n, a, b), seed)
    return sheet, {k["item_id"]: {"a_model": k["a_model"], "b_model": k["b_model"]} for k in key}


def _votes(key, prefer, strength="Better", items=None):
    """Annotation files that vote for ``prefer`` (a model name) on ``items`` (default: all)."""
    return {i: Annotation("A" if key[i]["a_model"] == prefer else "B", strength, "")
            for i in (items if items is not None else key)}


def _validation(**ci):
    """A metrics/validate.json with each judge's cluster interval."""
    return {"judges": {name: {"agreement": (lo + hi) / 2, "agreement_cluster_ci_low": lo,
                              "agreement_cluster_ci_high": hi, "n": 100, "validated": lo > 0.5}
                       for name, (lo, hi) in ci.items()}}


# --------------------------------------------------------------------------- humans vs judges


def test_headline_is_humans_only_and_a_judge_never_changes_it():
    sheet, key = _sheet(20)
    ids = sorted(key)
    humans = {"alice": _votes(key, "sft", items=ids[:16]) | _votes(key, "base", items=ids[16:]),
              "bob": _votes(key, "sft", items=ids[:14]) | _votes(key, "base", items=ids[14:])}
    judges = {"judge-rubric": _votes(key, "base"), "judge-gpt": _votes(key, "base", "Significantly better")}
    validation = _validation(rubric=(0.7, 0.9), gpt=(0.6, 0.8))

    alone = summarize("sft_vs_base", sheet, key, {}, humans, validation)
    both = summarize("sft_vs_base", sheet, key, judges, humans, validation)
    assert both["headline_source"] == "humans" and "all" not in both
    assert both["win_rate"] == alone["win_rate"] and both["verdict"] == alone["verdict"]  # judges change nothing
    assert both["humans"] == alone["humans"]
    # two judges who both prefer base on every item would outvote two humans in a pooled majority
    assert both["win_rate"]["sft"] == 0.7  # items 0-13 both humans sft, 14-15 split (tie), 16-19 both base
    assert both["verdict"]["human"] and both["verdict"]["judge_validated"] and both["verdict"]["n"] == 20
    assert both["verdict"]["verdict"] == "better" and both["verdict"]["detectable_win_rate"] > 0.5
    assert both["verdict"]["human_agreement"] is None  # humans need no validation clause
    # each judge beside the humans, on its own, with its human agreement and its own verdict
    assert sorted(both["judges"]) == ["judge-gpt", "judge-rubric"]
    rubric = both["judges"]["judge-rubric"]
    assert rubric["annotators"] == ["judge-rubric"] and rubric["models"]["base"]["wins"] == 20
    assert rubric["human_agreement"]["ci_low"] == 0.7 and rubric["verdict"]["verdict"] == "worse"
    assert both["judge_vs_humans"]["judge-rubric"]["n"] == 18  # items with a decisive human majority


def test_judge_headline_and_the_four_verdicts():
    sheet, key = _sheet(20)
    judges = {"judge-rubric": _votes(key, "sft"), "judge-weak": _votes(key, "base")}
    m = summarize("base_vs_sft", sheet, key, judges, {}, _validation(rubric=(0.62, 0.8), weak=(0.3, 0.7)))
    assert (m["subject"], m["opponent"]) == ("sft", "base")  # base is always the opponent
    assert m["headline_source"] == "judge-rubric"  # the best-validated judge, not the first name
    assert m["verdict"]["verdict"] == "better" and m["win_rate"]["sft"] == 1.0
    assert m["judges"]["judge-weak"]["verdict"]["verdict"] == "judge not validated"
    assert "not validated" in verdict_sentence(m["judges"]["judge-weak"]["verdict"])
    assert "sentence" not in m["verdict"]  # metrics hold codes and numbers; the words are made when shown
    # no validation file: no judge is validated, whatever it says
    none = summarize("sft_vs_base", sheet, key, judges, {}, None)
    assert none["verdict"]["verdict"] == "judge not validated" and none["headline_source"] == "judge-rubric"
    # too few votes: cannot tell, and the sentence says what this n could detect
    small_sheet, small_key = _sheet(8)
    few = summarize("sft_vs_base", small_sheet, small_key, {"judge-rubric": _votes(small_key, "sft", items=sorted(small_key)[:6])
                    | _votes(small_key, "base", items=sorted(small_key)[6:])}, {}, _validation(rubric=(0.62, 0.8)))
    assert few["verdict"]["verdict"] == "cannot tell at this n" and "80% power" in verdict_sentence(few["verdict"])
    assert few["verdict"]["n"] == 8 and few["verdict"]["detectable_win_rate"] is not None


def test_holm_family_adjusts_headlines_only():
    metrics = {}
    for pair, sft_wins in (("sft_vs_base", 18), ("rs_vs_base", 15), ("dpo_vs_base", 10)):
        sheet, key = _sheet(20, pair.split("_vs_")[0])
        model = pair.split("_vs_")[0]
        ids = sorted(key)
        humans = {"alice": _votes(key, model, items=ids[:sft_wins]) | _votes(key, "base", items=ids[sft_wins:])}
        metrics[pair] = summarize(pair, sheet, key, {}, humans)
    raw = {p: m["verdict"]["p"] for p, m in metrics.items()}
    assert raw["rs_vs_base"] < 0.05 and metrics["rs_vs_base"]["verdict"]["verdict"] == "better"
    family = adjust_family(metrics, "test family")
    assert family["m"] == 3 and family["adjusted"] and family["family"] == "test family"
    expected = holm(raw)
    for p, m in metrics.items():
        assert m["verdict"]["p_holm"] == pytest.approx(expected[p], rel=1e-3)
    assert metrics["sft_vs_base"]["verdict"]["verdict"] == "better"  # p 0.0004 -> Holm 0.0012
    assert metrics["rs_vs_base"]["verdict"]["verdict"] == "cannot tell at this n"  # p 0.041 -> Holm 0.083
    assert metrics["rs_vs_base"]["verdict"]["unadjusted_verdict"] == "better"
    assert "(Holm, 3 tests)" in verdict_sentence(metrics["rs_vs_base"]["verdict"])
    single = {"sft_vs_base": summarize("sft_vs_base", *_sheet(20), {}, {"alice": _votes(_sheet(20)[1], "sft")})}
    assert adjust_family(single, "one")["adjusted"] is False


# --------------------------------------------------------------------------- several annotators


def test_krippendorff_alpha_published_example():
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: 4 observers, 12 units,
    nominal data with missing values -> alpha = 0.743 (n = 40 pairable values in 11 units)."""
    nan = None
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
            [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]
    labels = {f"c{k}": {f"u{j:02d}": v for j, v in enumerate(row) if v is not None} for k, row in enumerate(data)}
    out = krippendorff_alpha(labels, details=True)
    assert round(out["alpha"], 3) == 0.743 and out["n_items"] == 11 and out["n_ratings"] == 40
    assert math.isnan(krippendorff_alpha({"a": {"x": 1}, "b": {"y": 1}}))  # nothing pairable
    assert krippendorff_alpha({"a": {"x": "m", "y": "n"}, "b": {"x": "m", "y": "n"}}) == 1.0


def test_agreement_on_an_overlap_assignment_has_alpha_beside_fleiss():
    sheet, key = _sheet(12)
    ids = sorted(key)
    plan = assign_items(ids, ["alice", "bob", "carol"], overlap=0.25)
    humans = {a: {i: (("A" if key[i]["a_model"] == "sft" else "B"), "Better") for i in plan["assigned"][a]}
              for a in plan["assigned"]}
    humans["carol"] = {i: ("B" if v[0] == "A" else "A", "Better") for i, v in humans["carol"].items()}  # disagrees
    s = summarize_pair(humans, key)
    ag = s["agreement"]
    assert ag["kappa_items"] == len(plan["overlap"]) == 3 and ag["alpha_items"] == 3 and ag["alpha_ratings"] == 9
    assert ag["fleiss_kappa"] is not None and ag["krippendorff_alpha"] is not None and ag["krippendorff_alpha"] < 0
    # annotators with different subsets and no item rated by all: alpha still defined, Fleiss not
    part = {"alice": {ids[0]: ("A", "Better"), ids[1]: ("B", "Better")},
            "bob": {ids[0]: ("A", "Better"), ids[2]: ("A", "Better")},
            "carol": {ids[1]: ("B", "Better"), ids[2]: ("B", "Better")}}
    ag = summarize_pair(part, key)["agreement"]
    assert ag["fleiss_kappa"] is None and ag["kappa_items"] == 0 and ag["alpha_items"] == 3
    assert ag["krippendorff_alpha"] is not None


def test_assignment_coverage_overlap_determinism():
    ids = [f"item-{i:03d}" for i in range(41)]
    names = ["dave", "alice", "carol", "bob"]
    plan = assign_items(ids, names, overlap=0.25)
    assert plan == assign_items(ids, list(reversed(names)), 0.25)  # deterministic, order of names irrelevant
    assert plan == assign_items(list(ids), sorted(names), 0.25, seed=0)
    overlap = set(plan["overlap"])
    assert len(overlap) == math.ceil(0.25 * 41) == 11
    seen = {i: [a for a, items in plan["assigned"].items() if i in items] for i in ids}
    assert all(seen[i] for i in ids)  # every item seen by at least one annotator
    assert all(len(seen[i]) == 4 for i in overlap)  # the overlap share by all
    assert all(len(seen[i]) == 1 for i in ids if i not in overlap)  # the rest by exactly one
    sizes = [len(v) - len(overlap) for v in plan["assigned"].values()]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 30  # balanced
    assert all(v == [i for i in ids if i in set(v)] for v in plan["assigned"].values())  # sheet order
    assert assign_items(ids, names, 0.25, seed=1)["overlap"] != plan["overlap"]  # the seed picks the overlap
    assert all(len(v) == 41 for v in assign_items(ids, names, 1.0)["assigned"].values())
    assert sum(len(v) for v in assign_items(ids, names, 0.0)["assigned"].values()) == 41  # a partition
    assert assign_items(ids, ["solo"], 0.25)["assigned"]["solo"] == ids
    with pytest.raises(ValueError):
        assign_items(ids, ["a", "a"], 0.25)
    with pytest.raises(ValueError):
        assign_items(ids, ["a", "b"], 1.5)


def test_annotation_page_serves_only_the_annotators_share(tmp_path):
    import http.client
    import threading

    sheet, _ = _sheet(12)
    path = tmp_path / "base_vs_sft" / "sheet.jsonl"
    write_jsonl(path, sheet)
    ids = [s["item_id"] for s in sheet]
    plan = assign_items(ids, ["alice", "bob", "carol", "dave"], 0.25)
    out = tmp_path / "ann" / "bob.jsonl"
    server = make_server(path, out, port=0, quiet=True, annotator="bob", annotators=["alice", "bob", "carol", "dave"],
                         overlap=0.25)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]

        def call(method, route, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, route, body=json.dumps(body) if body else None,
                         headers={"Content-Type": "application/json"} if body else {})
            r = conn.getresponse()
            data = json.loads(r.read())
            conn.close()
            return r.status, data

        status, data = call("GET", "/api/items")
        assert status == 200 and [it["item_id"] for it in data["items"]] == plan["assigned"]["bob"]
        a = data["assignment"]
        assert a["assigned"] == len(plan["assigned"]["bob"]) and a["sheet_items"] == 12 and a["overlap_items"] == 3
        assert a["annotators"] == ["alice", "bob", "carol", "dave"] and a["annotator"] == "bob"
        other = next(i for i in ids if i not in plan["assigned"]["bob"])
        h = {s["item_id"]: s["item_hash"] for s in sheet}  # a vote carries the hash of what was shown
        status, data = call("POST", "/api/annotate", {"item_id": other, "item_hash": h[other], "choice": "A",
                                                      "strength": "Better"})
        assert status == 400 and "not assigned to 'bob'" in data["error"]
        mine = plan["assigned"]["bob"][0]
        status, _ = call("POST", "/api/annotate", {"item_id": mine, "item_hash": h[mine], "choice": "A", "strength": "Better"})
        assert status == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    from sciexplain.annotate_web import main
    r = CliRunner().invoke(main, ["--sheet", str(path), "--annotator", "eve", "--annotators", "alice,bob", "--port", "0"])
    assert r.exit_code != 0 and "'eve' is not one of" in r.output


# --------------------------------------------------------------------------- dropped answers


QUESTIONS = [f"Why does thing {i} happen?" for i in range(6)]
GOOD = ("{q} The short answer is a physical mechanism. Sunlight, water and molecules follow simple laws, and "
        "scientists describe them with measurable quantities.\n\nFirst, the cause acts on a small scale; therefore "
        "the effect appears on a large scale. However, the details depend on conditions.\n\n"
        "In summary, the mechanism explains the observation in a few clear steps.")
POOR = "Great question!!! I think it's just how things are lol."


def _generations(root: Path, dropped=("q01", "q04")):
    ids = [f"q{i:02d}" for i in range(len(QUESTIONS))]
    write_jsonl(root / "data/prepared/eval.jsonl", [{"id": i, "question": q} for i, q in zip(ids, QUESTIONS)])
    for model, text in (("base", POOR), ("sft", GOOD), ("rs", GOOD), ("teacher", GOOD)):
        recs = []
        for i, q in zip(ids, QUESTIONS):
            rec = {"id": i, "question": q, "model": model, "sample": 0, "answer": text.format(q=q), "finished": True}
            if model == "teacher":
                gone = i in dropped
                rec.update(keep=not gone, drop_reason=("empty" if i == dropped[0] else "unfinished") if gone else None,
                           answer="" if i == dropped[0] else rec["answer"])
            recs.append(rec)
        write_jsonl(root / f"data/generations/{model}/eval.jsonl", recs)
    return ids


def test_dropped_teacher_answers_are_excluded_and_counted(tmp_path):
    ids = _generations(tmp_path)
    answers, dropped = load_eval_answers(tmp_path / "data/generations", ["base", "sft", "rs", "teacher"], ids)
    assert dropped["teacher"] == {"n": 2, "reasons": {"empty": 1, "unfinished": 1}, "ids": ["q01", "q04"]}
    assert dropped["base"]["n"] == 0 and sorted(answers["teacher"]) == ["q00", "q02", "q03", "q05"]
    rewards = {m: {i: float(k) + (m != "base") for k, i in enumerate(ids) if i in answers[m]} for m in answers}
    stats = reward_statistics(rewards)
    assert stats["teacher"]["n"] == 4 and stats["base"]["n"] == 6
    assert stats["teacher"]["wilcoxon"]["n"] == 4  # paired on the questions both answered
    assert stats["base"]["wilcoxon"] is None
    ps = {m: stats[m]["wilcoxon"]["p_value"] for m in ("sft", "rs", "teacher")}
    assert {m: stats[m]["wilcoxon"]["p_holm"] for m in ps} == pytest.approx(holm(ps), rel=1e-3)


def test_warnings_from_teacher_check_and_reward_model():
    assert teacher_warning(None) is None and teacher_warning({"answers": 96}) is None  # no check: no warning
    assert teacher_warning({"teacher_vs_student": {"verdict": "better"}}) is None
    w = teacher_warning({"teacher_vs_student": {"verdict": "cannot tell at this n", "win_rate": 0.48}})
    assert w.startswith("Warning: the teacher is not shown") and "48%" in w
    assert teacher_warning({"teacher_better": False}) is not None
    assert teacher_warning({"vs_student": {"verdict": "better", "teacher_better": True}}) is None  # teacher_check.py
    w = teacher_warning({"vs_student": {"verdict": None, "not_compared": "empty_panel"}})
    assert "made no comparison" in w and w.endswith("The teacher was not compared with its student: judge.panel is empty.")
    assert reward_model_warning({"heldout": {"accuracy": 0.5}}) is None  # no flag: no warning
    assert reward_model_warning({"validation": {"cleared": True}}) is None
    w = reward_model_warning({"validation": {"cleared": False, "accuracy": 0.52, "allow_unvalidated": True}})
    assert "did not clear validation" in w and "52%" in w and "allowed" in w
    assert reward_model_warning({"used_unvalidated": True}) is not None


# --------------------------------------------------------------------------- the report opens with verdicts


def _eval_metrics(n=20):
    out = {}
    for pair, wins in (("sft_vs_base", 18), ("rs_vs_base", 11)):
        sheet, key = _sheet(n, pair.split("_vs_")[0])
        ids = sorted(key)
        model = pair.split("_vs_")[0]
        judges = {"judge-rubric": _votes(key, model, items=ids[:wins]) | _votes(key, "base", items=ids[wins:])}
        out[pair] = summarize(pair, sheet, key, judges, {}, _validation(rubric=(0.4, 0.6)))
    return out


def test_report_opens_with_verdicts_before_any_table(tmp_path):
    metrics = _eval_metrics()
    family = adjust_family(metrics, "evaluate: the headline sign test of every evaluate.pairs comparison")
    from sciexplain.comparisons import headline_summary, power_at

    op = opening(metrics, family, power_at(20), {"teacher": {"n": 2, "reasons": {"empty": 2}}},
                 [teacher_warning({"teacher_vs_student": {"verdict": "worse"}}), None])
    ctx = {"opening": op, "judges_beside": {k.replace("_vs_", " vs "): v for k, v in metrics.items()},
           "winrates": {k.replace("_vs_", " vs "): headline_summary(v) for k, v in metrics.items()},
           "reward_stats": {"base": {"n": 20, "mean": 0.1, "wilcoxon": None}}}
    md = report.render_report(ctx, tmp_path / "r.md", tmp_path / "r.html")
    lines = md.splitlines()
    assert lines[0].startswith("**Warning: the teacher is not shown")  # the very first line
    first_table = next(k for k, line in enumerate(lines) if line.startswith("|"))
    verdicts = lines.index("## Verdicts")
    assert verdicts < first_table
    head = "\n".join(lines[verdicts:first_table])
    assert "- sft vs base: judge not validated." in head and "- rs vs base: judge not validated." in head
    assert "does not clear 50%" in head and "Power: the eval split has 20 questions" in head
    assert "Holm-adjusted" in head and "sft vs base, rs vs base" in head.replace("rs vs base, sft vs base", "sft vs base, rs vs base")
    assert "teacher: 2 (empty 2)" in head
    # the side-by-side table names the judge, its human agreement and its verdict
    assert "## Humans and each judge, side by side" in md and "judge not validated" in md.split("## Humans and each")[1]
    page = (tmp_path / "r.html").read_text()
    assert page.index('class="warning"') < page.index("<h1>") < page.index("<h2>Verdicts</h2>") < page.index("<table>")


def test_final_evaluation_stages_end_to_end(workdir, monkeypatch):
    """compare, judge, winrate per pair, rewards per model (reward model stubbed), then the report: dropped teacher
    answers out and counted, verdicts in eval_winrates.json, the report opening with the warnings and verdicts."""
    import sciexplain.reward
    from stages import compare, judge, report, score_eval, winrate

    monkeypatch.setattr(sciexplain.reward, "RewardScorer", WordCountScorer)
    ids = _generations(workdir)
    for m in ("dpo",):
        write_jsonl(workdir / f"data/generations/{m}/eval.jsonl",
                    [{**r, "model": m} for r in read_jsonl(workdir / "data/generations/sft/eval.jsonl")])
    metrics = workdir / "metrics"
    metrics.mkdir()
    (metrics / "select.json").write_text("{}")
    (metrics / "base_model.json").write_text(json.dumps({"source": "tiny"}))
    (metrics / "reward_model.json").write_text(json.dumps({"validation": {"cleared": False}}))
    (metrics / "teacher.json").write_text(json.dumps({"vs_student": {"verdict": "cannot tell at this n"}}))
    (metrics / "validate.json").write_text(json.dumps(_validation(rubric=(0.44, 0.61))))
    write_params(workdir / "params.yaml", {"compare": {"pairs": None}})
    write_params(workdir / "params.yaml", {"evaluate": {"models": ["base", "sft", "rs", "dpo", "teacher"], "examples": 2,
                                                        "bootstrap_resamples": 200, "max_questions": None},
                                           "compare": {"pairs": {"sft_vs_base": ["sft", "base"], "rs_vs_teacher": ["rs", "teacher"]}},
                                           "reward_model": {"allow_unvalidated": True},
                                           "judge": {"panel": [{"name": "rubric", "type": "rubric"}]}})
    prompt = str(Path(__file__).resolve().parents[1] / "prompts/judge.md")
    for cmd, args in ((compare, []), (judge, ["--prompt", prompt]), (winrate, []),
                      *((score_eval, ["--model", m, "--base", "unused", "--reward", "unused", "--out", f"data/eval_scores/{m}.json"])
                        for m in ("base", "sft", "rs", "dpo", "teacher")), (report, [])):
        r = CliRunner().invoke(cmd.main, args)
        assert r.exit_code == 0, (cmd.__name__, r.output)
    rewards_m = json.loads((metrics / "eval_rewards.json").read_text())
    assert rewards_m["teacher"]["n"] == 4 and rewards_m["teacher"]["dropped_by_filter"] == 2 and rewards_m["base"]["n"] == 6
    win = json.loads((metrics / "eval_winrates.json").read_text())
    assert win["rs_vs_teacher"]["n_sheet_items"] == 4 and win["rs_vs_teacher"]["excluded_dropped_answers"]["teacher"] == 2
    assert win["sft_vs_base"]["verdict"]["verdict"] == "judge not validated"
    assert win["sft_vs_base"]["power_at_eval_n"]["n"] == len(ids)
    # rs and teacher wrote the same answers: all ties, no test, so the family holds sft_vs_base alone
    assert win["sft_vs_base"]["multiple_testing"]["members"] == ["sft_vs_base"]
    assert win["rs_vs_teacher"]["verdict"]["decisive"] == 0
    md = (workdir / "reports/report.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("**Warning: the teacher is not shown") and "reward model did not clear" in lines[2]
    assert md.index("## Verdicts") < md.index("|") and "sft vs base: judge not validated" in md
    assert "teacher: 2 (empty 1, unfinished 1)" in md
