"""The typed schema of params.yaml: every key, its type and its allowed values, checked before a stage does any work.

Each section of params.yaml is a pydantic model with strict types (``"4"`` is not the integer 4, ``"no"`` is not
false, ``true`` is not a number), unknown keys refused (``extra="forbid"``), enumerations as ``Literal`` and ranges
as bounds. A bad value is one line naming the file, the key path, what is allowed and what was given::

    params.yaml: teacher.temperature: expected a number >= 0, got 'hot'
    params.yaml: prepare.sources[0].min_scor: unknown key; allowed: type, path, min_score, domain, require_answer

The ``trainer`` mapping of ``sft``, ``rs``, ``reward_model``, ``dpo`` and ``grpo`` passes through to TRL's config
class (:mod:`sciexplain.trainer_config`): its names are checked against the class's fields as recorded in
trl_fields.json (no TRL import here), a setting the code owns is refused with the reason::

    params.yaml: sft.trainer.learnin_rate: unknown setting of trl.SFTConfig; did you mean learning_rate?

:func:`check_stage` checks the sections a stage of dvc.yaml declares under ``params:`` (a key that the stage does
not declare may be missing, so a trimmed params file still drives a single stage; a present key is always checked);
:func:`check_file` checks a whole file, every section required. :func:`sciexplain.cli.read_params` calls
:func:`check_stage` for the stage it is called from, so every stage stops on a bad value before it loads a model.

    python -m sciexplain.params_schema                         # check params.yaml (exit 1 with one line if bad)
    python -m sciexplain.params_schema other.yaml --stage teacher  # only what stage teacher declares
    python -m sciexplain.params_schema tweak.yaml --onto params.yaml  # a partial file merged onto params.yaml
"""
from __future__ import annotations

import functools
import os
import re
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Strict, Tag,
                      ValidationError, WrapValidator, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from .records import UserError, load_params

# Allowed values: this module owns them and the modules that act on them import them from here (this one stays
# light, pydantic only, so that every stage checks its params in a fraction of a second).
SPLITS = ("sft", "rm", "rs", "eval")                     # the prepared splits (sciexplain.splits assigns them)
PLAN_MODES = ("full", "short", "none")                  # the teacher prompt's chain of thought (sciexplain.prompts)
UNFINISHED_MODES = ("trim", "drop")                     # what the teacher filter does with an unfinished answer
TEACHER_BACKENDS = ("llamacpp", "local", "vllm", "openai", "batch-export", "batch-import")
ENGINE_BACKENDS = ("local", "vllm", "openai")           # sciexplain.generation's backends
UNSURE_MODES = ("drop", "keep")                         # an Unsure vote as a preference pair (sciexplain.preferences)
VLLM_MODES = ("colocate", "server")                     # TRL's vLLM modes for GRPO (sciexplain.grpo)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")   # TRL's DPO losses
SFT_DATA = ("teacher", "forum")                         # sft.data (or a .jsonl file)

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"              # a judge's name


class ParamsError(UserError):
    """A bad params file: one line ``<file>: <key path>: <problem>``."""


# --------------------------------------------------------------------------- leaf types

def _show(value: Any) -> str:
    """A given value as the user wrote it in YAML (true, null, 'text', 0.5), cut at 80 characters."""
    text = {True: "true", False: "false"}[value] if isinstance(value, bool) else "null" if value is None else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _described(desc: str):
    """Turn any error of the inner (strict) type into one ``expected <desc>, got <value>`` error."""

    def wrap(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("param", "expected {expected}, got {got}",
                                      {"expected": desc, "got": _show(value)}) from None

    return WrapValidator(wrap)


def _leaf(tp, desc: str, *constraints):
    return Annotated[tp, *constraints, _described(desc), Field(description=desc)]


def _bounds(ge=None, gt=None, le=None, lt=None) -> tuple[str, list]:
    lo = "[" if ge is not None else "(" if gt is not None else None
    hi = "]" if le is not None else ")" if lt is not None else None
    a, b = (ge if ge is not None else gt), (le if le is not None else lt)
    if lo and hi:
        text = f" in {lo}{a}, {b}{hi}"
    elif lo:
        text = f" {'>=' if ge is not None else '>'} {a}"
    elif hi:
        text = f" {'<=' if le is not None else '<'} {b}"
    else:
        text = ""
    return text, [Field(**{k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None})]


def Num(*, ge=None, gt=None, le=None, lt=None, null: bool = False):
    """A finite number (an integer is a number; ``true`` and ``"0.5"`` are not)."""
    text, cons = _bounds(ge, gt, le, lt)
    inner = Annotated[float, Strict(), AllowInfNan(False), *cons]
    return _leaf(Optional[inner] if null else inner, f"a number{text}" + (" or null" if null else ""))


def Int(*, ge=None, le=None, null: bool = False):
    """An integer (``4.0``, ``"4"`` and ``true`` are not)."""
    text, cons = _bounds(ge=ge, le=le)
    inner = Annotated[int, Strict(), *cons]
    return _leaf(Optional[inner] if null else inner, f"an integer{text}" + (" or null" if null else ""))


def Bool(*, null: bool = False):
    """``true`` or ``false`` (``"no"``, ``"yes"``, ``0`` and ``1`` are not)."""
    inner = Annotated[bool, Strict()]
    return _leaf(Optional[inner] if null else inner, "true or false" + (" or null" if null else ""))


def Str(*, null: bool = False, pattern: str | None = None, what: str = "a non-empty string"):
    inner = Annotated[str, Strict(), Field(min_length=1, pattern=pattern)]
    return _leaf(Optional[inner] if null else inner, what + (" or null" if null else ""))


def OneOf(*values, null: bool = False):
    inner = Literal[values]  # type: ignore[valid-type]
    return _leaf(Optional[inner] if null else inner, "one of " + ", ".join(values) + (" or null" if null else ""))


def _unique(value):
    if isinstance(value, list) and len(set(map(str, value))) != len(value):
        raise ValueError("duplicates")
    return value


def StrList(*, item=None, what: str, min_length: int = 0, null: bool = False):
    """A YAML list of strings (each a non-empty string, or one of ``item``), no duplicates."""
    elem = Literal[tuple(item)] if item else Annotated[str, Strict(), Field(min_length=1)]  # type: ignore[misc]
    inner = Annotated[list[elem], Strict(), Field(min_length=min_length), BeforeValidator(_unique)]
    return _leaf(Optional[inner] if null else inner, what + (" or null" if null else ""))


def StrMap(*, values=None, what: str):
    """A mapping of non-empty string keys to non-empty strings (or ``values``)."""
    key = Annotated[str, Strict(), Field(min_length=1)]
    val = values if values is not None else Annotated[str, Strict(), Field(min_length=1)]
    return _leaf(dict[key, val], what)


_path = Annotated[str, Strict(), Field(min_length=1)]
PathOrPaths = lambda null=False: _leaf(  # noqa: E731 - a file/folder, or a list of them
    Optional[Union[_path, Annotated[list[_path], Field(min_length=1)]]] if null
    else Union[_path, Annotated[list[_path], Field(min_length=1)]],
    "a path or a list of paths" + (" or null" if null else ""))

Seed = lambda: Int(ge=0)  # noqa: E731
Count = lambda: Int(ge=1)  # noqa: E731
Fraction = lambda: Num(ge=0, lt=1)  # noqa: E731  share held out: [0, 1)
Temperature = lambda: Num(ge=0)  # noqa: E731
TopP = lambda: Num(gt=0, le=1)  # noqa: E731
RepetitionPenalty = Num(ge=1.0)  # 1.0 = off
Quant4bit = _leaf(Union[Literal["auto"], Annotated[bool, Strict()]], "one of auto, true, false")


def _pair(value: str) -> str:
    """``x_vs_y``: two different model names (as stages/compare.py parse_pair reads them)."""
    parts = value.split("_vs_")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1] or any("/" in p or p.startswith(".") for p in parts):
        raise ValueError("not x_vs_y")
    return value


def PairList(*, min_length: int = 0):
    """A list of ``x_vs_y`` model pairs without duplicates."""
    inner = Annotated[list[Annotated[str, Strict(), AfterValidator(_pair)]], Strict(), Field(min_length=min_length),
                      BeforeValidator(_unique)]
    return _leaf(inner, f"a {'non-empty ' if min_length else ''}list of model pairs 'x_vs_y' without duplicates, "
                        "e.g. [base_vs_sft]")


# --------------------------------------------------------------------------- structure

class Section(BaseModel):
    """A mapping of known keys: an unknown key or a non-mapping is one error naming the allowed keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        allowed = ", ".join(cls.model_fields)
        if not isinstance(data, dict):
            raise PydanticCustomError("param", "expected a mapping with keys {allowed}, got {got}",
                                      {"allowed": allowed, "got": _show(data)})
        if cls.model_config.get("extra") != "allow":
            for key in data:
                if key not in cls.model_fields:
                    raise PydanticCustomError("param", "unknown key; allowed: {allowed}",
                                              {"key": str(key), "allowed": allowed})
        return data


def _at(key: str, message: str, **ctx):
    """A cross-field error reported at ``key`` of the model being checked."""
    return PydanticCustomError("param", message, {"key": key, **{k: _show(v) for k, v in ctx.items()}})


def _mapping_with(kind_key: str, allowed: tuple[str, ...], default: str | None = None):
    """Before a tagged union: the entry is a mapping whose ``kind_key`` is one of ``allowed``."""
    def check(value):
        if not isinstance(value, dict):
            raise PydanticCustomError("param", "expected a mapping with a {kind_key} ({allowed}), got {got}",
                                      {"kind_key": kind_key, "allowed": ", ".join(allowed), "got": _show(value)})
        kind = value.get(kind_key, default)
        if not isinstance(kind, str) or kind not in allowed:
            raise PydanticCustomError("param", "expected one of {allowed}, got {got}",
                                      {"key": kind_key, "allowed": ", ".join(allowed), "got": _show(kind)})
        return value
    return BeforeValidator(check)


def _tag_of(kind_key: str, default: str | None = None):
    def tag(value):
        kind = value.get(kind_key, default) if isinstance(value, dict) else getattr(value, kind_key, default)
        return f"<{kind}>"
    return tag


def _list_of(what: str):
    def check(value):
        if not isinstance(value, list) or not value:
            raise PydanticCustomError("param", "expected a non-empty list of {what}, got {got}",
                                      {"what": what, "got": _show(value)})
        return value
    return BeforeValidator(check)


# --------------------------------------------------------------------------- sections

class BaseModelParams(Section):
    source: Str(what="embedded, a hub id or a local folder")
    revision: Str(null=True, what="a revision (branch, tag or commit) string")
    gguf_file: Str(null=True, what="a .gguf file name")


class ModelParams(Section):
    quantize_4bit: Quant4bit
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class BankSource(Section):
    type: Literal["bank"]
    path: Str(what="a file path")


class _StackExchangeDump(Section):
    """A Stack Exchange dump's Posts.xml (a question source for prepare, or human pairs for validate)."""
    type: Literal["stackexchange"]
    path: Str(what="a file path (Posts.xml)")


class StackExchangeSource(_StackExchangeDump):
    min_score: Int(ge=0) = 1
    domain: Str(null=True) = None
    require_answer: Bool() = False


class QASource(Section):
    type: Literal["qa"]
    path: Str(what="a file path (.csv or .jsonl)")
    question_field: Str() = "question"
    answer_field: Str(null=True) = "answer"
    domain_field: Str(null=True) = None
    domain: Str(null=True) = None


PrepareSource = Annotated[
    Union[Annotated[BankSource, Tag("<bank>")], Annotated[StackExchangeSource, Tag("<stackexchange>")],
          Annotated[QASource, Tag("<qa>")]],
    Discriminator(_tag_of("type")), _mapping_with("type", ("bank", "stackexchange", "qa"))]


class Splits(Section):
    sft: Count()
    rm: Count()
    rs: Count()
    eval: Count()


class PrepareParams(Section):
    sources: Annotated[list[PrepareSource], Field(min_length=1), _list_of("{type, path, ...} sources")]
    eval_file: Str(null=True, what="a question file (.csv or .jsonl)")
    min_question_tokens: Int(ge=0)
    max_question_tokens: Count()
    max_answer_tokens: Count()
    seed: Seed()
    splits: Splits

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_question_tokens > self.max_question_tokens:
            raise _at("min_question_tokens", "expected at most max_question_tokens ({hi}), got {got}",
                      hi=self.max_question_tokens, got=self.min_question_tokens)
        return self


class EngineParams(Section):
    backend: OneOf(*ENGINE_BACKENDS)
    base_url: Str(null=True, what="a URL")
    api_key_env: Str(null=True, what="an environment variable name")
    max_concurrency: Count()
    max_retries: Int(ge=0)
    served_names: StrMap(what="a mapping of model name -> served name")
    weights: StrMap(values=Union[_path, Annotated[list[_path], Field(min_length=1)]],
                    what="a mapping of model name -> a path or a list of paths")


class VllmParams(Section):
    """``vllm.LLM(...)`` keyword arguments: these three are typed; other vLLM engine arguments pass through."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    gpu_memory_utilization: Num(gt=0, le=1)
    max_model_len: Int(ge=1, null=True)
    enforce_eager: Bool()

    @model_validator(mode="after")
    def _names(self):
        for key in self.model_extra or {}:
            if not isinstance(key, str) or not key.isidentifier():
                raise _at(str(key), "expected a vLLM engine argument name, got {got}", got=key)
        return self


class TeacherParams(Section):
    backend: OneOf(*TEACHER_BACKENDS)
    model: Str(null=True, what="an API model name")
    base_url: Str(null=True, what="a URL")
    api_key_env: Str(null=True, what="an environment variable name")
    max_concurrency: Count()
    max_retries: Int(ge=0)
    batch_file: Str(null=True, what="a Batch API file path")
    weights: PathOrPaths(null=True)
    gguf: Str(null=True, what="a .gguf file path or 'embedded'") = "embedded"
    splits: StrList(item=SPLITS, min_length=1, what="a non-empty list of splits (sft, rm, rs, eval) without duplicates")
    plan: OneOf(*PLAN_MODES)
    few_shot: Int(ge=0)
    max_new_tokens: Count()
    temperature: Temperature()
    top_p: TopP()
    seed: Seed()
    batch_size: Count()
    min_words: Int(ge=0)
    unfinished: OneOf(*UNFINISHED_MODES)
    repetition_penalty: RepetitionPenalty = 1.0

    @model_validator(mode="after")
    def _backend_needs(self):
        if self.backend in ("openai", "batch-export", "batch-import") and not self.model:
            raise _at("model", "the {backend} backend needs the API model name, got {got}",
                      backend=self.backend, got=self.model)
        if self.backend in ("batch-export", "batch-import") and not self.batch_file:
            raise _at("batch_file", "the {backend} backend needs a Batch API file, got {got}",
                      backend=self.backend, got=self.batch_file)
        if self.backend in ("batch-export", "batch-import") and self.repetition_penalty != 1.0:
            raise _at("repetition_penalty", "the {backend} backend cannot send it (not an OpenAI Batch API field): "
                      "expected 1.0, got {got}", backend=self.backend, got=self.repetition_penalty)
        return self


class GenerateParams(Section):
    max_new_tokens: Count()
    temperature: Temperature()
    top_p: TopP()
    seed: Seed()
    batch_size: Count()
    repetition_penalty: RepetitionPenalty = 1.0


class SftLora(Section):
    r: Count()
    alpha: Num(gt=0)
    dropout: Fraction()
    target_modules: _leaf(Union[Annotated[str, Strict(), Field(min_length=1)],
                                Annotated[list[Annotated[str, Strict(), Field(min_length=1)]], Field(min_length=1)]],
                          "a list of module names (or one name such as all-linear)")


def _check_sft_data(value):
    if value in SFT_DATA or value.endswith(".jsonl"):
        return value
    raise PydanticCustomError("param", "expected one of teacher, forum or a .jsonl file, got {got}", {"got": _show(value)})


# --------------------------------------------------------------------------- trainer: TRL config pass-through

# Each training section's ``trainer`` mapping goes straight into its TRL config class (``sft.trainer`` ->
# ``trl.SFTConfig(**...)``), so any TRL / transformers setting is a params edit. Its keys are checked against the
# config dataclass's fields: at stage start from the field lists recorded in trl_fields.json (importing TRL takes
# seconds; reading the installed versions takes milliseconds), and again where the config is built
# (sciexplain.trainer_config, against dataclasses.fields of the real class, before any model loads).
TRAINER_CONFIGS = {"sft": "SFTConfig", "rs": "SFTConfig", "reward_model": "RewardConfig", "dpo": "DPOConfig",
                   "grpo": "GRPOConfig"}
TRL_FIELDS_FILE = Path(__file__).with_name("trl_fields.json")

_PRECISION = "chosen by the code: bf16 where the CUDA GPU supports it, else fp32 (bf16 is ~400x slower on this CPU)"
# settings the code owns in every trainer: refused in a trainer mapping, with the reason
CODE_OWNED = {
    "output_dir": "the stage's --scratch folder (trainer scratch is never a DVC output)",
    "report_to": "the stage logs its curves to DVCLive itself (--live)",
    "use_cpu": "detected: the CPU unless a CUDA GPU is present",
    "bf16": _PRECISION, "fp16": _PRECISION,
    "model_init_kwargs": "built from model.quantize_4bit (dtype, 4-bit loading)",
    "push_to_hub": "the adapter is a DVC output, not a hub upload",
}
_BEST_EPOCH = ("owned by the best-dev-epoch selection (reward_model.val_fraction, early_stopping_patience, "
               "until_beats_constant)")
# settings a section owns: another key of the section, or what the code derives from it
SECTION_OWNED = {
    "reward_model": {**{k: _BEST_EPOCH for k in ("eval_strategy", "save_strategy", "save_only_model", "save_total_limit",
                                                 "load_best_model_at_end", "metric_for_best_model",
                                                 "greater_is_better")},
                     "center_rewards_coefficient": "set reward_model.center_rewards_coefficient"},
    "dpo": {"beta": "set dpo.beta", "loss_type": "set dpo.loss_type"},
    "grpo": {**{k: f"set grpo.{k}" for k in ("beta", "num_generations", "max_completion_length", "temperature", "top_p",
                                             "use_vllm", "vllm_mode", "vllm_server_base_url",
                                             "vllm_gpu_memory_utilization")},
             "per_device_train_batch_size": "derived: grpo.prompts_per_step x grpo.num_generations (completions per step)",
             "num_iterations": "fixed at 1 (one update per sampled batch: the guard checks the policy that sampled)"},
}


# transformers' length-grouped samplers measure a row by its input_ids: SFT rows have them; TRL 1.16's preference
# rows (prompt_ids / chosen_ids / rejected_ids) do not, and GRPOTrainer brings its own sampler
_NO_LENGTH_GROUPING = {
    "reward_model": "RewardTrainer's rows have no input_ids column to measure (chosen_ids / rejected_ids)",
    "dpo": "DPOTrainer's rows have no input_ids column to measure (prompt_ids / chosen_ids / rejected_ids)",
    "grpo": "GRPOTrainer samples with its own RepeatSampler (prompts, not lengths)",
}


def trainer_value_problem(section: str, key: str, value) -> str | None:
    """Why a value TRL would take is refused here (it would fail or be ignored mid-training); None: accepted."""
    if key == "train_sampling_strategy" and value in ("group_by_length", "batch_rebalance") \
            and section in _NO_LENGTH_GROUPING:
        return (f"length-grouped sampling does not work for this trainer: {_NO_LENGTH_GROUPING[section]}; "
                f"use random or sequential, got {_show(value)}")
    return None


@functools.lru_cache(maxsize=1)
def _recorded_fields() -> dict | None:
    """``{config class name: frozenset of field names}`` from trl_fields.json when it was recorded for the installed
    trl and transformers versions; None otherwise (then the keys are checked only where the config is built)."""
    import json
    from importlib import metadata

    try:
        doc = json.loads(TRL_FIELDS_FILE.read_text(encoding="utf-8"))
        if doc["versions"] != {pkg: metadata.version(pkg) for pkg in doc["versions"]}:
            return None
    except (OSError, ValueError, KeyError, metadata.PackageNotFoundError):
        return None
    base = set(doc["TrainingArguments"])
    return {name: frozenset(base | set(extra)) for name, extra in doc["configs"].items()}


def trainer_key_problem(section: str, key: str, fields) -> str | None:
    """Why ``<section>.trainer.<key>`` is refused (unknown to the TRL config, or owned elsewhere); None: accepted."""
    cls = TRAINER_CONFIGS[section]
    owned = {**CODE_OWNED, **SECTION_OWNED.get(section, {})}
    if key in owned:
        reason = owned[key]
        return (f"not a trainer setting here: {reason}" if reason.startswith("set ")
                else f"set by the code, not by params: {reason}")
    if fields is not None and key not in fields:
        import difflib

        near = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.75)
        hint = f"; did you mean {near[0]}?" if near else ""
        return f"unknown setting of trl.{cls}{hint}"
    return None


class TrainerSettings(Section):
    """A TRL config's keyword arguments: the settings every stage reads typed here, any other field of the config
    class passed through (TRL checks its value when the config is built)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    _section: typing.ClassVar[str] = ""
    learning_rate: Num(gt=0) = None
    num_train_epochs: Num(gt=0) = None
    max_steps: Int(ge=-1) = None
    per_device_train_batch_size: Count() = None
    per_device_eval_batch_size: Count() = None
    gradient_accumulation_steps: Count() = None
    max_length: Count() = None
    seed: Seed()  # also seeds the stage's own splits

    def config_kwargs(self) -> dict:
        """The settings as written in params.yaml, for the TRL config (TRL's own defaults stand for the rest)."""
        return self.model_dump(exclude_unset=True)

    @model_validator(mode="before")
    @classmethod
    def _trl_fields(cls, data):
        if isinstance(data, dict):
            fields = (_recorded_fields() or {}).get(TRAINER_CONFIGS[cls._section])
            for key, value in data.items():
                problem = trainer_key_problem(cls._section, str(key), fields) or \
                    trainer_value_problem(cls._section, str(key), value)
                if problem:
                    raise PydanticCustomError("param", problem, {"key": str(key)})
        return data


def _trainer(section: str, **required):
    """The ``trainer`` model of ``section`` (``required``: typed keys that must be set there)."""
    return type(f"{section.title().replace('_', '')}Trainer", (TrainerSettings,),
                {"_section": section, "__annotations__": dict(required), "__module__": __name__})


class TrainingParams(Section):
    val_fraction: Fraction()


class SftParams(TrainingParams):
    data: Annotated[Str(what="teacher, forum or a .jsonl file"), AfterValidator(_check_sft_data)]
    lora: SftLora
    trainer: _trainer("sft")


class RsParams(TrainingParams):
    trainer: _trainer("rs")


class TrainParams(Section):
    launcher: Str(what="a launcher command (python, or accelerate launch ...)")


_SPLITS = ("sft", "rm", "rs", "eval")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class AnswerModel(Section):
    """One model of ``answer.models``: its LoRA adapter folder (``models/<name>``, the folder dvc.yaml declares for
    ``answer@<name>``; null: the base model) and the splits it answers."""
    adapter: Str(null=True, pattern=r"^models/[^/]+$", what="models/<name> (a LoRA adapter folder)")
    splits: StrList(item=_SPLITS, what=f"a non-empty list of splits ({', '.join(_SPLITS)}) without duplicates",
                    min_length=1)


def _adapters_named(models):
    if isinstance(models, dict):
        for name, spec in models.items():
            if not isinstance(name, str) or not re.match(_NAME, name) or "_vs_" in name:
                raise PydanticCustomError("param", "a model name is letters, digits, _ . - (no '_vs_'), got {got}",
                                          {"key": str(name), "got": _show(name)})
            adapter = spec.get("adapter") if isinstance(spec, dict) else None
            if isinstance(adapter, str) and adapter != f"models/{name}":
                raise PydanticCustomError("param", "expected models/{name} (the folder dvc.yaml declares) or null, got {got}",
                                          {"key": f"{name}.adapter", "name": name, "got": _show(adapter)})
    return models


class AnswerParams(Section):
    models: Annotated[dict[str, AnswerModel], Field(min_length=1), BeforeValidator(_adapters_named)]


def _pair_map(pairs):
    """``{x_vs_y: [x, y]}``: each name a pair of two different models, its list the same two, in its order."""
    if not isinstance(pairs, dict) or not pairs:
        raise PydanticCustomError("param", "expected a non-empty mapping like {example}, got {got}",
                                  {"example": "{sft_vs_base: [sft, base]}", "got": _show(pairs)})
    for name, models in pairs.items():
        try:
            _pair(str(name))
        except ValueError:
            raise PydanticCustomError("param", "a pair is named x_vs_y with two different model names, got {got}",
                                      {"key": str(name), "got": _show(name)}) from None
        if models != str(name).split("_vs_"):
            raise PydanticCustomError("param", "expected the pair's two models {want}, got {got}",
                                      {"key": str(name), "want": _show(str(name).split("_vs_")), "got": _show(models)})
    return pairs


class CompareParams(Section):
    pairs: Annotated[dict[str, list[str]], BeforeValidator(_pair_map),
                     Field(description="a mapping {x_vs_y: [x, y]} of the study's comparisons")]
    seed: Seed()


_JUDGE_TYPES = ("rubric", "llm")


RUBRIC_WEIGHTS = {"structure": 0.35, "coherence": 0.2, "clarity": 0.2, "register": 0.25}  # the rubric quality mean
_RUBRIC_WEIGHTS = tuple(RUBRIC_WEIGHTS)


class RubricParams(Section):
    """RubricJudge's settings, all optional: their defaults and checks live here only (sciexplain.rubric builds its
    judge from this model, so a stage can check them without importing the rubric)."""

    min_words: Count() = 25
    target_lo: Count() = 60
    target_hi: Count() = 250
    max_words: Count() = 600
    long_floor: Num(ge=0, le=1) = 0.6
    weights: _leaf(Optional[dict[Literal[_RUBRIC_WEIGHTS], Annotated[float, Strict(), AllowInfNan(False), Field(ge=0)]]],
                   "a mapping of " + ", ".join(_RUBRIC_WEIGHTS) + " -> a number >= 0, or null") = None
    rep_gamma: Num(ge=0) = 1.0
    len_gamma: Num(ge=0) = 0.5
    t_unsure: Num(ge=0, le=1) = 0.02
    t_slight: Num(ge=0, le=1) = 0.05
    t_better: Num(ge=0, le=1) = 0.12
    unfinished_factor: Num(ge=0, le=1) = 0.5

    @model_validator(mode="after")
    def _order(self):
        if not (self.min_words <= self.target_lo <= self.target_hi < self.max_words):
            raise _at("target_lo", "need 0 < min_words <= target_lo <= target_hi < max_words, got {got}",
                      got=(self.min_words, self.target_lo, self.target_hi, self.max_words))
        if not (self.t_unsure <= self.t_slight <= self.t_better):
            raise _at("t_slight", "need 0 <= t_unsure <= t_slight <= t_better <= 1, got {got}",
                      got=(self.t_unsure, self.t_slight, self.t_better))
        if self.weights is not None and sum(self.weights.values()) <= 0:
            raise _at("weights", "need a positive sum, got {got}", got=self.weights)
        return self


class RubricJudgeSpec(Section):
    name: Str(pattern=_NAME_RE, what="a name of letters, digits, '_', '.', '-'")
    type: Literal["rubric"]
    params: Optional[RubricParams] = None


class _LLMJudgeCommon(Section):
    name: Str(pattern=_NAME_RE, what="a name of letters, digits, '_', '.', '-'")
    type: Literal["llm"]
    backend: OneOf(*ENGINE_BACKENDS) = "local"
    prompt: Str(null=True, what="a prompt template file") = None
    max_new_tokens: Count() = 24
    temperature: Temperature() = 0.0
    top_p: TopP() = 1.0
    seed: Seed() = 0


class LocalLLMJudgeSpec(_LLMJudgeCommon):
    base: Str(null=True, what="a model folder") = None
    adapter: Str(null=True, what="an adapter folder") = None
    batch_size: Count() = 16
    quantize_4bit: Quant4bit = "auto"


class VllmLLMJudgeSpec(_LLMJudgeCommon):
    base: Str(null=True, what="a model folder") = None
    adapter: Str(null=True, what="an adapter folder") = None
    quantize_4bit: Quant4bit = "auto"
    vllm: _leaf(dict[Annotated[str, Strict()], Any], "a mapping of vLLM engine arguments") = {}


class OpenAILLMJudgeSpec(_LLMJudgeCommon):
    model: Str(what="an API model name")  # required: an openai judge needs the API model name
    base_url: Str(null=True, what="a URL") = None
    api_key_env: Str(null=True, what="an environment variable name") = "OPENAI_API_KEY"
    max_concurrency: Count() = 8
    max_retries: Int(ge=0) = 6
    timeout: Num(gt=0) = 60
    max_tokens_field: Str() = "max_tokens"
    weights: PathOrPaths(null=True) = None


def _judge_tag(value):
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    return "<rubric>" if kind == "rubric" else f"<llm-{value.get('backend', 'local')}>"


def _judge_check(value):
    value = _mapping_with("type", _JUDGE_TYPES).func(value)
    if value["type"] == "llm":
        _mapping_with("backend", ENGINE_BACKENDS, default="local").func(value)
    return value


JudgeSpec = Annotated[
    Union[Annotated[RubricJudgeSpec, Tag("<rubric>")], Annotated[LocalLLMJudgeSpec, Tag("<llm-local>")],
          Annotated[VllmLLMJudgeSpec, Tag("<llm-vllm>")], Annotated[OpenAILLMJudgeSpec, Tag("<llm-openai>")]],
    Discriminator(_judge_tag), BeforeValidator(_judge_check)]


def _unique_names(panel):
    seen = set()
    for i, spec in enumerate(panel or []):
        if spec.name in seen:
            raise PydanticCustomError("param", "duplicate judge name {got}", {"key": f"[{i}].name", "got": _show(spec.name)})
        seen.add(spec.name)
    return panel


def _panel_list(value):
    if value is not None and not isinstance(value, list):
        raise PydanticCustomError("param", "expected {what}, got {got}",
                                  {"what": "a list of judge specs {name, type, ...} (or [] or null)", "got": _show(value)})
    return value


class JudgeParams(Section):
    panel: Annotated[Optional[list[JudgeSpec]],
                     BeforeValidator(_panel_list),
                     WrapValidator(lambda v, h: _unique_names(h(v)))]


class PairsSource(Section):
    type: Literal["pairs"]
    path: Str(what="a file path (.jsonl or .csv)")


class HumanStackExchangeSource(_StackExchangeDump):
    min_score_gap: Count() = 2
    max_pairs_per_question: Count() = 3
    margin_full_gap: Count() = 15
    max_answer_chars: Int(ge=1, null=True) = None
    site: Str(null=True, what="a site name") = None


HumanSource = Annotated[
    Union[Annotated[PairsSource, Tag("<pairs>")], Annotated[HumanStackExchangeSource, Tag("<stackexchange>")]],
    Discriminator(_tag_of("type")), _mapping_with("type", ("pairs", "stackexchange"))]


class ValidateParams(Section):
    sources: Annotated[list[HumanSource], Field(min_length=1), _list_of("{type, path, ...} sources")]
    min_score_gap: Count()
    max_pairs_per_question: Count()
    margin_full_gap: Count()
    max_answer_chars: Int(ge=1, null=True)
    test_fraction: Num(gt=0, lt=1)
    seed: Seed()
    max_pairs: Int(ge=1, null=True)
    bootstrap: Count()


class SampleParams(GenerateParams):
    n: Count()


class ScoreParams(Section):
    batch_size: Count()


class SelectParams(Section):
    threshold: Num(null=True)
    quantile: Num(ge=0, le=1, null=True)
    min_gap: Num(ge=0)
    require_finished: Bool()

    @model_validator(mode="after")
    def _one_cut(self):
        if self.threshold is not None and self.quantile is not None:
            raise _at("quantile", "set select.threshold or select.quantile (or neither), not both; got {got}",
                      got=self.quantile)
        return self


class EvaluateParams(Section):
    models: StrList(min_length=1, what="a non-empty list of model names without duplicates")
    max_questions: Int(ge=1, null=True)
    bootstrap_resamples: Count()
    examples: Int(ge=0)


class RewardLora(Section):
    r: Count()
    alpha: Num(gt=0)
    dropout: Fraction()
    layers: Int(ge=1, null=True)


class RewardModelParams(Section):
    lora: RewardLora
    trainer: _trainer("reward_model", max_length=Count())  # max_length: also the stage's own truncation
    early_stopping_patience: Int(ge=1, null=True)
    until_beats_constant: Bool()
    center_rewards_coefficient: Num(ge=0, null=True)
    unsure: OneOf(*UNSURE_MODES)
    val_fraction: Fraction()
    sources: PairList()
    judge_labels: Bool()
    rm_models: StrList(what="a list of model names without duplicates")
    rubric: Optional[RubricParams]
    max_train_pairs: Int(ge=1, null=True)
    score_batch_size: Count()
    bootstrap: Count()
    allow_unvalidated: Bool()


def _loss_type_check(value):
    types_ = [value] if isinstance(value, str) else value
    if not isinstance(types_, list) or not types_ or any(t not in LOSS_TYPES for t in types_):
        raise PydanticCustomError("param", "expected one of {allowed} (or a non-empty list of them), got {got}",
                                  {"allowed": ", ".join(LOSS_TYPES), "got": _show(value)})
    return value


class DpoParams(Section):
    beta: Num(gt=0)
    loss_type: Annotated[Union[str, list[str]], BeforeValidator(_loss_type_check)]
    trainer: _trainer("dpo")
    val_fraction: Fraction()
    extra_pairs: Str(null=True, what="a JSONL file of {question, chosen, rejected} pairs")


class GrpoGuard(Section):
    max_kl: Num(gt=0, null=True)
    min_distinct3: Num(ge=0, le=1, null=True)
    max_code_fence_share: Num(ge=0, le=1, null=True)
    max_repeated_line_share: Num(ge=0, le=1, null=True)
    restore_last_good: Bool()


class GrpoParams(Section):
    enabled: Bool()
    beta: Num(ge=0)
    num_generations: Int(ge=2)
    prompts_per_step: Count()
    max_completion_length: Count()
    temperature: Num(gt=0)
    top_p: TopP()
    trainer: _trainer("grpo")
    score_batch_size: Count()
    guard: GrpoGuard
    use_vllm: Bool()
    vllm_mode: OneOf(*VLLM_MODES)
    vllm_server_base_url: Str(null=True, what="a URL")
    vllm_gpu_memory_utilization: Num(gt=0, le=1)


SECTIONS: dict[str, type[Section]] = {
    "base_model": BaseModelParams, "model": ModelParams, "prepare": PrepareParams, "engine": EngineParams,
    "vllm": VllmParams, "teacher": TeacherParams, "answer": AnswerParams, "generate": GenerateParams, "sft": SftParams,
    "train": TrainParams, "compare": CompareParams, "judge": JudgeParams, "validate": ValidateParams,
    "sample": SampleParams, "score": ScoreParams, "select": SelectParams, "rs": RsParams,
    "evaluate": EvaluateParams, "reward_model": RewardModelParams, "dpo": DpoParams, "grpo": GrpoParams,
}

RENAMED = {"ppo": "renamed to grpo (the stage trains GRPO, standing in for the study's PPO): rename the section"}

_TAGGED = {"<bank>": BankSource, "<qa>": QASource, "<pairs>": PairsSource, "<rubric>": RubricJudgeSpec,
           "<llm-local>": LocalLLMJudgeSpec, "<llm-vllm>": VllmLLMJudgeSpec, "<llm-openai>": OpenAILLMJudgeSpec}


# --------------------------------------------------------------------------- errors -> one line

def _inner_model(tp):
    """The one Section inside an annotation (through Annotated/Optional/list), else None."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    found = {m for a in typing.get_args(tp) if (m := _inner_model(a)) is not None}
    return found.pop() if len(found) == 1 else None


def _walk(section: str, loc: tuple, data) -> tuple[str, type | None, Any, bool]:
    """(dotted path, model holding the last key, value at the path, whether the value exists) of a pydantic loc."""
    path, model, node, exists = section, SECTIONS.get(section), data, True
    holder = model
    for part in loc:
        if isinstance(part, str) and part.startswith("<") and part.endswith(">"):
            model = _TAGGED.get(part) or {"<stackexchange>": StackExchangeSource if section == "prepare"
                                          else HumanStackExchangeSource}.get(part, model)
            continue
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
            continue
        path += f".{part}"
        holder = model
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            node, exists = None, False
        field = model.model_fields.get(part) if model is not None else None
        model = _inner_model(field.annotation) if field is not None else None
    return path, holder, node, exists


def _message(section: str, err: dict, data) -> tuple[str, str]:
    """(key path, problem) of one pydantic error."""
    loc, ctx = tuple(err["loc"]), err.get("ctx") or {}
    if err["type"] == "param" and "key" in ctx:
        key = ctx["key"]
        loc = loc + tuple(int(i) if i else name for i, name in re.findall(r"\[(\d+)\]|\.?([^.\[\]]+)", key))
    path, holder, value, exists = _walk(section, loc, data)
    if err["type"] == "missing":
        field = holder.model_fields.get(str(loc[-1])) if holder is not None and loc else None
        need = f"; expected {field.description}" if field is not None and field.description else ""
        if holder is not None and _inner_model(field.annotation if field else None) is not None:
            need = f"; expected a mapping with keys {', '.join(_inner_model(field.annotation).model_fields)}"
        return path, f"missing{need}"
    if err["type"] == "param":
        return path, err["msg"]
    if err["type"] == "extra_forbidden":  # normally caught by Section._known_keys first
        allowed = ", ".join(holder.model_fields) if holder is not None else "?"
        return path, f"unknown key; allowed: {allowed}"
    if err["type"] == "literal_error":
        return path, f"expected {ctx.get('expected', '?')}, got {_show(err.get('input'))}"
    return path, f"{err['msg']}, got {_show(err.get('input'))}"


def _covered(path: str, declared: list[str] | None) -> bool:
    """Whether a missing key at ``path`` matters to a stage that declares ``declared`` (None: every key)."""
    if declared is None:
        return True
    for d in declared:
        if path == d or d.startswith(path + ".") or path.startswith(d + ".") or path.startswith(d + "["):
            return True
    return False


def problems(params: Any, sections: list[str] | None = None, declared: list[str] | None = None) -> list[tuple[str, str]]:
    """Every ``(key path, problem)`` of ``params`` in ``sections`` (default: all, plus unknown top-level keys);
    a missing key counts only where ``declared`` (dotted keys, default all) covers it."""
    if not isinstance(params, dict):
        return [("<file>", f"expected a mapping of sections ({', '.join(SECTIONS)}), got {_show(params)}")]
    out = []
    if sections is None:
        sections = list(SECTIONS)
        out += [(str(k), RENAMED[k] if k in RENAMED else f"unknown section; allowed: {', '.join(SECTIONS)}")
                for k in params if k not in SECTIONS]
    for section in sections:
        if section not in params:
            if _covered(section, declared):
                out.append((section, f"missing; expected a mapping with keys {', '.join(SECTIONS[section].model_fields)}"))
            continue
        try:
            SECTIONS[section].model_validate(params[section])
        except ValidationError as e:
            for err in e.errors():
                path, problem = _message(section, err, params[section])
                if err["type"] == "missing" and not _covered(path, declared):
                    continue
                out.append((path, problem))
    return out


def _raise(where: str, found: list[tuple[str, str]]) -> None:
    if found:
        key, problem = found[0]
        more = f" (and {len(found) - 1} more: {', '.join(k for k, _ in found[1:4])}{', ...' if len(found) > 4 else ''})" \
            if len(found) > 1 else ""
        raise ParamsError(f"{where}: {key}: {problem}{more}")


def check_section(section: str, value: Any, where: str = "params.yaml") -> None:
    """Check one section's value (e.g. a judge panel built in code); ParamsError naming the first bad key."""
    _raise(where, problems({section: value}, [section]))


def check_file(params: dict, where: str = "params.yaml") -> dict:
    """Check every section of a whole params file (all keys required); ParamsError naming the first bad key."""
    _raise(where, problems(params))
    return params


# --------------------------------------------------------------------------- dvc.yaml: what each stage declares

def _dvc_yaml(params_path: str | os.PathLike | None) -> Path | None:
    here = Path(params_path).resolve().parent / "dvc.yaml" if params_path else None
    for cand in (here, Path(__file__).resolve().parents[1] / "dvc.yaml"):
        if cand is not None and cand.is_file():
            return cand
    return None


@functools.lru_cache(maxsize=8)
def _stages(dvc_path: str) -> dict[str, dict]:
    """``{stage name: {"cmd": str, "params": [dotted keys] | None (= every param)}}`` of a dvc.yaml
    (foreach/matrix stages under their base name: their expansions ``name@key`` share the declaration)."""
    import yaml

    with open(dvc_path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    out = {}
    for name, spec in (doc.get("stages") or {}).items():
        body = spec.get("do", spec) if isinstance(spec, dict) and "foreach" in spec else spec
        if not isinstance(body, dict):
            continue
        keys: list[str] | None = []
        for entry in body.get("params") or []:
            if isinstance(entry, str):
                keys.append(entry)
            elif isinstance(entry, dict):
                for file, listed in entry.items():
                    if Path(str(file)).name != "params.yaml":
                        continue
                    if not listed:
                        keys = None
                        break
                    keys += [str(k) for k in listed] if keys is not None else []
            if keys is None:
                break
        if keys is not None:  # an interpolated key (${item.x}) declares its section
            keys = [k.split("${", 1)[0].rstrip(".") or k for k in keys]
        cmd = body.get("cmd", "")
        out[str(name)] = {"cmd": " ".join(cmd) if isinstance(cmd, list) else str(cmd), "params": keys}
    return out


def declared_keys(stage: str, dvc_path: str | os.PathLike | None = None) -> list[str] | None:
    """The params keys ``stage`` (``teacher``, ``answer_base``, ``answer@base``) declares; None: every key."""
    dvc_path = dvc_path or _dvc_yaml(None)
    stages = _stages(str(dvc_path))
    base = stage.split("@", 1)[0]
    if stage not in stages and base not in stages:
        raise KeyError(f"no stage {stage!r} in {dvc_path}")
    return stages.get(stage, stages.get(base))["params"]


def check_stage(params: dict, stage: str | list[str], where: str = "params.yaml",
                dvc_path: str | os.PathLike | None = None) -> dict:
    """Check the sections that ``stage`` (one name or several) declares in dvc.yaml: every present key in those
    sections, and that each declared key is there. ParamsError naming the first bad key."""
    names = [stage] if isinstance(stage, str) else list(stage)
    declared: list[str] | None = []
    for name in names:
        keys = declared_keys(name, dvc_path)
        declared = None if keys is None or declared is None else declared + keys
    if declared is None:
        return check_file(params, where)
    sections = list(dict.fromkeys(k.split(".", 1)[0] for k in declared))
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ParamsError(f"{where}: {unknown[0]}: not a section of the params schema (sciexplain/params_schema.py)")
    if not isinstance(params, dict):
        _raise(where, problems(params))
    _raise(where, problems(params, sections, declared))
    return params


class Params:
    """A params file, checked: each section is a frozen typed model with its defaults applied
    (``p.teacher.top_p``; a key left out of params.yaml reads as its schema default). :func:`load` checks the
    sections a stage declares before it does any work; any other section is checked when first read."""

    __slots__ = ("_raw", "_where", "_sections")

    def __init__(self, raw: dict, where: str = "params.yaml"):
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_where", where)
        object.__setattr__(self, "_sections", {})

    def __getattr__(self, name: str):
        sections = object.__getattribute__(self, "_sections")
        if name in sections:
            return sections[name]
        if name not in SECTIONS:
            raise AttributeError(f"params have no section {name!r}; sections: {', '.join(SECTIONS)}")
        raw, where = object.__getattribute__(self, "_raw"), object.__getattribute__(self, "_where")
        _raise(where, problems(raw, [name]))
        sections[name] = SECTIONS[name].model_validate(raw[name])
        return sections[name]

    def __setattr__(self, name, value):
        raise TypeError("params are read-only")

    def as_dict(self, *sections: str) -> dict:
        """``{section: its values as plain data}`` (defaults applied), e.g. for a report."""
        return {s: getattr(self, s).model_dump() for s in sections if s in self}

    def __contains__(self, name: str) -> bool:
        return name in object.__getattribute__(self, "_raw")


def load(path: str | os.PathLike = "params.yaml", stage: str | list[str] | None = None) -> Params:
    """The params file at ``path``, checked, as :class:`Params`. ``stage``: the dvc.yaml stage name(s) the caller
    is (``teacher``, ``answer@base``, ``rs``): the sections they declare are checked now, every declared key must be
    there unless it has a default; None (a script that is no stage): the whole file. A bad value raises ParamsError
    (one line: ``params.yaml: teacher.temperature: expected a number >= 0, got 'hot'``)."""

    raw, where = load_params(path), str(path)
    if stage is None:
        check_file(raw, where)
    else:
        try:
            check_stage(raw, stage, where, _dvc_yaml(path))
        except KeyError as e:
            raise ParamsError(f"{where}: {e.args[0]}") from None
    return Params(raw, where)


# --------------------------------------------------------------------------- the command line

def merge(base: dict, overlay: dict) -> dict:
    """``base`` updated by ``overlay``: mappings merge key by key, anything else (lists, scalars) replaces."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sciexplain.params_schema",
                                 description="Check a params file against the schema: 'ok', or one line naming the "
                                             "first bad key (exit 1).")
    ap.add_argument("params", nargs="?", default="params.yaml", help="params file (default params.yaml)")
    ap.add_argument("--stage", action="append", help="check only what this dvc.yaml stage declares (repeatable)")
    ap.add_argument("--onto", metavar="BASE", help="PARAMS is a partial file (an overlay): merge it onto BASE first")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        where = args.params
        if args.onto:
            if not isinstance(params, dict):
                raise ParamsError(f"{where}: an overlay must be a mapping of sections")
            params = merge(load_params(args.onto), params)
            where = f"{args.onto} + {args.params}"
        if args.stage:
            try:
                check_stage(params, args.stage, where, _dvc_yaml(args.onto or args.params))
            except KeyError as e:
                raise ParamsError(e.args[0]) from None
        else:
            check_file(params, where)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"{where}: ok" + (f" (stage {', '.join(args.stage)})" if args.stage else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
