import json
import math

import pytest
import torch
from click.testing import CliRunner

from conftest import write_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = "Ice floats because solid water is less dense than liquid water. In summary, the lattice is open."
BAD = "stone stone stone stone stone stone"




def _pairs(n, start=0):
    return [{"id": f"q{i}", "question": f"Why does ice float? ({i})", "chosen": GOOD, "rejected": BAD,
             "reward_chosen": 1.0, "reward_rejected": -1.0} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def sft_adapter(tiny_base, tmp_path_factory):
    """A LoRA adapter with random (non-zero) B matrices: the SFT policy differs from the base model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from sciexplain.models import lora_config

    torch.manual_seed(1)
    cfg = lora_config(r=8, alpha=16, dropout=0.0)
    cfg.init_lora_weights = False
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), cfg)
    out = tmp_path_factory.mktemp("sft") / "adapter"
    model.save_pretrained(out)
    return out


def _logps(model, tok, question, answer):
    """Summed log-prob of the answer tokens after the chat prompt."""
    from sciexplain.prompts import student_messages

    prompt = tok.apply_chat_template(student_messages(question), add_generation_prompt=True, tokenize=False)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p) - 1:-1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(a)[:, None]).sum().item()


def test_dpo_prefers_chosen_and_reference_is_the_sft_adapter(tiny_base, sft_adapter, tmp_path):
    from safetensors.torch import load_file

    from sciexplain.dpo import train_dpo

    m = train_dpo(tiny_base, _pairs(16), _pairs(4, start=100), tmp_path / "dpo", init_adapter=sft_adapter,
                  beta=0.1, loss_type="sigmoid", trainer={"learning_rate": 1e-2, "num_train_epochs": 2,
                                                          "per_device_train_batch_size": 8, "max_length": 96, "seed": 0},
                  scratch_dir=tmp_path / "scratch", live_dir=tmp_path / "live")
    # reference == SFT policy: before any step every implicit reward is exactly 0 (with the adapter-disabled base
    # as reference, rewards/chosen would be beta * (logp_sft - logp_base) != 0 since the adapter is non-trivial)
    assert m["eval_rewards_chosen_start"] == 0 and m["eval_rewards_margins_start"] == 0, m
    assert m["eval_loss_start"] == pytest.approx(math.log(2), abs=1e-4)
    assert m["eval_rewards_accuracies"] >= 0.75 and m["eval_rewards_margins"] > 0.1, m
    assert m["eval_loss"] < m["eval_loss_start"] - 0.05, m
    assert m["train_loss_last_step"] < m["train_loss_first_step"], m
    assert m["train_pairs"] == 16 and m["val_pairs"] == 4 and m["train_pairs_dropped"] == 0
    assert m["train_tokens_per_s"] > 0 and m["reference"].startswith("init_adapter")
    out = tmp_path / "dpo"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    new, old = load_file(out / "adapter_model.safetensors"), load_file(sft_adapter / "adapter_model.safetensors")
    assert set(new) == set(old) and any(not torch.equal(new[k], old[k]) for k in new)
    assert (tmp_path / "live" / "plots" / "metrics" / "eval" / "rewards" / "margins.tsv").exists()


def test_reference_logps_are_the_sft_model_not_the_base(tiny_base, sft_adapter, tmp_path):
    from trl.trainer.utils import use_adapter

    from sciexplain.dpo import build_dpo_trainer
    from sciexplain.models import load_causal_lm, load_tokenizer

    tr = build_dpo_trainer(tiny_base, _pairs(2), [], init_adapter=sft_adapter, trainer={"max_length": 96},
                           scratch_dir=tmp_path / "s")
    assert tr.ref_model is None and sorted(tr.model.peft_config) == ["default", "ref"]
    tok = load_tokenizer(tiny_base)
    q = "Why does ice float? (0)"
    with torch.no_grad():  # nudge the policy so that "ref" and "default" can be told apart
        for n, prm in tr.model.named_parameters():
            if ".default." in n and "lora_B" in n:
                prm.add_(0.5)
    tr.model.eval()
    with use_adapter(tr.model, "ref"):
        ref = _logps(tr.model, tok, q, GOOD)
    policy = _logps(tr.model, tok, q, GOOD)
    sft = _logps(load_causal_lm(tiny_base, adapter=sft_adapter), tok, q, GOOD)
    base = _logps(load_causal_lm(tiny_base), tok, q, GOOD)
    assert ref == pytest.approx(sft, abs=1e-4)
    assert abs(ref - base) > 1e-2 and abs(policy - ref) > 1e-2


@pytest.mark.parametrize("loss_type,beta,expected", [("sigmoid", 0.1, math.log(2)), ("ipo", 0.5, 1.0), ("ipo", 0.25, 4.0)])
def test_beta_and_loss_type_reach_the_trainer(tiny_base, sft_adapter, tmp_path, loss_type, beta, expected):
    from sciexplain.dpo import build_dpo_trainer

    # at the start policy == reference, so the loss is the loss function at margin 0:
    # sigmoid -log(sigmoid(0)) = ln 2; IPO (0 - 1/(2 beta))^2
    tr = build_dpo_trainer(tiny_base, _pairs(2), _pairs(2, start=50), init_adapter=sft_adapter, beta=beta,
                           loss_type=loss_type, trainer={"max_length": 96}, scratch_dir=tmp_path / "s")
    assert tr.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-4)


def test_unknown_loss_type_is_a_user_error(tiny_base, sft_adapter, tmp_path):
    from sciexplain.dpo import build_dpo_trainer
    from sciexplain.records import UserError

    with pytest.raises(UserError, match="dpo.loss_type 'ppo'"):
        build_dpo_trainer(tiny_base, _pairs(2), [], init_adapter=sft_adapter, loss_type="ppo", scratch_dir=tmp_path)


def _stage_setup(workdir, pairs, extra=None):
    (workdir / "data/rs").mkdir(parents=True)
    (workdir / "data/rs/dpo_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    dpo = {"beta": 0.1, "loss_type": "sigmoid", "val_fraction": 0.25, "extra_pairs": None,
           "trainer": {"learning_rate": 0.01, "num_train_epochs": 1, "per_device_train_batch_size": 4,
                       "gradient_accumulation_steps": 1, "max_length": 96, "seed": 0}}
    if extra is not None:
        (workdir / "extra.jsonl").write_text("".join(json.dumps(p) + "\n" for p in extra))
        dpo["extra_pairs"] = "extra.jsonl"
    write_params(workdir / "params.yaml", {"dpo": dpo})


def test_dpo_stage_writes_adapter_metrics_and_curves(workdir, tiny_base, sft_adapter):
    from stages import dpo

    extra = [{"question": "Why is the sky blue?", "chosen": GOOD, "rejected": BAD},
             {"question": "Why is the sky blue?", "chosen": GOOD + " Indeed.", "rejected": BAD}]
    _stage_setup(workdir, _pairs(6), extra)
    r = CliRunner().invoke(dpo.main, ["--base", str(tiny_base), "--init-adapter", str(sft_adapter)])
    assert r.exit_code == 0, r.output
    m = json.loads((workdir / "metrics/dpo.json").read_text())
    assert m["pairs_select"] == 6 and m["pairs_extra"] == 2 and m["train_pairs"] + m["val_pairs"] == 8
    assert m["extra_pairs"] == "extra.jsonl" and m["beta"] == 0.1 and m["loss_type"] == "sigmoid"
    assert (workdir / "models/dpo/adapter_model.safetensors").exists()
    assert not (workdir / "models/dpo/ref").exists()
    assert (workdir / "metrics/dpo/plots/metrics").is_dir()
    assert not [p for p in (workdir / "models").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_split_pairs_keeps_questions_together():
    from stages.dpo import split_pairs

    pairs = _pairs(8) + [dict(p, chosen=GOOD + "!") for p in _pairs(8)]
    train, val = split_pairs(pairs, 0.25, seed=0)
    assert len(val) == 4 and len(train) == 12
    assert not {p["id"] for p in train} & {p["id"] for p in val}
    assert split_pairs(list(reversed(pairs)), 0.25, seed=0)[1] == list(reversed(val))


def test_dpo_stage_needs_two_pairs(workdir, tiny_base, sft_adapter):
    from stages import dpo

    _stage_setup(workdir, _pairs(1))
    r = CliRunner().invoke(dpo.main, ["--base", str(tiny_base), "--init-adapter", str(sft_adapter)])
    assert r.exit_code == 1
    assert "select produced 1 pair; DPO needs at least 2: lower select.min_gap or raise sample.n" in r.output
    assert "data/rs/dpo_pairs.jsonl" in r.output and "Traceback" not in r.output
    assert not (workdir / "models").exists() and not (workdir / "metrics/dpo.json").exists()
