"""The TRL config of a training stage: its params ``trainer`` mapping passed straight through, plus what the code owns.

``<section>.trainer`` (``sft``, ``rs``, ``reward_model``, ``dpo``, ``grpo``) holds keyword arguments of the stage's
TRL config class (``SFTConfig``, ``RewardConfig``, ``DPOConfig``, ``GRPOConfig``: TRL's settings and every
``transformers.TrainingArguments`` one), so any TRL setting is a params edit. :func:`build` makes the config::

    code defaults  <  the params' trainer mapping  <  code-owned settings (refused in the mapping)

- code defaults: the stage's choices a params edit may change (``logging_steps=1``, ``save_strategy="no"``,
  ``activation_checkpointing=False``, ``data_seed`` = ``seed``, the eval batch = the train batch, ...);
- code-owned (:data:`sciexplain.params_schema.CODE_OWNED`, ``SECTION_OWNED``): the scratch ``output_dir``,
  ``report_to`` (DVCLive is wired by the stage), ``use_cpu`` / ``bf16`` / ``fp16`` (detected),
  ``model_init_kwargs`` (from ``model.quantize_4bit``), and what a section derives from its own keys.

Keys are checked against ``dataclasses.fields`` of the real class before the config (or any model) is built: a typo
is one line naming the key path (``params.yaml: sft.trainer.learnin_rate: unknown setting of trl.SFTConfig; did you
mean learning_rate?``). The same check runs at stage start from trl_fields.json (:mod:`sciexplain.params_schema`);
``python -m sciexplain.trainer_config --write`` records the field lists of the installed TRL there.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Mapping

from .params_schema import TRAINER_CONFIGS, TRL_FIELDS_FILE, ParamsError, trainer_key_problem, trainer_value_problem


def config_class(section: str):
    import trl

    return getattr(trl, TRAINER_CONFIGS[section])


def field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def check(section: str, settings: Mapping[str, Any], where: str = "params.yaml") -> None:
    """ParamsError naming ``<section>.trainer.<key>`` for the first key the config class does not take, or that the
    code or the section owns."""
    fields = field_names(config_class(section))
    for key, value in settings.items():
        problem = trainer_key_problem(section, str(key), fields) or trainer_value_problem(section, str(key), value)
        if problem:
            raise ParamsError(f"{where}: {section}.trainer.{key}: {problem}")


def precision(work: str = "train") -> dict:
    """Code-owned: the CPU unless CUDA is present; bf16 mixed precision where ``model.compute_dtype`` resolves to it
    for training (a bf16 GPU; on the CPU: ``auto`` on a CPU with native bf16, or ``bfloat16``: accelerate's bf16
    autocast over fp32 master weights and optimizer state), else fp32. Never fp16. ``work``: ``train`` (sft, rs,
    the reward model) or ``policy`` (dpo, grpo: losses from log-prob differences against a reference)."""
    import torch

    from .models import compute_dtype, has_cuda

    return {"use_cpu": not has_cuda(), "bf16": compute_dtype(work) == torch.bfloat16, "fp16": False}


def dvclive(live_dir) -> tuple[Any, list]:
    """A training stage's DVCLive run and its trainer callback, set up in one place: curves only (no dvc.yaml of its
    own, no experiment, no report). ``(None, [])`` without ``live_dir`` or off the main process."""
    from .dist import is_main_process

    if live_dir is None or not is_main_process():
        return None, []
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    return live, [DVCLiveCallback(live=live)]


def build(section: str, settings: Mapping[str, Any] | None, *, defaults: Mapping[str, Any] | None = None,
          owned: Mapping[str, Any] | None = None):
    """``trl.<Config>(**(defaults | settings | owned))`` for ``section`` after :func:`check`. ``seed`` also becomes
    ``data_seed`` and the train batch the eval batch, unless the settings name them."""
    settings = dict(settings or {})
    check(section, settings)
    kwargs = {**(defaults or {}), **settings}
    if "seed" in kwargs:
        kwargs.setdefault("data_seed", kwargs["seed"])
    if "per_device_train_batch_size" in kwargs:
        kwargs.setdefault("per_device_eval_batch_size", kwargs["per_device_train_batch_size"])
    kwargs.update(owned or {})
    try:
        return config_class(section)(**kwargs)
    except (TypeError, ValueError) as e:  # TRL's / transformers' own checks of the values
        raise ParamsError(f"params.yaml: {section}.trainer: trl.{TRAINER_CONFIGS[section]} refused the settings: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def recorded_fields() -> dict:
    """What trl_fields.json records: the installed versions, TrainingArguments' fields, each config's own."""
    from importlib import metadata

    from transformers import TrainingArguments

    base = field_names(TrainingArguments)
    configs = {name: sorted(field_names(getattr(__import__("trl"), name)) - base)
               for name in sorted(set(TRAINER_CONFIGS.values()))}
    return {"versions": {pkg: metadata.version(pkg) for pkg in ("trl", "transformers")},
            "TrainingArguments": sorted(base), "configs": configs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = json.dumps(recorded_fields(), indent=1) + "\n"
    if argv == ["--write"]:
        TRL_FIELDS_FILE.write_text(text, encoding="utf-8")
        print(f"wrote {TRL_FIELDS_FILE}")
        return 0
    current = TRL_FIELDS_FILE.read_text(encoding="utf-8") if TRL_FIELDS_FILE.exists() else ""
    print("up to date" if current == text else f"stale: run python -m sciexplain.trainer_config --write")
    return 0 if current == text else 1


if __name__ == "__main__":
    sys.exit(main())
