"""Training the reward model: TRL's RewardTrainer, LoRA on a 1-logit sequence classifier (see :mod:`sciexplain.reward`
for the input format, the truncation rule and the loss).

Kept apart from :mod:`sciexplain.reward` (scoring and evaluation), so the stages that only score (``score``,
``evaluate``) do not depend on the training and multi-process code.

Training until it learns: with ``eval_pairs`` (a dev split of the training questions, never the held-out test
pairs) the trainer evaluates after every epoch, up to ``epochs`` (the cap); it stops as soon as the dev loss
beats the constant predictor's (:func:`sciexplain.reward.constant_loss`, with ``until_beats_constant``: "trained
until it learns", the cheapest model that does), or after ``early_stopping_patience`` epochs without a better
dev loss, and restores the epoch with the best dev loss (``load_best_model_at_end``; checkpoints hold the adapter
only and live in ``scratch_dir``). The result names that epoch, why training stopped, and every epoch's dev loss
beside the constant predictor's.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping, Sequence

from . import trainer_config
from .records import UserError
from .reward import REWARD_CONFIG, ChatEncoder, round4, constant_loss, encode_pairs

log = logging.getLogger(__name__)


def train_reward_model(base_dir, train_pairs: Sequence[Mapping], out_dir, *, lora_r: int = 16, lora_alpha: int = 64,
                       lora_dropout: float = 0.1, target_modules=None, lora_layers: int | None = None,
                       trainer: dict | None = None, center_rewards_coefficient: float | None = None,
                       scratch_dir="scratch/reward", live_dir=None, use_margin: bool = True,
                       quantize_4bit="auto", eval_pairs: Sequence[Mapping] | None = None,
                       early_stopping_patience: int | None = 1, until_beats_constant: bool = True) -> dict:
    """Train a LoRA reward model on ``train_pairs`` (see :mod:`sciexplain.preferences`) and save it to
    ``out_dir``: a PEFT adapter folder (the ``score`` head included via ``modules_to_save``) + the
    tokenizer + ``reward_config.json`` (max_length). ``lora_layers``: LoRA on the last N decoder layers
    only (backward then stops there: ~3x faster on CPU for SmolLM2 with N=8 of 30); None = all. Trainer scratch goes to ``scratch_dir``; curves to
    a DVCLive folder ``live_dir`` (optional). Under ``accelerate launch`` call it on every rank: the trainer loads
    and places the base itself (``model_init_kwargs``), every rank takes part in ``trainer.save_model()``, and only
    the main process writes files (:func:`sciexplain.dist.save_adapter`). Returns training numbers for metrics::

        {pairs, truncated_pairs, truncated_sequences, tokens, dropped, train_loss, runtime_s,
         tokens_per_s, steps, trainable_params, total_params,
         dev: {pairs, loss_by_epoch: [{epoch, eval_loss, eval_accuracy}], best_epoch, best_loss,
               constant_loss, beats_constant, epochs_run, stopped} | None (without eval_pairs)}
        (stopped: "beat the constant" | "no better dev loss" | "epoch cap")

    ``trainer``: ``trl.RewardConfig`` settings (the params' ``reward_model.trainer``, see :func:`reward_config`;
    ``max_length`` is required: the pairs are pre-truncated to it). Its ``num_train_epochs`` is the cap; without
    ``eval_pairs`` every epoch runs and the last one is kept.
    The dev loss is TRL's eval loss: ``-logsigmoid(r_c - r_r - margin)`` plus the reward-centering term
    (which the constant predictor r_c = r_r = 0 pays nothing for, so the comparison is conservative).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoConfig
    from trl import RewardTrainer

    from .dist import is_main_process, save_adapter
    from .models import (check_model_dir, count_parameters, keep_adapter_in_compute_dtype, load_tokenizer, lora_config,
                         training_quantization_config)

    settings = dict(trainer or {})
    if not isinstance(settings.get("max_length"), int):
        raise UserError(f"reward_model.trainer.max_length: expected an integer (the pairs are truncated to it), "
                        f"got {settings.get('max_length')!r}")
    max_length = int(settings["max_length"])
    check_model_dir(base_dir, "base model")
    tok = load_tokenizer(base_dir, padding_side="right")
    enc = ChatEncoder(tok, max_length)
    rows, counts = encode_pairs(train_pairs, enc)
    if not rows:
        raise UserError("no training pairs for the reward model (check validate.sources, reward_model.sources, "
                        "reward_model.judge_labels)")
    if not use_margin:
        rows = [{k: v for k, v in r.items() if k != "margin"} for r in rows]
    dataset = Dataset.from_list(rows)
    eval_dataset = None
    if eval_pairs:
        eval_rows, _ = encode_pairs(eval_pairs, enc)
        if not use_margin:
            eval_rows = [{k: v for k, v in r.items() if k != "margin"} for r in eval_rows]
        eval_dataset = Dataset.from_list(eval_rows)
    select_best = eval_dataset is not None
    if select_best and is_main_process():  # a previous run's checkpoints must not mix with this run's
        import shutil
        from pathlib import Path

        for old in Path(scratch_dir).glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)

    peft_cfg = lora_config(lora_r, lora_alpha, lora_dropout, target_modules, task_type="SEQ_CLS",
                           modules_to_save=["score"])
    if lora_layers:
        n_layers = int(AutoConfig.from_pretrained(str(base_dir)).num_hidden_layers)
        peft_cfg.layers_to_transform = list(range(max(0, n_layers - int(lora_layers)), n_layers))
        peft_cfg.layers_pattern = "layers"
    args = reward_config(settings, scratch_dir, select_best=select_best, quantize_4bit=quantize_4bit,
                         center_rewards_coefficient=center_rewards_coefficient)
    epochs = float(args.num_train_epochs)
    callbacks = []
    const = None
    if select_best:
        const = constant_loss([p["margin"] for p in eval_pairs] if use_margin else [0.0] * len(eval_pairs))
    beat = _StopWhenBeatsConstant(const) if select_best and until_beats_constant else None
    if beat is not None:
        callbacks.append(beat)
    if select_best and early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(early_stopping_patience)))
    callbacks += trainer_config.dvclive(live_dir)[1]
    trainer = RewardTrainer(model=str(base_dir), args=args, train_dataset=dataset, eval_dataset=eval_dataset,
                            processing_class=tok,
                            peft_config=peft_cfg, callbacks=callbacks,
                            quantization_config=training_quantization_config(quantize_4bit))
    dropped = len(dataset) - len(trainer.train_dataset)
    if select_best:
        dropped += len(eval_dataset) - len(trainer.eval_dataset)
    if dropped:
        raise RuntimeError(f"RewardTrainer dropped {dropped} pre-truncated pairs (max_length {max_length})")
    keep_adapter_in_compute_dtype(trainer.model)  # QLoRA on the CPU: LoRA weights stay fp32
    trainable, total = count_parameters(trainer.model)
    t0 = time.time()
    result = trainer.train()
    runtime = time.time() - t0
    dev = None
    if select_best:
        history = [{"epoch": round(float(h["epoch"]), 4), "eval_loss": round4(h["eval_loss"]),
                    "eval_accuracy": round4(h.get("eval_accuracy"))} for h in trainer.state.log_history if "eval_loss" in h]
        best = min(history, key=lambda h: (h["eval_loss"], h["epoch"])) if history else None
        epochs_run = float(trainer.state.epoch or 0)
        stopped = ("beat the constant" if beat is not None and beat.fired else
                   "epoch cap" if epochs_run >= float(epochs) - 1e-6 else "no better dev loss")
        dev = {"pairs": len(eval_pairs), "loss_by_epoch": history,
               "best_epoch": best["epoch"] if best else None, "best_loss": best["eval_loss"] if best else None,
               "constant_loss": round4(const), "beats_constant": bool(best and best["eval_loss"] < const),
               "epochs_run": round(epochs_run, 4), "stopped": stopped}

    # every rank: save_model() is a collective; the main process keeps adapter + score head + tokenizer
    save_adapter(trainer, out_dir, keep_tokenizer=True, extra_json={REWARD_CONFIG: {
        "max_length": int(max_length), "end_of_turn": enc.eot_text, "pad_token": tok.pad_token}})
    return {
        **counts, "dropped": dropped,
        "train_loss": round4(result.training_loss),
        "runtime_s": round(runtime, 1),
        "tokens_per_s": (round(counts["tokens"] * float(trainer.state.epoch or epochs) / runtime, 1)
                         if runtime > 0 else None),
        "steps": int(result.global_step), "processes": int(trainer.args.world_size),
        "trainable_params": int(trainable), "total_params": int(total),
        "dev": dev,
    }


# the stage's choices where the params' reward_model.trainer says nothing (sciexplain.trainer_config.build)
DEFAULTS = dict(warmup_steps=0, logging_steps=1, activation_checkpointing=False,
                disable_dropout=False,  # the base has no dropout; keep the LoRA dropout the params ask for
                dataloader_num_workers=0, disable_tqdm=False)


def reward_config(trainer: dict | None, scratch_dir, *, select_best: bool, quantize_4bit="auto",
                  center_rewards_coefficient: float | None = None):
    """``trl.RewardConfig``: :data:`DEFAULTS` < ``trainer`` (the params' ``reward_model.trainer``) < what the code
    owns: the best-dev-epoch selection (with a dev split: evaluate every epoch, keep adapter-only checkpoints in the
    scratch folder, restore the best), ``center_rewards_coefficient`` (the section's own key; 0 = off), placement.
    The trainer loads the base (placement is TRL's / accelerate's) after ``set_seed(seed)``: the score head,
    initialised at load time, is the same on every rank and every rerun."""
    from .models import training_init_kwargs
    from .trainer_config import build, precision

    owned = {
        "output_dir": str(scratch_dir), "report_to": "none", "model_init_kwargs": training_init_kwargs(quantize_4bit),
        "eval_strategy": "epoch" if select_best else "no", "save_strategy": "epoch" if select_best else "no",
        "save_only_model": True, "save_total_limit": 1 if select_best else None, "load_best_model_at_end": select_best,
        "metric_for_best_model": "eval_loss" if select_best else None, "greater_is_better": False if select_best else None,
        "center_rewards_coefficient": None if center_rewards_coefficient in (None, 0) else float(center_rewards_coefficient),
        **precision()}
    return build("reward_model", trainer, defaults=DEFAULTS, owned=owned)


def _StopWhenBeatsConstant(constant: float):
    """A trainer callback that stops training after the first evaluation whose loss is below ``constant``."""
    from transformers import TrainerCallback

    class StopWhenBeatsConstant(TrainerCallback):
        fired = False

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and metrics.get("eval_loss") is not None and metrics["eval_loss"] < constant:
                self.fired = True
                control.should_training_stop = True

    return StopWhenBeatsConstant()
