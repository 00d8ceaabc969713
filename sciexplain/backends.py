"""The one place a generation backend is built, for every stage that writes text (teacher, answer_*,
sample, LLM judges).

Three backends, one params shape:

* ``local``  -- transformers (:class:`~sciexplain.local_backend.LocalBackend`): the base model folder + a
  LoRA adapter, batched; CPU or GPU.
* ``vllm``   -- vLLM's offline engine (:class:`~sciexplain.vllm_backend.VLLMBackend`): the same folders,
  the adapter through ``LoRARequest``, ``n`` samples per request; engine settings from params ``vllm:``.
* ``openai`` -- any OpenAI-compatible server (:class:`~sciexplain.openai_backend.OpenAIBackend`): OpenAI,
  ``vllm serve``, llama.cpp's server, Ollama. A model is addressed by its served name; ``weights`` names
  the local folder(s) or file the server was started from, and its hash joins the cache key.

The answer and sample stages read the ``engine`` section (:func:`engine_backend`); the teacher reads
``teacher.*``; an LLM judge its panel entry (:func:`judge_backend`). All three end in :func:`make_backend`.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

from .generation import BACKENDS, Backend, fingerprint
from .records import DataError

__all__ = ["BACKENDS", "make_backend", "engine_backend", "judge_backend", "served_fingerprint"]


def served_fingerprint(weights) -> str | None:
    """The fingerprint of what a server serves: ``weights`` is a path, a list of paths, or None (no fingerprint)."""
    if weights in (None, "", []):
        return None
    if isinstance(weights, (str, os.PathLike)):
        weights = [weights]
    return fingerprint(*weights)


def make_backend(kind: str, *, base_dir=None, adapter=None, quantize_4bit="auto", batch_size: int = 16,
                 model: str | None = None, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 max_concurrency: int = 8, max_retries: int = 6, timeout: float = 60,
                 max_tokens_field: str = "max_tokens", weights=None, vllm: Mapping | None = None,
                 gguf=None, where: str = "backend") -> Backend:
    """A backend of ``kind`` (``local`` | ``vllm`` | ``openai`` | ``llamacpp``). ``where`` names the param in errors."""
    if kind == "llamacpp":
        from .llamacpp_backend import LlamaCppBackend

        if adapter:
            raise DataError("params.yaml", None, where, "the llamacpp backend serves no LoRA adapter: use local or vllm")
        from .engine_check import require

        require(gguf or "embedded")  # load + decode in a child first: a broken build is one line, not a segfault here
        return LlamaCppBackend(gguf or "embedded")
    if kind == "local":
        from .local_backend import LocalBackend

        return LocalBackend(base_dir, adapter=adapter, quantize_4bit=quantize_4bit, batch_size=batch_size)
    if kind == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(base_dir, adapter=adapter, engine=dict(vllm or {}))  # bf16 on the GPU, see its doc
    if kind == "openai":
        from .openai_backend import OpenAIBackend

        if not model:
            raise DataError("params.yaml", None, where.replace("backend", "model"),
                            "the openai backend needs the model's served name")
        return OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, max_concurrency=max_concurrency,
                             max_retries=max_retries, timeout=timeout, max_tokens_field=max_tokens_field,
                             fingerprint=served_fingerprint(weights))
    raise DataError("params.yaml", None, where, f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


def engine_backend(params, model_name: str, base_dir, adapter=None, batch_size: int = 16) -> Backend:
    """The backend an answer/sample stage uses for ``model_name`` (base, sft, rs, dpo, ...), from params
    ``engine`` (+ ``vllm``, ``model.quantize_4bit``).

    With ``engine.backend: openai`` the model is asked for by its served name (``engine.served_names``,
    default the model name) and fingerprinted by ``engine.weights[model_name]`` (default: the stage's own
    base folder + adapter folder, i.e. what ``vllm serve models/base --enable-lora --lora-modules
    sft=models/sft`` serves).
    """
    engine = params.engine
    served, weights = engine.served_names or {}, engine.weights or {}
    w: Sequence | str | None = weights.get(model_name) or [p for p in (base_dir, adapter) if p]
    return make_backend(
        engine.backend, base_dir=base_dir, adapter=adapter, quantize_4bit=params.model.quantize_4bit,
        batch_size=batch_size, model=served.get(model_name, model_name), base_url=engine.base_url,
        api_key_env=engine.api_key_env, max_concurrency=engine.max_concurrency, max_retries=engine.max_retries,
        weights=w if engine.backend == "openai" else None,
        vllm=params.vllm.model_dump() if engine.backend == "vllm" else None, where="engine.backend")


def judge_backend(spec: Mapping, base_dir: str | os.PathLike = "models/base") -> Backend:
    """The backend of an ``llm`` judge spec (as :func:`sciexplain.judges.validate_panel` returns it)."""
    backend = spec["backend"]  # the spec's own keys, every default filled in by the schema (validate_panel)
    kwargs = {k: spec[k] for k in ("adapter", "quantize_4bit", "batch_size", "model", "base_url", "api_key_env",
                                   "max_concurrency", "max_retries", "timeout", "max_tokens_field", "weights", "vllm")
              if k in spec}
    return make_backend(backend, base_dir=spec.get("base") or base_dir, **kwargs,
                        where=f"judge.panel[{spec['name']}].backend")
