"""LoRA supervised fine-tuning with TRL's SFTTrainer, shared by the ``sft`` and ``rs`` stages.

Data are conversational prompt/completion pairs (the question as the user turn, the target explanation as
the assistant turn), so the loss covers the completion only (SmolLM2's chat template has no
``{% generation %}`` markers, so ``assistant_only_loss`` does not apply). fp32 and ``use_cpu`` on CPU;
4-bit NF4 (QLoRA) where CUDA exists (or on the CPU with ``model.quantize_4bit: true``). A new adapter starts from the
base model *path*: SFTTrainer loads it through ``model_init_kwargs`` / ``quantization_config`` and places it (TRL and
accelerate own placement). Works unchanged under ``accelerate launch`` (multi-GPU, FSDP, DeepSpeed): every rank
saves through ``trainer.save_model()`` (:func:`sciexplain.dist.save_adapter`), only the main process writes files.
"""
from __future__ import annotations

import logging
import math
import time

from . import trainer_config
from .dist import evaluate_before_train, save_adapter
from .models import (count_parameters, keep_adapter_in_compute_dtype, load_tokenizer, load_trainable_policy,
                     training_init_kwargs, training_quantization_config)
from .prompts import student_messages
from .splits import hash_order

log = logging.getLogger(__name__)


def to_conversations(records: list[dict], answer_field: str = "answer") -> list[dict]:
    return [{"id": r["id"], "prompt": student_messages(r["question"]),
             "completion": [{"role": "assistant", "content": r[answer_field]}]} for r in records]


def split_train_val(records: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic split by question id (at least one validation record when val_fraction > 0)."""
    ranked = hash_order(records, seed, key=lambda r: r["id"])
    n_val = min(len(ranked) - 1, max(1, round(len(ranked) * val_fraction))) if val_fraction > 0 else 0
    return ranked[n_val:], ranked[:n_val]


# the stage's choices where the params' sft.trainer / rs.trainer says nothing (sciexplain.trainer_config.build)
DEFAULTS = dict(
    activation_checkpointing=False,  # TRL's default (True) only costs time at this scale
    completion_only_loss=True, packing=False, logging_steps=1, save_strategy="no", dataloader_num_workers=0,
    disable_tqdm=False,
)


def sft_config(trainer: dict | None, scratch_dir, *, has_val: bool = True, model_init_kwargs=None,
               section: str = "sft"):
    """``trl.SFTConfig``: :data:`DEFAULTS` < ``trainer`` (the params' ``<section>.trainer``) < what the code owns."""
    from .trainer_config import build, precision

    return build(section, trainer, defaults={**DEFAULTS, "eval_strategy": "epoch" if has_val else "no"},
                 owned={"output_dir": str(scratch_dir), "report_to": "none", "model_init_kwargs": model_init_kwargs,
                        **precision()})


LOG_ONLY_OUTPUTS = ("entropy", "mean_token_accuracy")


def make_lean_trainer_class():
    """TRL's SFTTrainer, with its fused LM head computing only the log-probs the loss needs.

    TRL 1.16 patches the model's LM head to compute, beside each position's log-prob, its entropy and top-1 hit over
    the whole 49k vocabulary, only for two log entries (``entropy``, ``mean_token_accuracy``); there is no switch.
    That is ~12% of a LoRA step in fp32 and more under bf16 autocast on the CPU (bench/RESULTS.md). This subclass
    re-patches the head with ``outputs=("log_probs",)`` (TRL's own ``add_fused_lm_head``), hands TRL's
    ``compute_loss`` zeros for the two fields it no longer computes, and leaves those two entries out of the logs.
    The loss, its gradients and every other log entry are TRL's, unchanged (a test holds them equal)."""
    import types

    import torch
    from accelerate.utils import is_peft_model
    from trl import SFTTrainer
    from trl.trainer.utils import add_fused_lm_head

    class LeanSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            base = self.model.get_base_model() if is_peft_model(self.model) else self.model
            add_fused_lm_head(base, outputs=("log_probs",))
            fused = base.forward

            def forward(self_, *a, **kw):
                out = fused(*a, **kw)
                if kw.get("fused_lm_head") and out.entropy is None:
                    zeros = torch.zeros_like(out.log_probs, requires_grad=False)
                    out.entropy, out.is_top1 = zeros, zeros
                return out

            base.forward = types.MethodType(forward, base)

        def log(self, logs, start_time=None):
            mode = "train" if self.model.training else "eval"
            for key in LOG_ONLY_OUTPUTS:
                self._metrics[mode].pop(key, None)
            super().log(logs, start_time)

    return LeanSFTTrainer


def train_sft(base_dir, train_records: list[dict], val_records: list[dict], out_dir, *, init_adapter=None,
              lora: dict | None = None, trainer: dict | None = None, section: str = "sft", quantize_4bit="auto",
              scratch_dir="scratch/sft", live_dir=None, answer_field: str = "answer") -> dict:
    """Train a LoRA adapter (new, or continuing ``init_adapter``) and save it to ``out_dir`` (None: do not save).
    ``trainer``: ``trl.SFTConfig`` settings (the params' ``<section>.trainer``, see :func:`sft_config`).
    Call it on every rank under ``accelerate launch``: only the main process writes (``out_dir``, ``live_dir``).
    Returns metrics (the same on every rank)."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    # the config first: a bad trainer setting stops before any model loads
    from_path = init_adapter is None
    args = sft_config(trainer, scratch_dir, has_val=bool(val_records), section=section,
                      model_init_kwargs=training_init_kwargs(quantize_4bit) if from_path else None)
    set_seed(args.seed)
    tok = load_tokenizer(base_dir, padding_side="right")
    model, peft_config = load_trainable_policy(base_dir, init_adapter, lora, quantize_4bit)
    train_ds = Dataset.from_list(to_conversations(train_records, answer_field))
    val_ds = Dataset.from_list(to_conversations(val_records, answer_field)) if val_records else None
    callbacks = []
    live, live_callbacks = trainer_config.dvclive(live_dir)
    callbacks += live_callbacks
    trainer = make_lean_trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                         processing_class=tok, peft_config=peft_config, callbacks=callbacks,
                         quantization_config=training_quantization_config(quantize_4bit) if from_path else None)
    keep_adapter_in_compute_dtype(trainer.model)  # QLoRA on the CPU: LoRA weights stay fp32
    trainable, total = count_parameters(trainer.model)
    metrics: dict = {"train_examples": len(train_ds), "val_examples": len(val_ds) if val_ds else 0,
                     "trainable_parameters": trainable, "total_parameters": total,
                     "init_adapter": str(init_adapter) if init_adapter else None}
    if val_ds is not None:
        metrics["eval_loss_start"] = evaluate_before_train(trainer, metric_key_prefix="start")["start_loss"]
        with trainer.model.disable_adapter():
            metrics["eval_loss_base"] = evaluate_before_train(trainer, metric_key_prefix="base")["base_loss"]
    n_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) * math.ceil(args.num_train_epochs)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    metrics["train_loss"] = result.training_loss
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics["train_loss_first_step"] = losses[0] if losses else None
    metrics["train_loss_last_step"] = losses[-1] if losses else None
    if val_ds is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["eval_loss_improvement_vs_base"] = metrics["eval_loss_base"] - metrics["eval_loss"]
    metrics["steps"] = int(trainer.state.global_step)
    metrics["processes"] = int(trainer.args.world_size)
    metrics["train_seconds"] = seconds
    metrics["train_tokens"] = n_tokens
    metrics["train_tokens_per_s"] = n_tokens / max(seconds, 1e-9)
    if out_dir is not None:
        save_adapter(trainer, out_dir)  # every rank: trainer.save_model() is a collective
    if live is not None:
        live.end()
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
