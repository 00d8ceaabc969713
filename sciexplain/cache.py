"""Append-only response cache in front of any backend, so a finished call is never made twice.

Key: sha256 of the canonical JSON of (backend name, the model's cache id -- its name and a
fingerprint of its weights --, messages, sampling params incl. seed, sample index, and the request's
own seed for backends that seed each request). The request ``id`` is otherwise *not* part of the
key: two records that ask the same thing share one answer. The cache file is JSONL, one line per answered call::

    {"key", "id", "sample", "text", "prompt_tokens", "completion_tokens", "finished"}

Each line is written with one ``write`` then flushed and ``os.fsync``'d before the next call is
recorded, so a crash loses at most the call that was in flight. A torn last line (a crash in the
middle of a write) is ignored on load, counted in :attr:`ResponseCache.torn_lines`, and cut off
before the next append. A bad line anywhere else is corruption and raises :class:`DataError`.
Only the hash of the request goes into the file: no messages, no headers, no keys.

Backends are driven in one of two ways (see :func:`generate_cached`):

* a backend whose ``generate`` accepts an ``on_result`` keyword (``on_result(index, result)``,
  called once per request as soon as it is answered, e.g. :class:`~sciexplain.openai_backend.OpenAIBackend`)
  gets every miss at once and each answer is cached as it arrives;
* any other backend (the plain :class:`~sciexplain.generation.Backend` protocol) gets the misses
  in chunks of ``chunk_size`` and each chunk is cached when it returns.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .generation import Backend, GenRequest, GenResult, SamplingParams
from .records import DataError

__all__ = ["cache_key", "backend_cache_key", "ResponseCache", "CacheStats", "CachedResults", "generate_cached", "DEFAULT_CHUNK_SIZE"]

DEFAULT_CHUNK_SIZE = 16
_FIELDS = ("key", "id", "sample", "text", "prompt_tokens", "completion_tokens", "finished")


def cache_key(backend_name: str, model: str, request: GenRequest, sampling: SamplingParams,
              request_seed: int | None = None) -> str:
    """sha256 hex of the canonical JSON of everything that decides the answer (not the record id)."""
    payload = {
        "backend": backend_name,
        "model": model,
        "messages": [[role, content] for role, content in request.messages],
        "sampling": sampling.as_dict(),
        "sample": int(request.sample),
    }
    if request_seed is not None:
        payload["request_seed"] = int(request_seed)
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """The cache file: ``get`` by key, ``put`` one finished result (durable when it returns). Thread-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.torn_lines = 0
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._file = None
        self._truncate_to: int | None = None  # set when a torn last line must be cut off before appending
        self._needs_newline = False  # set when the last complete line lacks its newline
        self._load()

    # -- loading -------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # data.split gives a last element that is b"" when the file ends with "\n"; otherwise it is
        # the unterminated tail of an interrupted write.
        tail = lines.pop()
        good_end = len(data) - len(tail)
        for lineno, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            entry = self._parse(raw, lineno)
            self._entries[entry["key"]] = entry
        if tail.strip():
            try:
                entry = self._parse(tail, len(lines) + 1)
            except DataError:
                entry = None
            if entry is None:
                self.torn_lines += 1  # a crash mid-write: drop it, it is cut off before the next append
                self._truncate_to = good_end
            else:  # a complete record that only lacks its newline: keep it
                self._entries[entry["key"]] = entry
                self._needs_newline = True

    def _parse(self, raw: bytes, lineno: int) -> dict:
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(self.path, lineno, None, f"corrupt cache line ({e}); delete this line or the cache file") from None
        if not isinstance(entry, dict):
            raise DataError(self.path, lineno, None, "a cache line must be a JSON object")
        for name in _FIELDS:
            if name not in entry:
                raise DataError(self.path, lineno, name, "missing from cache line")
        if not isinstance(entry["key"], str) or not isinstance(entry["text"], str):
            raise DataError(self.path, lineno, "text", "must be a string")
        return entry

    # -- access --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str, request: GenRequest | None = None) -> GenResult | None:
        """The cached result for ``key``, re-labelled with ``request``'s id/sample when given."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        return GenResult(
            id=request.id if request is not None else entry["id"],
            sample=request.sample if request is not None else int(entry["sample"]),
            text=entry["text"],
            prompt_tokens=int(entry["prompt_tokens"] or 0),
            completion_tokens=int(entry["completion_tokens"] or 0),
            finished=bool(entry["finished"]),
            extra={"cached": True},
        )

    def put(self, key: str, result: GenResult) -> None:
        """Append one result and fsync it. Only the fields in the docstring are stored (never ``extra``)."""
        entry = {
            "key": key,
            "id": result.id,
            "sample": int(result.sample),
            "text": result.text,
            "prompt_tokens": int(result.prompt_tokens or 0),
            "completion_tokens": int(result.completion_tokens or 0),
            "finished": bool(result.finished),
        }
        line = (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            f = self._open()
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            self._entries[key] = entry

    def _open(self):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._truncate_to is not None:
                with open(self.path, "r+b") as f:
                    f.truncate(self._truncate_to)
                    f.flush()
                    os.fsync(f.fileno())
                self._truncate_to = None
            self._file = open(self.path, "ab")
            if self._needs_newline:
                self._file.write(b"\n")
                self._needs_newline = False
        return self._file

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class CacheStats:
    hits: int = 0  # answered from the cache file
    misses: int = 0  # distinct calls sent to the backend
    deduplicated: int = 0  # requests answered by another identical request of the same run
    torn_lines: int = 0  # torn last lines found (and dropped) on load

    def as_dict(self) -> dict:
        return asdict(self)


class CachedResults(list):
    """A ``list[GenResult]`` in request order, with ``.stats`` (:class:`CacheStats`) for stage metrics."""

    stats: CacheStats


def backend_cache_key(backend, request: GenRequest, sampling: SamplingParams) -> str:
    """The cache key of ``request`` on ``backend``: its ``cache_id`` (else ``model``) and, where the backend
    seeds each request, that seed."""
    seeder = getattr(backend, "request_seed", None)
    return cache_key(backend.name, getattr(backend, "cache_id", backend.model), request, sampling,
                     seeder(request, sampling) if seeder is not None else None)


def _accepts_on_result(backend) -> bool:
    try:
        params = inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False
    return "on_result" in params


def generate_cached(
    backend: Backend,
    requests: Sequence[GenRequest],
    sampling: SamplingParams,
    cache_path: str | os.PathLike,
    *,
    desc: str = "generate",
    chunk_size: int | None = None,
    progress: bool = True,
) -> CachedResults:
    """Answer ``requests`` through ``backend``, skipping every call already in ``cache_path``.

    Returns the results in request order (a list with ``.stats``). Misses are sent once per
    distinct key; each answer is appended to the cache before the next one is recorded.
    ``chunk_size`` (default: ``backend.batch_size`` or 16) only applies to backends without
    ``on_result``. If the backend fails midway, everything answered so far stays cached and the
    error propagates; rerunning picks up where it stopped.
    """
    from tqdm import tqdm

    requests = list(requests)
    stats = CacheStats()
    results: list[GenResult | None] = [None] * len(requests)
    with ResponseCache(cache_path) as cache:
        stats.torn_lines = cache.torn_lines
        keys = [backend_cache_key(backend, r, sampling) for r in requests]
        pending: dict[str, list[int]] = {}  # key -> indices of requests that want it
        for i, (req, key) in enumerate(zip(requests, keys)):
            hit = cache.get(key, req)
            if hit is not None:
                results[i] = hit
                stats.hits += 1
            else:
                pending.setdefault(key, []).append(i)
        stats.misses = len(pending)
        stats.deduplicated = sum(len(v) - 1 for v in pending.values())
        miss_keys = list(pending)
        miss_reqs = [requests[pending[k][0]] for k in miss_keys]

        bar = tqdm(total=len(requests), initial=stats.hits, desc=desc, unit="call", disable=not progress)
        try:
            seen: set[int] = set()

            def record(j: int, result: GenResult) -> None:
                if not 0 <= j < len(miss_reqs) or j in seen:
                    raise RuntimeError(f"backend {backend.name!r} reported result index {j} twice or out of range")
                seen.add(j)
                key = miss_keys[j]
                cache.put(key, result)
                for i in pending[key]:
                    results[i] = GenResult(
                        id=requests[i].id,
                        sample=requests[i].sample,
                        text=result.text,
                        prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        finished=result.finished,
                        extra=dict(result.extra),
                    )
                bar.update(len(pending[key]))

            if miss_reqs and _accepts_on_result(backend):
                out = backend.generate(miss_reqs, sampling, on_result=record)
                _check_len(backend, out, miss_reqs)
                for j, res in enumerate(out):  # a backend that returned without calling back for some
                    if j not in seen:
                        record(j, res)
            elif miss_reqs:
                size = chunk_size or getattr(backend, "batch_size", None) or DEFAULT_CHUNK_SIZE
                for start in range(0, len(miss_reqs), size):
                    chunk = miss_reqs[start : start + size]
                    out = backend.generate(chunk, sampling)
                    _check_len(backend, out, chunk)
                    for j, res in enumerate(out):
                        record(start + j, res)
        finally:
            bar.close()

    final = CachedResults(results)  # type: ignore[arg-type]
    final.stats = stats
    return final


def _check_len(backend, out, sent) -> None:
    if out is None or len(out) != len(sent):
        got = "None" if out is None else len(out)
        raise RuntimeError(f"backend {backend.name!r} returned {got} results for {len(sent)} requests")
