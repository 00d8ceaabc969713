import json

import pytest
from click.testing import CliRunner

from conftest import write_params
from sciexplain.sft import split_train_val, to_conversations, train_sft

TARGET = "Ice floats because it is less dense than water. In summary, the lattice is open."


def _records(n):
    return [{"id": f"q{i}", "question": f"Why does ice float? ({i})", "answer": TARGET} for i in range(n)]


def test_split_train_val_is_deterministic_and_disjoint():
    recs = _records(16)
    train, val = split_train_val(recs, 0.25, seed=0)
    assert len(val) == 4 and not {r["id"] for r in train} & {r["id"] for r in val}
    assert split_train_val(list(reversed(recs)), 0.25, seed=0) == (train, val)
    assert to_conversations(recs[:1])[0]["completion"] == [{"role": "assistant", "content": TARGET}]


def test_sft_changes_adapter_and_lowers_loss(tiny_base, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    train, val = split_train_val(_records(24), 0.25, seed=0)
    m = train_sft(tiny_base, train, val, tmp_path / "adapter", lora={"r": 8, "alpha": 16, "dropout": 0.0},
                  trainer={"learning_rate": 1e-2, "lr_scheduler_type": "cosine", "num_train_epochs": 3,
                           "per_device_train_batch_size": 6, "max_length": 96, "seed": 0},
                  scratch_dir=tmp_path / "scratch", live_dir=tmp_path / "live")
    assert m["eval_loss"] < m["eval_loss_base"] - 0.5, m
    assert m["train_loss_last_step"] < m["train_loss_first_step"], m
    assert m["trainable_parameters"] > 0 and m["train_tokens_per_s"] > 0
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B starts at zero
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").exists()
    assert not (tmp_path / "adapter" / "README.md").exists()
    from sciexplain.models import load_causal_lm

    model = load_causal_lm(tiny_base, adapter=tmp_path / "adapter")
    assert isinstance(model, PeftModel)
    # continuing from the adapter keeps training it
    m2 = train_sft(tiny_base, train, val, tmp_path / "adapter2", init_adapter=tmp_path / "adapter",
                   trainer={"learning_rate": 5e-3, "num_train_epochs": 1, "per_device_train_batch_size": 6,
                            "max_length": 96, "seed": 0}, section="rs", scratch_dir=tmp_path / "s2")
    assert m2["eval_loss_start"] == pytest.approx(m["eval_loss"], abs=1e-3)
    assert m2["init_adapter"] == str(tmp_path / "adapter")


def test_sft_stage_forum_needs_forum_answers(workdir, tiny_base):
    from stages import sft

    (workdir / "data/prepared").mkdir(parents=True)
    (workdir / "data/prepared/sft.jsonl").write_text(json.dumps({"id": "a", "question": "q", "answer": None}) + "\n")
    write_params(workdir / "params.yaml", {"sft": {"data": "forum"}})
    r = CliRunner().invoke(sft.main, ["--base", str(tiny_base)])
    assert r.exit_code == 1 and "sft.data=forum needs forum answers" in r.output
    assert not (workdir / "models").exists()


def test_length_grouped_batches_are_used_and_deterministic(tiny_base, tmp_path):
    """sft.trainer.train_sampling_strategy: group_by_length (transformers' LengthGroupedSampler over the tokenized
    input_ids): batches of similar length, less padding, and a rerun gives the same adapter bytes."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from sciexplain.sft import sft_config

    recs = [{"id": f"q{i}", "question": f"Why does ice float? ({i})", "answer": TARGET + " More." * (i % 7)}
            for i in range(20)]
    trainer = {"learning_rate": 1e-2, "num_train_epochs": 1, "per_device_train_batch_size": 2, "max_length": 96,
               "seed": 0, "train_sampling_strategy": "group_by_length"}
    assert sft_config(trainer, tmp_path / "c").train_sampling_strategy == "group_by_length"
    seen = []
    orig = LengthGroupedSampler.__iter__

    def spy(self):
        order = list(orig(self))
        seen.append([self.lengths[i] for i in order])
        return iter(order)

    LengthGroupedSampler.__iter__ = spy
    try:
        out = []
        for k in range(2):
            train_sft(tiny_base, recs, [], tmp_path / f"a{k}", lora={"r": 4, "alpha": 8, "dropout": 0.0},
                      trainer=trainer, scratch_dir=tmp_path / f"s{k}")
            out.append((tmp_path / f"a{k}" / "adapter_model.safetensors").read_bytes())
    finally:
        LengthGroupedSampler.__iter__ = orig
    assert out[0] == out[1]
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == 20  # every example once, the same order
    # each mega-batch is sorted by length (longest first) except the swapped-in longest example
    assert max(seen[0]) == seen[0][0]


def test_a_trl_setting_added_to_params_reaches_the_trainer(workdir, tiny_base):
    """The sft stage passes sft.trainer straight into trl.SFTConfig: settings params.yaml does not list
    (warmup_steps, max_steps) and changed ones (lr_scheduler_type) show in the DVCLive learning-rate curve."""
    import csv

    from stages import sft

    recs = [{"id": f"q{i}", "question": f"Why does ice float? ({i})", "answer": TARGET, "keep": True} for i in range(10)]
    (workdir / "data/generations/teacher").mkdir(parents=True)
    (workdir / "data/generations/teacher/sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_params(workdir / "params.yaml", {"sft": {
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "val_fraction": 0.0,
        "trainer": {"learning_rate": 1e-2, "lr_scheduler_type": "linear", "warmup_steps": 2, "max_steps": 4,
                    "per_device_train_batch_size": 2, "max_length": 64}}})
    r = CliRunner().invoke(sft.main, ["--base", str(tiny_base)])
    assert r.exit_code == 0, r.output
    with open(workdir / "metrics/sft/plots/metrics/learning_rate.tsv") as f:  # the rate each step trained with
        lrs = [float(row["learning_rate"]) for row in csv.DictReader(f, delimiter="\t")]
    assert json.loads((workdir / "metrics/sft.json").read_text())["steps"] == 4
    # linear warm-up over 2 steps to 1e-2, then linear decay to 0 at step 4 (params.yaml's cosine would not give this)
    assert lrs == pytest.approx([0.0, 5e-3, 1e-2, 5e-3]), lrs
