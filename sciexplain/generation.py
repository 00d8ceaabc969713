"""One interface for every stage that writes answers.

A *backend* turns chat requests into texts. Backends: ``local`` (a transformers causal LM,
see :mod:`sciexplain.local_backend`) and ``openai`` (any OpenAI-compatible server, see
:mod:`sciexplain.openai_backend`). :func:`sciexplain.cache.generate_cached` wraps any backend
with an append-only response cache so that a finished call is never made twice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 160
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


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

