"""One interface for every stage that writes answers.

A *backend* turns chat requests into texts. Backends (built by :func:`sciexplain.backends.make_backend`):
``local`` (a transformers causal LM, :mod:`sciexplain.local_backend`), ``vllm`` (vLLM's offline engine,
:mod:`sciexplain.vllm_backend`) and ``openai`` (any OpenAI-compatible server, :mod:`sciexplain.openai_backend`).
:func:`sciexplain.cache.generate_cached` wraps any backend with an append-only response cache so that a
finished call is never made twice.

Seeds. Engines that take a seed per request (vLLM, OpenAI-compatible servers) get
:func:`request_seed` ``(seed, question id, sample index)``: the samples of one question differ, and the
same sample is the same on a rerun. It is ``base(seed, id) + sample``, which is what vLLM does itself for
the ``n`` samples of one request (child ``i`` gets ``seed + i``), so one request with ``n`` samples and
``n`` requests with one sample each give the same answers.

Fingerprints. A cache key names the weights behind a model name (:func:`fingerprint`), never the name
alone, so a retrained adapter served under the same name never reads stale answers.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from .params_schema import ENGINE_BACKENDS as BACKENDS  # noqa: E402  (the schema owns the allowed values)
_SEED_SPACE = 2**31 - 2**16  # room for +sample without leaving int32


def request_seed(seed: int, request_id: str, sample: int = 0) -> int:
    """The seed of one sample: a hash of (seed, request id) plus the sample index (see the module doc)."""
    h = int(hashlib.sha256(f"{int(seed)}:{request_id}".encode()).hexdigest()[:12], 16)
    return h % _SEED_SPACE + int(sample)


WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def fingerprint(*paths) -> str:
    """A short hash of the weight files behind a model: each path is a file (hashed whole) or a folder
    (its ``*.safetensors`` / ``*.gguf`` / ``*.bin`` / ``*.pt`` files, by name and content). ``None`` is skipped.
    A path that does not exist is an error: a fingerprint of nothing would let stale answers through."""
    from .records import UserError, sha256_file

    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        else:
            raise UserError(f"cannot fingerprint {p}: no such file or folder (the weights behind a served model)")
        for f in files:
            h.update(f.name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 160
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or answer (1.0: off)

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["repetition_penalty"] == 1.0:  # off: the cache keys of answers generated before the knob existed hold
            del d["repetition_penalty"]
        return d


@dataclass(frozen=True)
class GenRequest:
    """One call: a chat conversation (list of {role, content}) and which sample of it this is."""

    id: str
    messages: tuple  # tuple of (role, content) pairs; hashable
    sample: int = 0

    @staticmethod
    def from_messages(id: str, messages: list[dict], sample: int = 0) -> "GenRequest":
        return GenRequest(id=id, messages=tuple((m["role"], m["content"]) for m in messages), sample=sample)

    def message_dicts(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class GenResult:
    id: str
    sample: int
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: bool = True  # stopped at EOS / end of turn (not cut by max_new_tokens)
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    name: str  # "local" | "openai"
    model: str  # what identifies the model in the cache key (hub id, path + adapter hash, API model name)

    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenResult]:
        """Answer every request; results in the same order as requests."""
        ...

