"""Human preference pairs as a first-class input: Stack Exchange votes and plain pair files.

A human pair record (what every source yields, one JSON object per line when written)::

    {"id": stable_id(question), "pair_id": hash of (question, chosen, rejected), "question", "chosen",
     "rejected", "margin": 0..1 or null, "strength": a decisive STRENGTHS label or null, "source", ...}

Extra fields of a source (post ids, scores, links) are kept as they are.

Sources (``validate.sources`` in params.yaml, a list of ``{type, path, ...}`` like ``prepare.sources``):

* ``stackexchange`` -- a data-dump ``Posts.xml`` -> answer pairs of the same question, the StackLLaMA /
  preference-model-pretraining recipe (Askell et al. 2021; lvwerra/stack-exchange-paired):

  - the answer with the higher ``Score`` is chosen, the lower one rejected, when the scores differ by at
    least ``min_score_gap``; answers with identical text, script-like HTML (dropped and counted, as in
    :mod:`sciexplain.markup`) or no text never pair;
  - ``margin`` = ``min(1, log2(1 + gap) / log2(1 + margin_full_gap))``: log-scaled because votes are
    heavy-tailed (a gap of 1 vs 2 says more than 41 vs 42), on the 0..1 scale of the study's strength
    margins (gap 1 -> 0.25, 3 -> 0.5, 7 -> 0.75, >= 15 -> 1 with the default ``margin_full_gap`` 15);
  - at most ``max_pairs_per_question`` pairs per question, chosen in this order: first the pairs whose
    higher-scored answer was posted *later* (``CreationDate``) -- it overcame the head start that early
    answers get in votes, so the preference is least confounded by timing --, then pairs whose dates are
    missing or unparseable, then the rest; within each group the larger score gap first, then by post ids;
  - a post ``Id`` that occurs more than once is never paired: every copy is dropped and counted, and a
    duplicated question Id drops that question's answers too (they cannot be attributed), counted.
* ``pairs`` -- a plain JSONL or CSV file of ``{question, chosen, rejected[, strength | margin]}``;
  ``strength`` is one of the study's decisive labels (Significantly better / Better / Slightly better ->
  margin 1, 2/3, 1/3), ``margin`` a number >= 0; without either the margin is null (a plain preference).
  Bad records stop with an error naming the file, the line and the field.

Pairs are split by question (:func:`split_pairs`) into train/test with the reward model's salted
splitter (:func:`sciexplain.preferences.validation_ids`), after removing every question that is in a
prepared split (same :func:`sciexplain.records.stable_id`), so human test pairs never share a question with
anything the pipeline trains or evaluates on.
"""
from __future__ import annotations

import hashlib
import html
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Iterable

from .markup import UnsafeHTML, clean_text, html_to_text
from .records import DataError, Drops, read_csv_table, read_jsonl, read_jsonl_lines, stable_id
from .preferences import validation_ids
from .sources import int_attr, iter_post_rows
from .strengths import STRENGTH_MARGIN, STRENGTHS, UNSURE

__all__ = [
    "SOURCE_TYPES", "SE_DEFAULTS", "margin_from_gap", "pair_id", "make_pair", "stackexchange_pairs",
    "read_pair_file", "load_source", "load_pairs", "prepared_question_ids", "split_pairs",
]

SOURCE_TYPES = ("stackexchange", "pairs")
#: Defaults of a ``stackexchange`` source (``validate.<key>`` overrides them for every source, an entry's own key wins).
def _se_defaults() -> dict:
    from .params_schema import HumanStackExchangeSource

    return {k: f.default for k, f in HumanStackExchangeSource.model_fields.items() if k not in ("type", "path")}


SE_DEFAULTS = _se_defaults()  # a stackexchange source's optional keys and defaults, as the schema declares them
DECISIVE = {s.lower(): s for s in STRENGTHS if s != UNSURE}


def margin_from_gap(gap: int, full_gap: int = 15) -> float:
    """0..1 margin of a score gap: ``min(1, log2(1 + gap) / log2(1 + full_gap))`` (0 for gap <= 0)."""
    if full_gap < 1:
        raise ValueError(f"margin_full_gap must be >= 1, got {full_gap!r}")
    if gap <= 0:
        return 0.0
    return round(min(1.0, math.log2(1 + gap) / math.log2(1 + full_gap)), 4)


def pair_id(question: str, chosen: str, rejected: str) -> str:
    """Stable id of a pair: 16 hex digits of sha256(question, chosen, rejected)."""
    return hashlib.sha256(f"{question}\0{chosen}\0{rejected}".encode("utf-8")).hexdigest()[:16]


def make_pair(question: str, chosen: str, rejected: str, *, margin: float | None, strength: str | None,
              source: str, **extra) -> dict:
    q = clean_text(question)
    rec = {"id": stable_id(q), "pair_id": pair_id(q, chosen, rejected), "question": q, "chosen": chosen,
           "rejected": rejected, "margin": margin, "strength": strength, "source": source}
    rec.update(extra)
    return rec


# --------------------------------------------------------------------------- Stack Exchange
def _date(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _author(site: str, row: dict) -> str | None:
    """The author of a post for attribution: their profile link, else the display name a deleted user left."""
    if row.get("OwnerUserId"):
        return f"https://{site}/users/{row['OwnerUserId']}"
    return row.get("OwnerDisplayName") or None


def stackexchange_pairs(path: str | Path, drops: Drops, *, min_score_gap: int = 2, max_pairs_per_question: int = 3,
                        margin_full_gap: int = 15, max_answer_chars: int | None = None,
                        site: str | None = None) -> list[dict]:
    """Answer pairs of the same question from a data-dump Posts.xml (see the module docstring for the recipe).

    ``site`` names the site in links (``https://<site>/a/<id>``); default: the file's folder name, with
    ``.stackexchange.com`` added when it has no dot (``stackexchange/physics/Posts.xml`` -> physics.stackexchange.com).
    ``max_answer_chars`` drops (and counts) answers longer than that many characters of text.
    """
    path = Path(path)
    if not isinstance(min_score_gap, int) or min_score_gap < 1:
        raise DataError("params.yaml", "validate.sources", "min_score_gap", f"must be an integer >= 1, got {min_score_gap!r}")
    if not isinstance(max_pairs_per_question, int) or max_pairs_per_question < 1:
        raise DataError("params.yaml", "validate.sources", "max_pairs_per_question",
                        f"must be an integer >= 1, got {max_pairs_per_question!r}")
    if not isinstance(margin_full_gap, int) or margin_full_gap < 1:
        raise DataError("params.yaml", "validate.sources", "margin_full_gap", f"must be an integer >= 1, got {margin_full_gap!r}")
    site = site or (path.parent.name if "." in path.parent.name else f"{path.parent.name}.stackexchange.com")
    rows: dict[int, list[tuple[dict, int]]] = {}
    for row, post_id, kind in iter_post_rows(path):
        if kind in (1, 2):
            rows.setdefault(post_id, []).append((row, kind))
    duplicated = {pid for pid, copies in rows.items() if len(copies) > 1}
    drops.add("duplicate_post_id_rows", sum(len(rows[pid]) for pid in duplicated))
    questions = {pid: c[0][0] for pid, c in rows.items() if pid not in duplicated and c[0][1] == 1}
    answers: dict[int, list[dict]] = {}
    for pid, copies in sorted(rows.items()):
        if pid in duplicated or copies[0][1] != 2:
            continue
        row = copies[0][0]
        parent = int_attr(path, row, "ParentId")
        if parent in duplicated:
            drops.add("answer_of_duplicate_question_id")
        elif parent not in questions:
            drops.add("answer_without_question")
        else:
            answers.setdefault(parent, []).append(row)
    if not questions:
        raise DataError(path, None, "PostTypeId", "no question rows (PostTypeId=1) with a unique Id found")

    out = []
    for qid in sorted(answers):
        row = questions[qid]
        title = clean_text(html.unescape(row.get("Title") or ""))  # as sciexplain.sources does: the same stable id
        if not title:
            drops.add("missing_title")
            continue
        cands = []
        for a in answers[qid]:
            try:
                text = html_to_text(a.get("Body") or "")
            except UnsafeHTML:
                drops.add("unsafe_html_answer")
                continue
            if not text:
                drops.add("empty_answer")
                continue
            if max_answer_chars and len(text) > max_answer_chars:
                drops.add("answer_too_long")
                continue
            cands.append({"id": int(a["Id"]), "score": int_attr(path, a, "Score"), "text": text,
                          "date": _date(a.get("CreationDate")), "author": _author(site, a)})
        pairs = []
        for i, hi in enumerate(cands):
            for lo in cands[i + 1:]:
                if hi["score"] < lo["score"]:
                    hi_, lo_ = lo, hi
                else:
                    hi_, lo_ = hi, lo
                gap = hi_["score"] - lo_["score"]
                if gap < min_score_gap:
                    continue
                if hi_["text"] == lo_["text"]:
                    drops.add("identical_answers")
                    continue
                later = None if hi_["date"] is None or lo_["date"] is None else hi_["date"] > lo_["date"]
                rank = (0 if later else 1 if later is None else 2, -gap, hi_["id"], lo_["id"])
                pairs.append((rank, hi_, lo_, later))
        pairs.sort(key=lambda p: p[0])
        if len(pairs) > max_pairs_per_question:
            drops.add("pairs_over_per_question_cap", len(pairs) - max_pairs_per_question)
        for _rank, hi, lo, later in pairs[:max_pairs_per_question]:
            gap = hi["score"] - lo["score"]
            out.append(make_pair(
                title, hi["text"], lo["text"], margin=margin_from_gap(gap, margin_full_gap), strength=None,
                source=f"stackexchange:{site}", question_post_id=qid, chosen_post_id=hi["id"],
                rejected_post_id=lo["id"], chosen_score=hi["score"], rejected_score=lo["score"], score_gap=gap,
                chosen_later=later, url=f"https://{site}/q/{qid}", chosen_url=f"https://{site}/a/{hi['id']}",
                rejected_url=f"https://{site}/a/{lo['id']}", chosen_author=hi["author"], rejected_author=lo["author"]))
    return out


# --------------------------------------------------------------------------- plain pair files
PAIR_FIELDS = ("question", "chosen", "rejected")


def _pair_rows(path: Path):
    """``(line, record)`` from a .jsonl or .csv file (a CSV record's line is where it starts)."""
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, None, "is a folder, not a pair file")
    if path.suffix.lower() == ".csv":
        header, rows = read_csv_table(path, PAIR_FIELDS, lower=True, what="pair file")
        for line, row in rows:
            if len(row) != len(header):
                raise DataError(path, line, None, f"{len(row)} cells, the header has {len(header)}")
            yield line, {k: v for k, v in zip(header, row) if k and not (k in ("strength", "margin") and not v.strip())}
        return
    yield from read_jsonl_lines(path)


def read_pair_file(path: str | Path, drops: Drops) -> list[dict]:
    """Pairs from a JSONL/CSV file ``{question, chosen, rejected[, strength | margin]}`` (+ any extra fields)."""
    path = Path(path)
    out = []
    for line, rec in _pair_rows(path):
        for name in PAIR_FIELDS:
            value = rec.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(path, line, name, "missing, empty or not a string")
        if clean_text(rec["chosen"]) == clean_text(rec["rejected"]):
            raise DataError(path, line, "rejected", "the same text as 'chosen': a pair needs two different answers")
        strength, margin = rec.get("strength"), rec.get("margin")
        if strength is not None and margin is not None:
            raise DataError(path, line, "margin", "give 'strength' or 'margin', not both")
        if strength is not None:
            label = DECISIVE.get(" ".join(str(strength).lower().split()))
            if label is None:
                raise DataError(path, line, "strength", f"must be one of {', '.join(DECISIVE.values())}, got {strength!r}"
                                + (" (a tie is not a preference pair)" if str(strength).strip().lower() == "unsure" else ""))
            strength, margin = label, round(float(STRENGTH_MARGIN[label]), 4)
        elif margin is not None:
            if isinstance(margin, bool):  # float(True) is 1.0: a flag is not a margin
                raise DataError(path, line, "margin", f"must be a number, got {json.dumps(margin)}")
            try:
                margin = float(margin)
            except (TypeError, ValueError):
                raise DataError(path, line, "margin", f"must be a number, got {margin!r}") from None
            if not math.isfinite(margin) or margin < 0:
                raise DataError(path, line, "margin", f"must be a finite number >= 0, got {margin!r}")
        extra = {k: v for k, v in rec.items() if k not in ("id", "pair_id", "question", "chosen", "rejected",
                                                          "margin", "strength", "source")}
        out.append(make_pair(rec["question"], rec["chosen"].strip(), rec["rejected"].strip(), margin=margin,
                             strength=strength, source=str(rec.get("source") or f"pairs:{path.name}"), **extra))
    return out


# --------------------------------------------------------------------------- sources, dedupe, split
def load_source(spec: dict, drops: Drops, root: Path = Path("."), defaults: dict | None = None) -> list[dict]:
    """One ``validate.sources`` entry; ``defaults`` (``validate.<key>``) fill a stackexchange entry's options."""
    if not isinstance(spec, dict):
        raise DataError("params.yaml", "validate.sources", None, f"every source must be a mapping, got {spec!r}")
    spec = dict(spec)
    kind, path = spec.pop("type", None), spec.pop("path", None)
    if kind not in SOURCE_TYPES:
        raise DataError("params.yaml", "validate.sources", "type", f"unknown source type {kind!r} ({', '.join(SOURCE_TYPES)})")
    if not path:
        raise DataError("params.yaml", "validate.sources", "path", f"every source needs a path ({spec})")
    allowed = set(SE_DEFAULTS) if kind == "stackexchange" else set()
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise DataError("params.yaml", f"validate.sources ({path})", unknown[0],
                        f"unknown key for a {kind} source; allowed: {', '.join(sorted(allowed)) or 'type, path'}")
    if kind == "pairs":
        return read_pair_file(Path(root) / path, drops)
    opts = {k: v for k, v in SE_DEFAULTS.items()}
    opts.update({k: v for k, v in (defaults or {}).items() if k in SE_DEFAULTS and v is not None})
    opts.update(spec)
    return stackexchange_pairs(Path(root) / path, drops, **opts)


def load_pairs(sources: Iterable[dict], drops: Drops, root: Path = Path("."), defaults: dict | None = None) -> list[dict]:
    """Every source in order; an exact duplicate (question, chosen, rejected) is kept once and counted."""
    if not isinstance(sources, list) or not sources:
        raise DataError("params.yaml", None, "validate.sources", "must be a non-empty list of {type, path} sources")
    seen, out = set(), []
    for spec in sources:
        for p in load_source(spec, drops, root, defaults):
            if p["pair_id"] in seen:
                drops.add("duplicate_pair")
                continue
            seen.add(p["pair_id"])
            out.append(p)
    return out


def prepared_question_ids(prepared_dir: str | Path) -> set[str]:
    """The ids of every question in the prepared splits (``<dir>/*.jsonl``)."""
    prepared_dir = Path(prepared_dir)
    files = sorted(prepared_dir.glob("*.jsonl"))
    if not files:
        raise DataError(prepared_dir, None, None, "no prepared split (*.jsonl) found: run the prepare stage first")
    return {r["id"] for f in files for r in read_jsonl(f, required=("id",), allow_empty=True)}


def split_pairs(pairs: list[dict], test_fraction: float, seed: int, exclude_ids: Iterable[str] = (),
                drops: Drops | None = None) -> tuple[list[dict], list[dict]]:
    """(train, test) by question id, deterministic in ``seed``; questions in ``exclude_ids`` (the prepared
    splits) are removed from both and counted as ``in_prepared_split``."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise DataError("params.yaml", None, "validate.test_fraction", f"must be a number in (0, 1), got {test_fraction!r}")
    exclude = set(exclude_ids)
    kept = [p for p in pairs if p["id"] not in exclude]
    if drops is not None:
        drops.add("in_prepared_split", len(pairs) - len(kept))
    test_ids = validation_ids((p["id"] for p in kept), float(test_fraction), int(seed))
    return [p for p in kept if p["id"] not in test_ids], [p for p in kept if p["id"] in test_ids]
