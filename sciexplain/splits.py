"""Filtering, dedupe and the deterministic hash splits: ``prepare``'s disjoint question splits, train/validation
hold-outs and caps.

One ranking serves them all: :func:`hash_order` sorts items by sha256 of ``"[salt:]seed:key"``, so a split depends
only on the ids and the seed (never on input order), and a salt keeps two rankings with the same seed independent.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterable, TypeVar

from .records import DataError, Drops, normalize_text

T = TypeVar("T")

from .params_schema import SPLITS as _NAMES

SPLITS = tuple(reversed(_NAMES))  # assignment order (eval, rs, rm, sft): eval is filled first so other sizes never move it


def hash_key(seed: int, key: str, salt: str = "") -> str:
    """sha256 hex of ``"salt:seed:key"`` (``"seed:key"`` without a salt): an item's place in a hash ranking."""
    text = f"{salt}:{seed}:{key}" if salt else f"{seed}:{key}"
    return hashlib.sha256(text.encode()).hexdigest()


def hash_order(items: Iterable[T], seed: int, key: Callable[[T], str], salt: str = "") -> list[T]:
    """``items`` sorted by :func:`hash_key` of ``key(item)``: a deterministic shuffle by id."""
    return sorted(items, key=lambda item: hash_key(seed, key(item), salt))


# --------------------------------------------------------------------------- filter, dedupe, split
def dedupe(records: list[dict], drops: Drops) -> list[dict]:
    """Keep the first record of each normalised question (sources are read in params order)."""
    seen, out = set(), []
    for rec in records:
        key = normalize_text(rec["question"])
        if key in seen:
            drops.add("duplicate")
            continue
        seen.add(key)
        out.append(rec)
    return out


def filter_lengths(records: list[dict], count_tokens, drops: Drops, min_question_tokens: int,
                   max_question_tokens: int, max_answer_tokens: int) -> list[dict]:
    out = []
    for rec in records:
        n = count_tokens(rec["question"])
        if n < min_question_tokens:
            drops.add("question_too_short")
            continue
        if n > max_question_tokens:
            drops.add("question_too_long")
            continue
        if rec.get("answer") and count_tokens(rec["answer"]) > max_answer_tokens:
            drops.add("answer_too_long")  # the question stays; its forum answer is dropped
            rec = {**rec, "answer": None}
        out.append(rec)
    return out


def split(records: list[dict], sizes: dict, seed: int, eval_records: list[dict] | None = None) -> dict[str, list[dict]]:
    """Deterministic disjoint split by id. ``eval`` is filled first, then rs, rm, sft, so growing a later
    split never moves questions between earlier ones. ``eval_records`` (an external eval file) replace
    the eval split; their questions are removed from the pool."""
    for name in sizes:
        if name not in SPLITS:
            raise DataError("params.yaml", "prepare.splits", name, f"unknown split (known: {', '.join(SPLITS)})")
    for name in SPLITS:
        if name not in sizes and not (name == "eval" and eval_records is not None):
            # a missing split once became an empty file that a later stage read as "no questions"
            raise DataError("params.yaml", "prepare.splits", name, "missing split size; every split needs one")
        n = sizes.get(name, 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError("params.yaml", "prepare.splits", name, f"size must be a non-negative integer, not {n!r}")
    pool = hash_order(records, seed, key=lambda r: r["id"])
    out: dict[str, list[dict]] = {}
    if eval_records is not None:
        eval_ids = {r["id"] for r in eval_records}
        pool = [r for r in pool if r["id"] not in eval_ids]
        out["eval"] = sorted(eval_records, key=lambda r: r["id"])
    needed = sum(sizes.get(n, 0) for n in SPLITS if n not in out)
    if needed > len(pool):
        raise DataError("params.yaml", "prepare.splits", None,
                        f"split sizes ask for {needed} questions but only {len(pool)} remain after cleaning, "
                        f"filtering and dedupe; lower the sizes or add sources")
    i = 0
    for name in SPLITS:
        if name in out:
            continue
        n = sizes.get(name, 0)
        out[name] = sorted(pool[i:i + n], key=lambda r: r["id"])
        i += n
    return out
