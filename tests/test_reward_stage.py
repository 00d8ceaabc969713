"""The reward_model stage end to end on hand-made generation and annotation files (CliRunner, tiny model)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import read_jsonl, write_params
from sciexplain.io import stable_id
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
        good = "A" if sft_is_a else "B"
        human.append(f"{item},{good},{'Better' if n else 'Unsure'},")
        judge.append({"item_id": item, "choice": good, "strength": "Significantly better"})
    _write(workdir / "data/compare/base_vs_sft/sheet.jsonl", sheet)
    _write(workdir / "data/compare/base_vs_sft/key.jsonl", key)
    (workdir / "data/annotations/base_vs_sft").mkdir(parents=True)
    (workdir / "data/annotations/base_vs_sft/alice.csv").write_text("item_id,choice,strength,comment\n" + "\n".join(human) + "\n")
    _write(workdir / "data/judgments/base_vs_sft/judge-rubric.jsonl", judge)
    write_params(workdir / "params.yaml", {"reward_model": {
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "layers": 1}, "learning_rate": 3e-3, "epochs": 2,
        "batch_size": 8, "max_length": 320, "center_rewards_coefficient": 0.01, "unsure": "drop",
        "val_fraction": 0.25, "seed": 0, "sources": ["base_vs_sft"], "annotators": "all",
        "rm_models": ["base", "sft", "teacher"], "rubric": {}, "max_train_pairs": None, "score_batch_size": 8}})
    return workdir


def _run(args=()):
    return CliRunner().invoke(reward_model.main, list(args))


def test_reward_model_stage(project):
    r = _run()
    assert r.exit_code == 0, r.output
    m = json.loads((project / "metrics/reward_model.json").read_text())
    train, val = read_jsonl(project / "data/preferences/train.jsonl"), read_jsonl(project / "data/preferences/val.jsonl")
    assert m["pairs"]["train"] == len(train) > 0 and m["pairs"]["val"] == len(val) > 0
    assert {p["id"] for p in train}.isdisjoint({p["id"] for p in val})
    # 12 rm questions x 3 model pairs, rubric-judged; 3 human + 4 judge verdicts on the sheet (1 Unsure dropped)
    assert m["pairs"]["rm_judge"]["compared"] == 36 and m["pairs"]["from_annotations"] == 7
    assert m["pairs"]["from_rm_judge"] + m["pairs"]["from_annotations"] - m["pairs"]["duplicates_removed"] == len(train) + len(val)
    assert m["dropped"] == 0
    long_pairs = [p for p in train + val if "Moreover" in p["chosen"] + p["rejected"]]
    assert len(long_pairs) == 2  # teacher's long answer vs base and vs sft
    assert m["truncated"] == sum(p in train for p in long_pairs) and m["truncated_sequences"] == m["truncated"]
    assert m["eval_truncated_sequences"] == sum(p in val for p in long_pairs)
    h = m["heldout"]
    assert h["n"] == sum(1 for p in val if p["margin"] > 0) and 0 <= h["ci95_low"] <= h["accuracy"] <= h["ci95_high"] <= 1
    assert set(m["baselines"]) >= {"longer_answer", "rubric_judge"} and set(m["by_strength"]) == {
        "Significantly better", "Better", "Slightly better"}
    assert m["rewards"]["chosen"]["n"] == h["n"]
    maj = m["majority_agreement"]
    assert maj["n_items"] == 4 and maj["n_decisive"] == 4 and maj["all"]["n"] == 4
    trained_on = {p["id"] for p in train}
    assert maj["heldout"]["n"] == sum(stable_id(q) not in trained_on for q in COMPARE_QS)
    assert maj["baselines"]["rubric_judge"]["accuracy"] == 1.0
    assert m["pooling_check"]["pools_end_of_turn"] and m["pooling_check"]["max_abs_diff"] < 1e-4
    assert m["train"]["trainable_params"] > 0 and m["train"]["tokens_per_s"] > 0 and m["train"]["train_loss"] > 0
    cfg = json.loads((project / "models/reward/adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and "score" in cfg["modules_to_save"] and cfg["layers_to_transform"] == [1]
    assert (project / "models/reward/adapter_model.safetensors").exists()
    assert (project / "metrics/reward_model/plots/metrics/loss.tsv").exists()
    assert not any(p.name.startswith("checkpoint") for p in (project / "models/reward").iterdir())
    assert "held-out accuracy" in r.output

    # rerun: same adapter bytes and the same metrics (timings aside)
    before = (project / "models/reward/adapter_model.safetensors").read_bytes()
    assert _run().exit_code == 0
    assert (project / "models/reward/adapter_model.safetensors").read_bytes() == before
    m2 = json.loads((project / "metrics/reward_model.json").read_text())
    for k in ("runtime_s", "tokens_per_s"):
        m["train"].pop(k), m2["train"].pop(k)
    assert m2 == m


def test_reward_model_stage_errors_are_one_line(project):
    write_params(project / "params.yaml", {"reward_model": {"sources": ["nope_vs_sft"]}})
    r = _run()
    assert r.exit_code == 1 and "Traceback" not in r.output and "nope_vs_sft" in r.output, r.output
    write_params(project / "params.yaml", {"reward_model": {"sources": [], "max_length": 8}})
    r = _run()
    assert r.exit_code == 1 and "Traceback" not in r.output and "max_length" in r.output, r.output
    write_params(project / "params.yaml", {"reward_model": {"max_length": 320, "unsure": "sometimes"}})
    r = _run()
    assert r.exit_code == 1 and "reward_model.unsure" in r.output, r.output
    assert not (project / "models/reward").exists()
