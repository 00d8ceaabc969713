
import torch
from click.testing import CliRunner
from peft import LoraConfig, get_peft_model

from sciexplain import explain as ask
from sciexplain.models import load_causal_lm


def _adapter(tiny_base, path):
    model = get_peft_model(load_causal_lm(tiny_base, trainable=True),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(path)


def test_ask_prints_an_answer_from_an_adapter(tiny_base, tmp_path):
    _adapter(tiny_base, tmp_path / "models" / "sft")
    r = CliRunner().invoke(ask.main, ["Why is the sky blue?", "--model", "sft", "--base", str(tiny_base),
                                      "--models-dir", str(tmp_path / "models"), "--max-new-tokens", "5"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() != ""
    r = CliRunner().invoke(ask.main, ["--model", "base", "--base", str(tiny_base), "--max-new-tokens", "5"],
                           input="How do stars shine?\n")
    assert r.exit_code == 0, r.output


def test_missing_adapter_is_a_clean_error(tiny_base, tmp_path):
    r = CliRunner().invoke(ask.main, ["Why?", "--model", "rs", "--base", str(tiny_base), "--models-dir", str(tmp_path)])
    assert r.exit_code == 1 and "holds no LoRA adapter" in r.output and "Traceback" not in r.output


def test_export_merged_equals_adapter_model(tiny_base, tmp_path):
    _adapter(tiny_base, tmp_path / "models" / "dpo")
    r = CliRunner().invoke(ask.main, ["--model", "dpo", "--base", str(tiny_base), "--models-dir", str(tmp_path / "models"),
                                      "--export-merged", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    ids = torch.tensor([[1, 5, 9, 30, 7]])
    with torch.no_grad():
        want = load_causal_lm(tiny_base, adapter=tmp_path / "models" / "dpo")(ids).logits
        got = load_causal_lm(tmp_path / "merged")(ids).logits
    assert torch.allclose(want, got, atol=1e-4)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    r = CliRunner().invoke(ask.main, ["--model", "dpo", "--base", str(tiny_base), "--models-dir", str(tmp_path / "models"),
                                      "--export-merged", str(tmp_path / "merged")])
    assert r.exit_code == 1 and "not empty" in r.output
