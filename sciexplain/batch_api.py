"""OpenAI Batch API files: export requests to a batch input JSONL, import a batch output JSONL.

``custom_id`` is the record id, with ``#<sample>`` appended when ``sample > 0`` (or when the id
itself contains ``#``, so that parsing stays unambiguous): ``"3f2a...": sample 0``,
``"3f2a...#2": sample 2``. The request body matches what :class:`~sciexplain.openai_backend.OpenAIBackend`
sends, so batch answers and live answers are interchangeable (e.g. ``ResponseCache.put`` them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from .generation import GenRequest, GenResult, SamplingParams, request_seed
from .records import DataError, UserError, iter_jsonl, type_name, write_jsonl

__all__ = ["custom_id", "parse_custom_id", "request_body", "export_batch", "import_batch", "CHAT_URL"]

CHAT_URL = "/v1/chat/completions"


def custom_id(request: GenRequest) -> str:
    if request.sample > 0 or "#" in request.id:
        return f"{request.id}#{int(request.sample)}"
    return request.id


def parse_custom_id(cid: str) -> tuple[str, int]:
    """Inverse of :func:`custom_id`: ``(id, sample)``."""
    head, sep, tail = cid.rpartition("#")
    if sep and head and tail.isdigit():
        return head, int(tail)
    return cid, 0


def request_body(request: GenRequest, sampling: SamplingParams, model: str, max_tokens_field: str = "max_tokens") -> dict:
    if sampling.repetition_penalty != 1.0:
        raise UserError(f"repetition_penalty {sampling.repetition_penalty} is not an OpenAI Batch API field: "
                        "set it to 1.0 for the batch backends")
    return {
        "model": model,
        "messages": request.message_dicts(),
        max_tokens_field: int(sampling.max_new_tokens),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "seed": request_seed(sampling.seed, request.id, request.sample),
    }


def export_batch(
    requests: Iterable[GenRequest],
    sampling: SamplingParams,
    model: str,
    path: str | os.PathLike,
    *,
    max_tokens_field: str = "max_tokens",
) -> int:
    """Write a Batch API input file atomically; returns the number of lines. Duplicate custom_ids are refused."""
    lines, seen = [], set()
    for req in requests:
        cid = custom_id(req)
        if not req.id:
            raise DataError(None, "request", "id", "empty request id")
        if cid in seen:
            raise DataError(None, f"request {cid!r}", "custom_id", "duplicate (the Batch API needs unique custom_ids)")
        seen.add(cid)
        lines.append(
            {"custom_id": cid, "method": "POST", "url": CHAT_URL, "body": request_body(req, sampling, model, max_tokens_field)}
        )
    return write_jsonl(path, lines)


def _get(obj, field: str, path, lineno: int, kind: type | tuple, name: str):
    if not isinstance(obj, dict) or field not in obj or obj[field] is None:
        raise DataError(path, lineno, name, "missing")
    value = obj[field]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DataError(path, lineno, name, f"expected {type_name(kind)}, got {type(value).__name__}")
    return value


def _error_text(err) -> str:
    if isinstance(err, dict):
        code = err.get("code") or err.get("type") or ""
        msg = err.get("message") or ""
        return " ".join(f"{code}: {msg}".split()).strip(": ")[:300] or "unknown error"
    return " ".join(str(err).split())[:300]


def import_batch(path: str | os.PathLike, requests: Sequence[GenRequest] | None = None) -> list[GenResult]:
    """Read a Batch API output file. Results come in file order, or in ``requests`` order when given
    (then every request must be answered and nothing else). Any problem raises :class:`DataError`
    naming the file, the line and the field."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    results: list[GenResult] = []
    where: dict[tuple[str, int], int] = {}
    for lineno, rec in iter_jsonl(path, what="line"):
        if "response" not in rec and "error" not in rec and {"method", "url", "body"} <= set(rec):
            raise DataError(path, lineno, "response", "a Batch API input line (custom_id, method, url, body), not an "
                            "output line: give the batch's output file (its output_file_id)")
        cid = _get(rec, "custom_id", path, lineno, str, "custom_id")
        if not cid.strip():
            raise DataError(path, lineno, "custom_id", "empty")
        if rec.get("error"):
            raise DataError(path, lineno, "error", f"request {cid!r} failed: {_error_text(rec['error'])}")
        resp = _get(rec, "response", path, lineno, dict, "response")
        status = _get(resp, "status_code", path, lineno, int, "response.status_code")
        body = _get(resp, "body", path, lineno, dict, "response.body")
        if status != 200:
            raise DataError(
                path, lineno, "response.status_code", f"request {cid!r} got HTTP {status}: {_error_text(body.get('error'))}"
            )
        choices = _get(body, "choices", path, lineno, list, "response.body.choices")
        if not choices or not isinstance(choices[0], dict):
            raise DataError(path, lineno, "response.body.choices", "empty")
        message = _get(choices[0], "message", path, lineno, dict, "response.body.choices[0].message")
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise DataError(path, lineno, "response.body.choices[0].message.content",
                            f"expected a string, got {type(content).__name__}")
        finish = choices[0].get("finish_reason")
        usage = body.get("usage") or {}
        if not isinstance(usage, dict):
            raise DataError(path, lineno, "response.body.usage", "expected an object")
        tokens = {}
        for name in ("prompt_tokens", "completion_tokens"):
            value = usage.get(name, 0) or 0
            if not isinstance(value, int) or isinstance(value, bool):
                raise DataError(path, lineno, f"response.body.usage.{name}", "expected an integer")
            tokens[name] = value
        rid, sample = parse_custom_id(cid)
        if (rid, sample) in where:
            raise DataError(path, lineno, "custom_id", f"duplicate {cid!r} (first on line {where[(rid, sample)]})")
        where[(rid, sample)] = lineno
        results.append(
            GenResult(
                id=rid,
                sample=sample,
                text=content,
                finished=finish == "stop",
                extra={"finish_reason": finish, "custom_id": cid},
                **tokens,
            )
        )
    if not results:
        raise DataError(path, None, None, "file is empty")
    if requests is None:
        return results
    by_key = {(r.id, r.sample): r for r in results}
    ordered, missing = [], []
    for req in requests:
        res = by_key.pop((req.id, req.sample), None)
        if res is None:
            missing.append(custom_id(req))
        else:
            ordered.append(res)
    if by_key:
        extra = sorted(by_key.values(), key=lambda r: where[(r.id, r.sample)])
        cid = extra[0].extra["custom_id"]
        raise DataError(path, where[(extra[0].id, extra[0].sample)], "custom_id",
                        f"{cid!r} matches no request of this run: {len(extra)} answers match no request, e.g. "
                        f"{[r.extra['custom_id'] for r in extra[:3]]} (an output of another batch?)")
    if missing:
        raise DataError(path, f"request {missing[0]!r}", "custom_id",
                        f"no answer in the file: {len(missing)} requests have no answer, e.g. {missing[:3]}")
    return ordered
