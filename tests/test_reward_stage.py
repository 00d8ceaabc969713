"""The reward_model stage end to end on hand-made human pairs, generation and annotation files (CliRunner, tiny model):
people's pairs are the training data, judge-labelled pairs only with reward_model.judge_labels (and then named),
the held-out figures come from the human test pairs only."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import read_jsonl, write_params
from sciexplain import rm_gate
from sciexplain.sheets import item_hash
from sciexplain.records import stable_id
from stages import reward_model

QUESTIONS = ["Why is the sky blue?", "Why does ice float on water?", "How do vaccines train the immune system?",
             "Why do seasons change on Earth?", "What causes the northern lights?", "Why do stars twinkle?",
             "How does photosynthesis store energy?", "Why is the ocean salty?", "What makes a rainbow?",
             "Why do leaves change colour in autumn?", "How do earthquakes start?", "Why does metal feel cold?"]
GOOD = ("{q} The short answer is a physical mechanism, which is called a process. Sunlight, water and molecules "
        "follow simple laws, and scientists describe them with measurable quantities.\n\nFirst, the cause acts on a "
        "small scale; therefore the effect appears on a large scale. However, the details depend on conditions.\n\n"
        "In summary, the mechanism explains the observation in a few clear steps.")
MEDIUM = "{q} It happens because of physics. The cause acts on a small scale and the effect is large."
POOR = "Great question!!! I think it's just how things are lol. Hope this helps!!"
COMPARE_QS = ["Why do cats purr?", "What is a black hole?", "Why is blood red?", "How do magnets work?"]
HUMAN_QS = [f"Why does thing {i} happen in nature?" for i in range(14)]


def human_pair(i, q, chosen, rejected, margin):
    return {"id": stable_id(q), "pair_id": f"p{i:03d}", "question": q, "chosen": chosen, "rejected": rejected,
            "margin": margin, "strength": None, "source": "stackexchange:test.stackexchange.com"}


def human_split():
    """Two vote pairs per question (GOOD > POOR, GOOD > MEDIUM); 8 questions train, 6 test; one null margin."""
    recs = []
    for n, q in enumerate(HUMAN_QS):
        recs.append(human_pair(2 * n, q, GOOD.format(q=q), POOR, 0.75))
        recs.append(human_pair(2 * n + 1, q, GOOD.format(q=q), MEDIUM.format(q=q), None if n == 0 else 0.25))
    return recs[:16], recs[16:]


def _write(path: Path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def project(workdir, tiny_base):
    shutil.copytree(tiny_base, workdir / "models/base")
    ids = [f"q{i:02d}" for i in range(len(QUESTIONS))]
    _write(workdir / "data/prepared/rm.jsonl", [{"id": i, "question": q, "domain": "physics"} for i, q in zip(ids, QUESTIONS)])
    for model, text in (("base", POOR), ("sft", MEDIUM), ("teacher", GOOD)):
        recs = [{"id": i, "question": q, "model": model, "sample": 0, "answer": text.format(q=q),
                 "completion_tokens": 50, "finished": True} for i, q in zip(ids, QUESTIONS)]
        if model == "teacher":
            recs[0]["answer"] += " Moreover, light scatters." * 40  # longer than max_length: truncated, not dropped
        _write(workdir / f"data/generations/{model}/rm.jsonl", recs)
    # a blind sheet (base vs sft) with a human CSV and a judge file
    sheet, key, human, judge = [], [], [], []
    for n, q in enumerate(COMPARE_QS):
        item, sft_is_a = f"c{n}", n % 2 == 0
        a, b = (GOOD.format(q=q), POOR) if sft_is_a else (POOR, GOOD.format(q=q))
        sheet.append({"item_id": item, "question": q, "answer_a": a, "answer_b": b})
        key.append({"item_id": item, "a_model": "sft" if sft_is_a else "base", "b_model": "base" if sft_is_a else "sft"})
        good, h = "A" if sft_is_a else "B", item_hash(q, a, b)  # rows are bound to the sheet item they judge
        human.append(f"{item},{good},{'Better' if n else 'Unsure'},,{h}")
        judge.append({"item_id": item, "item_hash": h, "choice": good, "strength": "Significantly better",
                      "annotator_type": "judge"})
    _write(workdir / "data/compare/base_vs_sft/sheet.jsonl", sheet)
    _write(workdir / "data/compare/base_vs_sft/key.jsonl", key)
    (workdir / "data/annotations/base_vs_sft").mkdir(parents=True)
    (workdir / "data/annotations/base_vs_sft/alice.csv").write_text("item_id,choice,strength,comment,item_hash\n"
                                                                  + "\n".join(human) + "\n")
    _write(workdir / "data/judgments/base_vs_sft/judge-rubric.jsonl", judge)
    train, test = human_split()
    _write(workdir / "data/human_pairs/train.jsonl", train)
    _write(workdir / "data/human_pairs/test.jsonl", test)
    write_params(workdir / "params.yaml", {"reward_model": {
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "layers": 1},
        "trainer": {"learning_rate": 3e-3, "num_train_epochs": 2, "per_device_train_batch_size": 8, "max_length": 320,
                    "seed": 0},
        "early_stopping_patience": 1, "until_beats_constant": True, "center_rewards_coefficient": 0.01,
        "unsure": "drop", "val_fraction": 0.25, "sources": ["base_vs_sft"], "judge_labels": False,
        "rm_models": ["base", "sft", "teacher"], "rubric": {}, "max_train_pairs": None, "score_batch_size": 8,
        "bootstrap": 200, "allow_unvalidated": True}})
    return workdir


def _run(args=()):
    return CliRunner().invoke(reward_model.main, list(args))


def test_reward_model_stage_trains_on_people(project):
    r = _run()
    assert r.exit_code == 0, r.output
    m = json.loads((project / "metrics/reward_model.json").read_text())
    train, dev = read_jsonl(project / "data/preferences/train.jsonl"), read_jsonl(project / "data/preferences/dev.jsonl")
    test = read_jsonl(project / "data/human_pairs/test.jsonl")
    assert m["pairs"]["train"] == len(train) > 0 and m["pairs"]["dev"] == len(dev) > 0
    ids = [{p["id"] for p in s} for s in (train, dev, test)]
    assert ids[0].isdisjoint(ids[1]) and ids[0].isdisjoint(ids[2]) and ids[1].isdisjoint(ids[2])
    # people only: 16 vote pairs + alice's 3 decisive verdicts; no judge file, no rubric-judged rm pair
    assert m["pairs"]["from_human_pairs"] == 16 and m["pairs"]["from_annotations"] == 3 and m["pairs"]["from_rm_judge"] == 0
    assert m["pairs"]["human_pairs_null_margin"] == 1
    assert all(p["judge"] is None for p in train + dev)
    assert {p["source"] for p in train + dev} <= {"human_pairs/stackexchange:test.stackexchange.com", "base_vs_sft/alice"}
    assert m["judge_labels"] == {"used": False, "allowed": False, "judges": [], "rm_split": None,
                                 "train_pairs_by_label": {"human": len(train)}}
    assert m["dropped"] == 0 and m["pairs"]["on_test_questions_removed"] == 0

    # held out: the 12 human test pairs (6 questions), beside the baselines on the same pairs
    h = m["heldout"]
    assert h["pairs"] == m["pairs"]["test"] == 12 and h["questions"] == 6 and h["n"] + h["ties"] == 12
    assert 0 <= h["ci95_low"] <= h["accuracy"] <= h["ci95_high"] <= 1
    assert h["cluster_ci95_low"] <= h["accuracy"] <= h["cluster_ci95_high"]
    assert set(m["baselines"]) == {"longer_answer", "rubric_judge", "random"}
    assert m["baselines"]["longer_answer"]["accuracy"] == 1.0 and m["baselines"]["longer_answer"]["pairs"] == 12
    mc = m["vs_longer"]["reward_model"]
    assert mc["model_only_right"] == 0 and mc["longer_only_right"] == 12 - h["correct"] and 0 < mc["p_holm"] <= 1
    assert set(m["vs_longer"]) == {"reward_model", "rubric"}
    # losses: the constant predictor's on the test margins (0.75 and 0.25, none null in the test split)
    const = (6 * math.log1p(math.exp(0.75)) + 6 * math.log1p(math.exp(0.25))) / 12
    assert m["loss"]["constant"] == pytest.approx(const, abs=1e-4) and m["loss"]["heldout"] > 0
    assert m["learned"] == m["loss"]["beats_constant"] == (m["loss"]["heldout"] < m["loss"]["constant"])
    dev_loss = m["loss"]["dev"]
    assert 1 <= len(dev_loss["loss_by_epoch"]) <= 2 and dev_loss["best_loss"] == min(e["eval_loss"] for e in dev_loss["loss_by_epoch"])
    assert dev_loss["constant_loss"] > 0 and dev_loss["pairs"] == len(dev)
    assert dev_loss["stopped"] in ("beat the constant", "no better dev loss", "epoch cap")
    assert (dev_loss["stopped"] == "beat the constant") == (dev_loss["loss_by_epoch"][-1]["eval_loss"] < dev_loss["constant_loss"])
    # the gate's block, read by every stage that uses the model, and the report's warning keys
    v = m["validation"]
    assert v["cleared"] == (v["ci_low"] > 0.5) and v["ci_low"] == h["cluster_ci95_low"] and v["n"] == h["n"]
    assert v["allow_unvalidated"] is True and m["used_unvalidated"] == (not v["cleared"])
    assert "message" not in v and "clear 0.5" in rm_gate.message(v)  # words live in logs, not metrics

    assert m["majority_agreement"]["n_items"] == 4  # people's file only: alice rated 4 items (1 Unsure)
    assert m["majority_agreement"]["n_decisive"] == 3
    assert m["pooling_check"]["pools_end_of_turn"] and m["pooling_check"]["max_abs_diff"] < 1e-4
    assert m["train"]["trainable_params"] > 0 and m["train"]["tokens_per_s"] > 0 and m["train"]["train_loss"] > 0
    cfg = json.loads((project / "models/reward/adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and "score" in cfg["modules_to_save"] and cfg["layers_to_transform"] == [1]
    assert (project / "models/reward/adapter_model.safetensors").exists()
    assert (project / "metrics/reward_model/plots/metrics/train/loss.tsv").exists()
    assert (project / "metrics/reward_model/plots/metrics/eval/loss.tsv").exists()
    assert not any(p.name.startswith("checkpoint") for p in (project / "models/reward").iterdir())
    assert "held-out accuracy" in r.output and "McNemar" in r.output

    # rerun: same adapter bytes and the same metrics (timings aside)
    before = (project / "models/reward/adapter_model.safetensors").read_bytes()
    assert _run().exit_code == 0
    assert (project / "models/reward/adapter_model.safetensors").read_bytes() == before
    m2 = json.loads((project / "metrics/reward_model.json").read_text())
    for d in (m, m2):
        d["train"].pop("runtime_s"), d["train"].pop("tokens_per_s"), d.pop("stage_runtime_s")
    assert m2 == m


def test_judge_labels_only_when_asked_and_named(project):
    write_params(project / "params.yaml", {"reward_model": {"judge_labels": True, "trainer": {"num_train_epochs": 1}, "allow_unvalidated": False}})
    r = _run()
    assert r.exit_code == 0, r.output  # the stage itself never refuses: it writes the figures the gate reads
    m = json.loads((project / "metrics/reward_model.json").read_text())
    train = read_jsonl(project / "data/preferences/train.jsonl")
    # 12 rm questions x 3 model pairs judged by the rubric; the judge-rubric file adds 4 sheet pairs
    assert m["judge_labels"]["rm_split"]["compared"] == 36 and m["pairs"]["from_rm_judge"] > 0
    assert m["pairs"]["from_annotations"] == 3 + 4
    jl = m["judge_labels"]
    assert jl["used"] is True and jl["judges"] == ["rubric"] and jl["train_pairs_by_label"]["judge:rubric"] > 0
    assert jl["train_pairs_by_label"]["human"] == sum(p["judge"] is None for p in train)
    assert {p["judge"] for p in train} == {None, "rubric"}
    # held-out figures stay on the human test pairs
    assert m["heldout"]["pairs"] == 12 and m["heldout"]["questions"] == 6
    long_pairs = [p for p in train if "Moreover" in p["chosen"] + p["rejected"]]
    assert m["truncated"] == len(long_pairs) > 0
    assert m["validation"]["allow_unvalidated"] is False and m["used_unvalidated"] is False


def test_reward_model_stage_errors_are_one_line(project):
    write_params(project / "params.yaml", {"reward_model": {"sources": ["nope_vs_sft"]}})
    r = _run()
    assert r.exit_code == 1 and "Traceback" not in r.output and "nope_vs_sft" in r.output, r.output
    write_params(project / "params.yaml", {"reward_model": {"sources": [], "trainer": {"max_length": 8}}})
    r = _run()
    assert r.exit_code == 1 and "Traceback" not in r.output and "max_length" in r.output, r.output
    write_params(project / "params.yaml", {"reward_model": {"trainer": {"max_length": 320}, "unsure": "sometimes"}})
    r = _run()
    assert r.exit_code == 1 and "reward_model.unsure" in r.output, r.output
    write_params(project / "params.yaml", {"reward_model": {"unsure": "drop", "allow_unvalidated": "yes"}})
    r = _run()
    assert r.exit_code == 1 and "reward_model.allow_unvalidated" in r.output, r.output
    write_params(project / "params.yaml", {"reward_model": {"allow_unvalidated": True}})
    (project / "data/human_pairs/test.jsonl").write_text("")
    r = _run()
    assert r.exit_code == 1 and "Traceback" not in r.output and "test.jsonl" in r.output, r.output
    assert not (project / "models/reward").exists()
