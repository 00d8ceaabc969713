"""Build a generation backend from params: ``local`` (transformers) or ``openai`` (any OpenAI-compatible server)."""
from __future__ import annotations

from .generation import Backend
from .io import DataError


def make_backend(kind: str, *, base_dir=None, adapter=None, quantize_4bit="auto", batch_size: int = 8,
                 model: str | None = None, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 max_concurrency: int = 8, max_retries: int = 6) -> Backend:
    """``local``: the base model (+ adapter) with transformers; ``openai``: any OpenAI-compatible server."""
    if kind == "local":
        from .local_backend import LocalBackend

        return LocalBackend(base_dir, adapter=adapter, quantize_4bit=quantize_4bit, batch_size=batch_size)
    if kind == "openai":
        from .openai_backend import OpenAIBackend

        if not model:
            raise DataError("params.yaml", None, "model", "the openai backend needs a model name")
        return OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, max_concurrency=max_concurrency,
                             max_retries=max_retries)
    raise DataError("params.yaml", None, "backend", f"unknown backend {kind!r} (local, openai)")
