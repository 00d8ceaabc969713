"""4-bit NF4 (QLoRA) on the CPU: bitsandbytes 0.50's CPU backend quantises, de-quantises and runs Linear4bit there,
so `model.quantize_4bit: true` works without CUDA (slowly; `auto` stays CUDA-only). Load, a few LoRA steps through
SFTTrainer (the trainer loads the 4-bit base itself from `quantization_config`), and merging into the fp32 base."""
from __future__ import annotations

import pytest
import torch

from sciexplain import models
from test_sft import TARGET

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(models.cpu_4bit_support() is not None,
                                reason=f"no CPU 4-bit backend: {models.cpu_4bit_support()}")]




def _linear4bit_count(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_nf4_load_on_cpu(tiny_base_4bit):
    if torch.cuda.is_available():
        pytest.skip("CPU check")
    q = models.load_causal_lm(tiny_base_4bit, quantize_4bit=True)
    assert q.is_loaded_in_4bit and _linear4bit_count(q) == 2 * 7  # every projection of both layers
    cfg = q.config.quantization_config
    assert cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_quant_storage == torch.float32
    ids = torch.tensor([[1, 5, 9, 30, 40]])
    with torch.no_grad():
        lq, lf = q(ids).logits, models.load_causal_lm(tiny_base_4bit)(ids).logits
    assert torch.isfinite(lq).all() and lq.device.type == "cpu"
    # NF4 rounds each weight to one of 16 levels per 64-weight block: close to the fp32 model, not equal
    assert 0 < (lq - lf).abs().max() < lf.abs().max()
    rm = models.load_seq_classifier(tiny_base_4bit, quantize_4bit=True)  # the reward scorer's path
    assert rm.is_loaded_in_4bit and rm(ids).logits.shape == (1, 1)


def test_qlora_steps_then_merge_into_the_fp32_base(tiny_base_4bit, tmp_path):
    from safetensors.torch import load_file

    from sciexplain.sft import split_train_val, train_sft

    recs = [{"id": f"q{i}", "question": f"Why does ice float? ({i})", "answer": TARGET} for i in range(10)]
    train, val = split_train_val(recs, 0.2, seed=0)
    m = train_sft(tiny_base_4bit, train, val, tmp_path / "qlora", lora={"r": 4, "alpha": 8, "dropout": 0.0},
                  trainer={"learning_rate": 1e-2, "lr_scheduler_type": "cosine", "num_train_epochs": 2,
                           "per_device_train_batch_size": 4, "max_length": 64, "seed": 0}, quantize_4bit=True,
                  scratch_dir=tmp_path / "scratch")
    assert m["steps"] == 4 and m["train_loss_last_step"] < m["train_loss_first_step"], m
    assert m["eval_loss"] < m["eval_loss_start"], m
    w = load_file(tmp_path / "qlora" / "adapter_model.safetensors")
    assert w and all(v.dtype == torch.float32 for v in w.values())
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in w.items())

    # merge into the de-quantised (fp32) base, never into the 4-bit one
    peft_fp32 = models.load_causal_lm(tiny_base_4bit, adapter=tmp_path / "qlora", device="cpu")
    ids = torch.tensor([[1, 5, 9, 30, 40, 7]])
    with torch.no_grad():
        want = peft_fp32(ids).logits
        merged = peft_fp32.merge_and_unload()
        got = merged(ids).logits
    assert _linear4bit_count(merged) == 0 and next(merged.parameters()).dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    # the adapter on the 4-bit base it was trained with: the same model up to the NF4 rounding of the base
    with torch.no_grad():
        on_4bit = models.load_causal_lm(tiny_base_4bit, adapter=tmp_path / "qlora", quantize_4bit=True)(ids).logits
    assert torch.isfinite(on_4bit).all() and not torch.allclose(on_4bit, want, atol=1e-5)


def test_a_4bit_model_trained_on_the_cpu_keeps_its_gradients_after_an_eval_pass(tiny_base_4bit):
    """bitsandbytes 0.50 repacks a Linear4bit's weights for its avx512_bf16 CPU kernel after one no-grad forward in
    eval mode (TRL evaluates before training), and that kernel has no backward: the LoRA layers below the packed ones
    then get no gradient. The training loaders keep the plain layout (models.keep_cpu_4bit_layout_trainable). On a
    CPU without avx512_bf16 nothing is ever packed, and this checks the plain path."""
    if torch.cuda.is_available():
        pytest.skip("CPU check")
    from peft import get_peft_model

    model = get_peft_model(models.trl_load(tiny_base_4bit, quantize_4bit=True),
                           models.lora_config(r=4, alpha=8, dropout=0.0))
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())
    ids = torch.tensor([[1, 5, 9, 30, 40, 7]])
    model.eval()
    with torch.no_grad():
        model(ids)
    model.train()
    model(ids, labels=ids).loss.backward()
    first = [p.grad for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n]
    assert len(first) == 7 and all(g is not None and g.abs().sum() > 0 for g in first)
