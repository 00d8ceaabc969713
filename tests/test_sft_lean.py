"""The lean SFT trainer (log-probs only in TRL's fused LM head) trains exactly as TRL's SFTTrainer does."""
from __future__ import annotations

import pytest
import torch

from sciexplain import sft

LEAN = sft.make_lean_trainer_class  # the real factory (the tests below patch the module's name)
TRAINER = {"learning_rate": 1e-2, "num_train_epochs": 1, "per_device_train_batch_size": 2, "max_length": 64,
           "seed": 0, "logging_steps": 1}


def _records(n):
    return [{"id": f"q{i}", "question": f"Why does ice float? ({i})",
             "answer": "Ice is less dense than water: its lattice is open. " * (1 + i % 3)} for i in range(n)]


def _train(tiny_base, tmp_path, name, monkeypatch, lean: bool):
    from safetensors.torch import load_file

    history = []
    cls = LEAN()
    if not lean:
        from trl import SFTTrainer

        cls = SFTTrainer

    class Recording(cls):
        def train(self, *a, **kw):
            out = super().train(*a, **kw)
            history.extend(self.state.log_history)
            return out

    monkeypatch.setattr(sft, "make_lean_trainer_class", lambda: Recording)
    m = sft.train_sft(tiny_base, _records(6), _records(2), tmp_path / name, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                      trainer=TRAINER, scratch_dir=tmp_path / f"s-{name}")
    return m, history, load_file(tmp_path / name / "adapter_model.safetensors")


def test_lean_trainer_gives_trl_losses_and_weights_without_the_log_only_outputs(tiny_base, tmp_path, monkeypatch):
    m_ref, h_ref, w_ref = _train(tiny_base, tmp_path, "ref", monkeypatch, lean=False)
    m_lean, h_lean, w_lean = _train(tiny_base, tmp_path, "lean", monkeypatch, lean=True)
    for key in ("eval_loss_start", "train_loss", "eval_loss"):
        assert m_lean[key] == pytest.approx(m_ref[key], abs=1e-5), key
    ref_steps = [h["loss"] for h in h_ref if "loss" in h]
    lean_steps = [h["loss"] for h in h_lean if "loss" in h]
    assert len(ref_steps) == len(lean_steps) >= 3 and lean_steps == pytest.approx(ref_steps, abs=1e-5)
    assert w_lean.keys() == w_ref.keys()
    for k in w_ref:
        assert torch.allclose(w_lean[k], w_ref[k], atol=1e-6), k
    assert any("entropy" in h for h in h_ref)  # TRL logs them ...
    assert not any(k in h for h in h_lean for k in sft.LOG_ONLY_OUTPUTS)  # ... the lean trainer does not compute them
