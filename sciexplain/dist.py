"""The one rank-0 rule of the training stages, and saving a trained adapter safely under several processes.

Training stages run under ``python`` or ``accelerate launch`` (``train.launcher``). Every rank trains; the
trainer's ``save_model()`` is a collective (it gathers FSDP / ZeRO-3 shards) that every rank must call; every
other write (metrics, data, DVCLive curves, swapping the adapter folder into place) happens on the main process
(global rank 0) only, through :func:`is_main_process`. The rank comes from the launcher's environment
(``RANK`` / ``WORLD_SIZE``, set by ``accelerate launch`` and ``torchrun``), so asking never starts a process group.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .records import replace_dir

# what PEFT / Trainer.save_model write besides the adapter that the adapter folders do not keep:
# README.md (a model card with timestamps and paths) and training_args.bin (a pickle of the run's arguments)
_DROPPED = ("README.md", "training_args.bin")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """True on the one process that writes outputs (global rank 0; the only process without a launcher)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in a single process or before the trainer started the process group)."""
    import torch.distributed as td

    if world_size() > 1 and td.is_available() and td.is_initialized():
        td.barrier()


def evaluate_before_train(trainer, **kwargs) -> dict:
    """``trainer.evaluate(**kwargs)`` before ``trainer.train()``, keeping the training data-parallel.

    transformers 5.23 prepares the model for a first evaluation with accelerate's
    ``prepare_model(model, evaluation_mode=True)``, which leaves it unwrapped but marks it ``_is_accelerate_prepared``;
    ``train()`` then asks accelerate to prepare it again, accelerate sees the mark and returns it *without* the
    ``DistributedDataParallel`` wrapper, and every rank trains on its own shard with no gradient all-reduce (silently:
    rank 0 saves a model that saw half the data). Measured here on 2 CPU ranks: an SFT adapter 0.03 away from the
    1-process one instead of 1e-6. After the evaluation we take the mark off the still-unwrapped model, so
    ``train()`` wraps it. FSDP / DeepSpeed evaluation prepares (wraps) the model fully and is left alone.
    """
    out = trainer.evaluate(**kwargs)
    model = trainer.model
    if (world_size() > 1 and getattr(model, "_is_accelerate_prepared", False)
            and trainer.accelerator.unwrap_model(model) is model
            and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)):
        model._is_accelerate_prepared = False
        if model in trainer.accelerator._models:
            trainer.accelerator._models.remove(model)
        trainer.model_wrapped = model
    return out


def saving_dir(out_dir) -> Path:
    """The scratch folder next to ``out_dir`` that :func:`save_adapter` writes into: the same path on every rank
    (hidden, so a crash leaves ``out_dir`` untouched; a stale one is removed before the next save)."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.saving"


def save_adapter(trainer, out_dir, keep_tokenizer: bool = False, extra_json: dict | None = None) -> Path:
    """Save ``trainer``'s model to ``out_dir`` from every rank, safely.

    1. rank 0 clears the scratch folder :func:`saving_dir`; all ranks wait;
    2. every rank calls ``trainer.save_model(scratch)`` (the collective; only rank 0 writes files);
    3. all ranks wait; rank 0 keeps the adapter (``adapter_config.json`` + ``adapter_model.safetensors``, for a
       PEFT model; other adapters such as TRL's frozen ``ref`` copy, which PEFT saves in sub-folders, are dropped),
       the tokenizer only with ``keep_tokenizer``, writes ``extra_json`` files ({name: object}), and swaps the
       folder into place (:func:`sciexplain.records.replace_dir`); all ranks wait again.

    The folder is byte-stable across CPU reruns (no model card, no pickled arguments).
    """
    from .records import write_json

    out = Path(out_dir)
    tmp = saving_dir(out)
    if is_main_process():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    trainer.save_model(str(tmp))
    barrier()
    if is_main_process():
        try:
            for p in sorted(tmp.iterdir()):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.name in _DROPPED or not (keep_tokenizer or p.name.startswith("adapter_")):
                    p.unlink()
            for name, obj in (extra_json or {}).items():
                write_json(tmp / name, obj)
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    barrier()
    return out
