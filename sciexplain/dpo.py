"""Direct Preference Optimization (TRL's DPOTrainer) on best-vs-worst answer pairs, starting from the SFT adapter.

Data are conversational preference rows: ``prompt`` = the student's view of the question
(:func:`sciexplain.prompts.student_messages`), ``chosen`` / ``rejected`` = one assistant turn each.

Reference model (checked in trl 1.16 ``DPOTrainer.__init__`` and ``_compute_loss``): we pass the SFT adapter as a
trainable ``PeftModel`` with ``ref_model=None`` and no ``peft_config``. TRL then adds a second, frozen adapter
``"ref"`` holding a copy of the SFT weights and computes the reference log-probs under ``use_adapter(model, "ref")``.
So the reference is the SFT policy (the usual DPO reference), *not* the adapter-disabled base model; before the
first step policy == reference and every implicit reward is exactly 0. Only with no ``init_adapter`` (a fresh LoRA
from ``lora``; DPOTrainer then loads the base from its path through ``model_init_kwargs``) is the reference the
adapter-disabled base model. The policy is saved through ``trainer.save_model()`` on every rank
(:func:`sciexplain.dist.save_adapter`); the saved folder holds the ``default`` (policy) adapter only (PEFT writes
the frozen ``ref`` copy to a sub-folder, which is dropped).

Length: DPOTrainer drops a pair whose prompt alone reaches ``max_length`` and truncates the rest (keep_start);
both are counted in the metrics. DPOConfig 1.16 has no ``max_prompt_length``.
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

log = logging.getLogger(__name__)

from .params_schema import LOSS_TYPES  # noqa: E402  (the schema owns the allowed values)


def to_preference_rows(pairs: list[dict]) -> list[dict]:
    """{id, question, chosen, rejected} -> TRL's conversational {prompt, chosen, rejected} (+ id)."""
    return [{"id": p["id"], "prompt": student_messages(p["question"]),
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]


def _loss_types(loss_type) -> list[str]:
    from .records import UserError

    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    bad = [t for t in types if t not in LOSS_TYPES]
    if not types or bad:
        raise UserError(f"dpo.loss_type {loss_type!r}: unknown {bad or 'empty'}; choose from {', '.join(LOSS_TYPES)}")
    return types


# the stage's choices where the params' dpo.trainer says nothing (sciexplain.trainer_config.build)
DEFAULTS = dict(activation_checkpointing=False, logging_steps=1, save_strategy="no", dataloader_num_workers=0,
                disable_tqdm=False)


def dpo_config(trainer: dict | None, scratch_dir, *, beta, loss_type, evaluate: bool, model_init_kwargs=None):
    """``trl.DPOConfig``: :data:`DEFAULTS` < ``trainer`` (the params' ``dpo.trainer``) < ``beta``, ``loss_type``
    (the section's own keys) and what the code owns."""
    from .trainer_config import build, precision

    return build("dpo", trainer, defaults={**DEFAULTS, "eval_strategy": "epoch" if evaluate else "no"},
                 owned={"output_dir": str(scratch_dir), "report_to": "none", "model_init_kwargs": model_init_kwargs,
                        "beta": float(beta), "loss_type": _loss_types(loss_type), **precision("policy")})


def build_dpo_trainer(base_dir, train_pairs: list[dict], val_pairs: list[dict], *, init_adapter=None,
                      lora: dict | None = None, beta: float = 0.1, loss_type="sigmoid", trainer: dict | None = None,
                      scratch_dir="scratch/dpo", quantize_4bit="auto", callbacks=()):
    """A ready DPOTrainer: policy = ``init_adapter`` (trainable), reference = its frozen copy (see module doc).
    ``trainer``: ``trl.DPOConfig`` settings (the params' ``dpo.trainer``, see :func:`dpo_config`)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOTrainer

    from_path = init_adapter is None  # the config first: a bad trainer setting stops before any model loads
    args = dpo_config(trainer, scratch_dir, beta=beta, loss_type=loss_type, evaluate=bool(val_pairs),
                      model_init_kwargs=training_init_kwargs(quantize_4bit) if from_path else None)
    set_seed(args.seed)
    tok = load_tokenizer(base_dir, padding_side="right")
    model, peft_config = load_trainable_policy(base_dir, init_adapter, lora, quantize_4bit)
    train_ds = Dataset.from_list(to_preference_rows(train_pairs))
    val_ds = Dataset.from_list(to_preference_rows(val_pairs)) if val_pairs else None
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                      processing_class=tok, peft_config=peft_config, callbacks=list(callbacks),
                      quantization_config=training_quantization_config(quantize_4bit) if from_path else None)


def _lengths(ds, max_length: int) -> tuple[int, int]:
    """(tokens processed per epoch, pairs truncated) of a prepared DPO dataset."""
    tokens = truncated = 0
    for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]):
        lc, lr = len(p) + len(c), len(p) + len(r)
        truncated += max(lc, lr) > max_length
        tokens += min(lc, max_length) + min(lr, max_length)
    return tokens, truncated


def _eval(trainer, suffix: str = "") -> dict:
    # DPOTrainer.log adds its rewards/* under "eval_" whatever metric_key_prefix is: keep the default prefix
    m = evaluate_before_train(trainer) if suffix == "_start" else trainer.evaluate()
    return {f"eval_{k.replace('/', '_')}{suffix}": m.get(f"eval_{k}")
            for k in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")}


def train_dpo(base_dir, pairs: list[dict], val_pairs: list[dict], out_dir, *, init_adapter=None,
              lora: dict | None = None, beta: float = 0.1, loss_type="sigmoid", trainer: dict | None = None,
              scratch_dir="scratch/dpo", live_dir=None, quantize_4bit="auto") -> dict:
    """DPO from ``init_adapter`` on ``pairs`` ({id, question, chosen, rejected}); save the policy adapter to
    ``out_dir`` (None: do not save). Under ``accelerate launch`` call it on every rank; only the main process writes
    (``out_dir``, ``live_dir``). Returns metrics: pair counts, eval loss/rewards before and after (on
    ``val_pairs``), the last training log's rewards, train loss first/last/mean, tokens/s."""
    import torch

    from .records import UserError

    callbacks = []
    live, live_callbacks = trainer_config.dvclive(live_dir)
    callbacks += live_callbacks
    settings = trainer
    trainer = build_dpo_trainer(base_dir, pairs, val_pairs, init_adapter=init_adapter, lora=lora, beta=beta,
                                loss_type=loss_type, trainer=settings, scratch_dir=scratch_dir,
                                quantize_4bit=quantize_4bit, callbacks=callbacks)
    max_length = trainer.args.max_length
    n_train = len(trainer.train_dataset)
    if n_train == 0:
        raise UserError(f"every DPO training pair was dropped: each prompt alone fills dpo.trainer.max_length {max_length}")
    keep_adapter_in_compute_dtype(trainer.model)  # QLoRA on the CPU: LoRA weights stay fp32
    tokens, truncated = _lengths(trainer.train_dataset, max_length)
    trainable, total = count_parameters(trainer.model)
    metrics: dict = {
        "train_pairs": len(pairs), "val_pairs": len(val_pairs), "train_pairs_used": n_train,
        "train_pairs_dropped": len(pairs) - n_train, "train_pairs_truncated": truncated,
        "beta": float(beta), "loss_type": "+".join(_loss_types(loss_type)),
        "reference": "init_adapter (frozen copy)" if init_adapter else "base (adapters disabled)",
        "init_adapter": str(init_adapter) if init_adapter else None,
        "trainable_parameters": trainable, "total_parameters": total,
    }
    if trainer.eval_dataset is not None:
        metrics.update(_eval(trainer, "_start"))
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h and "rewards/margins" in h]
    metrics["train_loss"] = result.training_loss
    metrics["train_loss_first_step"] = logs[0]["loss"] if logs else None
    metrics["train_loss_last_step"] = logs[-1]["loss"] if logs else None
    metrics["train_rewards_accuracies_last_step"] = logs[-1]["rewards/accuracies"] if logs else None
    metrics["train_rewards_margins_last_step"] = logs[-1]["rewards/margins"] if logs else None
    if trainer.eval_dataset is not None:
        metrics.update(_eval(trainer))
    n_tokens = tokens * math.ceil(trainer.args.num_train_epochs)
    metrics.update({"train_seconds": seconds, "train_tokens": n_tokens,
                    "train_tokens_per_s": n_tokens / max(seconds, 1e-9), "steps": int(trainer.state.global_step),
                    "processes": int(trainer.args.world_size)})
    if out_dir is not None:
        save_adapter(trainer, out_dir)  # every rank (a collective); the policy adapter only, no "ref" sub-folder
    if live is not None:
        live.end()
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
