"""Question sources, cleaning and the deterministic split used by the ``prepare`` stage.

Sources (``prepare.sources`` in params.yaml, a list of {type, path, ...}):
- ``bank``: the project's science question bank, JSONL {id, question, domain}.
- ``stackexchange``: a Stack Exchange data-dump ``Posts.xml`` (PostTypeId 1 = question, 2 = answer).
  The accepted answer (else the top-voted one) with Score >= ``min_score`` is kept as the forum answer.
- ``qa``: CSV or JSONL Q/A files; ``question_field`` / ``answer_field`` / ``domain_field`` name the columns.

Every record gets a stable ``id`` = hash of the normalised question (:func:`sciexplain.io.stable_id`).
"""
from __future__ import annotations

import csv
import hashlib
import html
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from .io import DataError, normalize_text, read_jsonl, stable_id

SPLITS = ("eval", "rs", "rm", "sft")
MAX_BODY_CHARS = 100_000  # a post body longer than this is dropped and counted (a dump's longest are ~60k)
MAX_TITLE_CHARS = 1_000  # assignment order: eval is filled first so other sizes never move it


@dataclass
class Drops:
    """Counted drops by reason (reported in metrics/prepare.json)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n


# --------------------------------------------------------------------------- HTML -> text
class UnsafeHTML(ValueError):
    pass


class _HTMLToText(HTMLParser):
    """Stack Exchange HTML -> plain text that keeps paragraphs, lists, code blocks and LaTeX as written."""

    BLOCK = {"p", "div", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "hr"}
    FORBIDDEN = {"script", "style", "iframe", "object", "embed"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.lists: list[list] = []  # stack of [kind, counter]
        self.pre = 0
        self.code_inline = 0

    def _nl(self, n: int = 2) -> None:
        """End the text so far with at least ``n`` newlines (none at the very start). Looks only at the
        trailing whitespace chunks, so a body with many block tags converts in linear time."""
        have = 0
        for chunk in reversed(self.out):
            body = chunk.rstrip(" ")
            if body.strip("\n"):  # this chunk has text: count its trailing newlines and stop
                have += len(body) - len(body.rstrip("\n"))
                break
            have += body.count("\n")
        else:
            return  # nothing but whitespace so far
        if have < n:
            self.out.append("\n" * (n - have))

    def handle_starttag(self, tag, attrs):
        if tag in self.FORBIDDEN:
            raise UnsafeHTML(f"<{tag}> element")
        for name, value in attrs:
            if name.lower().startswith("on") or (value and value.strip().lower().startswith("javascript:")):
                raise UnsafeHTML(f"<{tag} {name}=...> attribute")
        if tag in self.BLOCK:
            self._nl(2)
        elif tag == "br":
            self.out.append("\n")
        elif tag in ("ul", "ol"):
            self._nl(2 if not self.lists else 1)
            self.lists.append([tag, 0])
        elif tag == "li":
            self._nl(1)
            depth = max(len(self.lists) - 1, 0)
            if self.lists and self.lists[-1][0] == "ol":
                self.lists[-1][1] += 1
                self.out.append("  " * depth + f"{self.lists[-1][1]}. ")
            else:
                self.out.append("  " * depth + "- ")
        elif tag == "pre":
            self._nl(2)
            self.out.append("```\n")
            self.pre += 1
        elif tag == "code" and not self.pre:
            self.out.append("`")
            self.code_inline += 1
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(f"[image: {alt}]")

    def handle_endtag(self, tag):
        if tag in self.BLOCK:
            self._nl(2)
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._nl(2 if not self.lists else 1)
        elif tag == "pre":
            if self.pre:
                self.pre -= 1
                if not "".join(self.out).endswith("\n"):
                    self.out.append("\n")
                self.out.append("```")
                self._nl(2)
        elif tag == "code" and self.code_inline:
            self.out.append("`")
            self.code_inline -= 1

    def handle_data(self, data):
        if self.pre:
            self.out.append(data)
        else:
            data = re.sub(r"\s+", " ", data)
            if not self.out or self.out[-1].endswith("\n") or self.out[-1].endswith(("- ", ". ")):
                data = data.lstrip()
            if data:
                self.out.append(data)


def html_to_text(body: str) -> str:
    """Convert (already XML-unescaped) HTML to text. Raises :class:`UnsafeHTML` on script-like content."""
    parser = _HTMLToText()
    parser.feed(body)
    parser.close()
    text = "".join(parser.out)
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_text(text: str) -> str:
    """Collapse runs of spaces and blank lines; keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def parse_tags(raw: str | None) -> list[str]:
    """Tags in the old ``<a><b>`` dump syntax or the newer ``|a|b|`` syntax."""
    if not raw:
        return []
    raw = html.unescape(raw)
    if "<" in raw:
        return re.findall(r"<([^<>]+)>", raw)
    return [t for t in raw.split("|") if t]


# --------------------------------------------------------------------------- sources
def _record(question: str, domain: str, source: str, answer: str | None = None, **extra) -> dict:
    q = clean_text(question)
    rec = {"id": stable_id(q), "question": q, "domain": domain, "source": source, "answer": answer}
    rec.update(extra)
    return rec


def load_bank(path: str | Path, drops: Drops) -> list[dict]:
    out = []
    for i, rec in enumerate(read_jsonl(path, required=("question", "domain")), 1):
        if not isinstance(rec["question"], str):
            raise DataError(path, f"record {i}", "question", "must be a string")
        out.append(_record(rec["question"], str(rec["domain"]), "bank", None))
    return out


def _int_attr(path, row, name, required=True):
    value = row.get(name)
    if value is None:
        if required:
            raise DataError(path, f"row Id={row.get('Id', '?')}", name, "missing attribute")
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(path, f"row Id={row.get('Id', '?')}", name, f"not an integer: {value!r}") from None


def iter_post_rows(path: str | Path):
    """Yield ``(row, post_id, post_type)`` for every ``<row>`` of a data-dump Posts.xml (attributes XML-unescaped,
    Body still HTML); a missing/empty file or malformed XML raises :class:`DataError` naming the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, None, None, "file is empty")
    try:
        for _event, el in ET.iterparse(str(path), events=("end",)):
            if el.tag != "row":
                continue
            row = dict(el.attrib)
            el.clear()
            yield row, _int_attr(path, row, "Id"), _int_attr(path, row, "PostTypeId")
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(path, line, None, f"malformed XML at column {col}: {e.msg if hasattr(e, 'msg') else e}") from None


def load_stackexchange(path: str | Path, drops: Drops, min_score: int = 1, domain: str | None = None,
                       require_answer: bool = True) -> list[dict]:
    """Questions (+ accepted or top-voted answer with Score >= min_score) from a data-dump Posts.xml."""
    path = Path(path)
    rows: list[tuple[dict, int, int]] = []
    id_count: Counter = Counter()
    for row, post_id, kind in iter_post_rows(path):
        id_count[post_id] += 1
        if kind in (1, 2):
            rows.append((row, post_id, kind))
    dup = {i for i, c in id_count.items() if c > 1}
    questions: dict[int, dict] = {}
    answers: dict[int, list[dict]] = {}
    any_question = False
    for row, post_id, kind in rows:
        any_question |= kind == 1
        if post_id in dup:  # every copy of a repeated Id goes: which copy is right is unknowable
            drops.add(f"duplicate_post_id_{'question' if kind == 1 else 'answer'}")
            continue
        if len(row.get("Body") or "") > MAX_BODY_CHARS or len(row.get("Title") or "") > MAX_TITLE_CHARS:
            drops.add(f"{'question' if kind == 1 else 'answer'}_too_large")
            continue
        if kind == 1:
            questions[post_id] = row
        else:
            parent = _int_attr(path, row, "ParentId")
            if parent in dup:
                drops.add("answer_of_duplicate_question")
                continue
            answers.setdefault(parent, []).append(row)
    if not any_question:
        raise DataError(path, None, "PostTypeId", "no question rows (PostTypeId=1) found")
    site = domain or path.parent.name
    out = []
    for qid in sorted(questions):
        row = questions[qid]
        title = html.unescape(row.get("Title") or "").strip()
        if not title:
            drops.add("missing_title")
            continue
        try:
            details = html_to_text(row.get("Body") or "")
            cands = answers.get(qid, [])
            accepted = _int_attr(path, row, "AcceptedAnswerId", required=False)
            best = next((a for a in cands if int(a["Id"]) == accepted), None)
            if best is None or _int_attr(path, best, "Score") < min_score:
                ranked = sorted(cands, key=lambda a: (-_int_attr(path, a, "Score"), int(a["Id"])))
                best = ranked[0] if ranked else None
            if best is not None and _int_attr(path, best, "Score") < min_score:
                best = None
            answer = html_to_text(best.get("Body") or "") if best is not None else None
        except UnsafeHTML:
            drops.add("unsafe_html")
            continue
        if answer is None and require_answer:
            drops.add("no_answer_above_min_score")
            continue
        out.append(_record(title, site, f"stackexchange:{path.parent.name}", answer or None,
                           details=details, tags=parse_tags(row.get("Tags")), post_id=qid,
                           answer_score=int(best["Score"]) if best is not None else None))
    return out


def load_qa(path: str | Path, drops: Drops, question_field: str = "question", answer_field: str | None = "answer",
            domain_field: str | None = None, domain: str | None = None) -> list[dict]:
    """Q/A pairs from CSV (header row) or JSONL."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if not path.exists():
            raise DataError(path, None, None, "file not found")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(path, f"byte {e.start}", None, "not valid UTF-8") from None
        reader = csv.DictReader(text.splitlines(keepends=True))
        if not reader.fieldnames:
            raise DataError(path, None, None, "file is empty")
        for needed in (question_field, answer_field, domain_field):
            if needed and needed not in reader.fieldnames:
                raise DataError(path, 1, needed, f"missing column (columns: {', '.join(reader.fieldnames)})")
        rows = []
        for r in reader:
            if None in r:  # more fields than the header
                raise DataError(path, reader.line_num, None, f"{len(reader.fieldnames) + len(r[None])} fields but the "
                                f"header has {len(reader.fieldnames)} (an unquoted comma?)")
            short = [k for k, v in r.items() if v is None]
            if short:
                raise DataError(path, reader.line_num, short[0], f"missing: the row has fewer fields than the header")
            rows.append((reader.line_num, r))
        if not rows:
            raise DataError(path, None, None, "file has a header but no rows")
    else:
        rows = [(i, r) for i, r in enumerate(read_jsonl(path, required=(question_field,)), 1)]
    out = []
    for where, r in rows:
        q = r.get(question_field)
        if not isinstance(q, str) or not q.strip():
            raise DataError(path, f"record {where}", question_field, "missing or empty")
        a = r.get(answer_field) if answer_field else None
        if a is not None and not isinstance(a, str):
            raise DataError(path, f"record {where}", answer_field, "must be a string")
        dom = (r.get(domain_field) if domain_field else None) or domain or path.stem
        out.append(_record(q, str(dom).lower().replace(" ", "_"), f"qa:{path.name}", clean_text(a) if a and a.strip() else None))
    return out


SOURCE_KEYS = {"bank": set(), "stackexchange": {"min_score", "domain", "require_answer"},
               "qa": {"question_field", "answer_field", "domain_field", "domain"}}


def load_source(spec: dict, drops: Drops, root: Path = Path(".")) -> list[dict]:
    spec = dict(spec)
    kind = spec.pop("type", None)
    path = spec.pop("path", None)
    if not path:
        raise DataError("params.yaml", "prepare.sources", "path", f"every source needs a path ({spec})")
    if kind not in SOURCE_KEYS:
        raise DataError("params.yaml", "prepare.sources", "type", f"unknown source type {kind!r} (bank, stackexchange, qa)")
    unknown = sorted(set(spec) - SOURCE_KEYS[kind])
    if unknown:
        allowed = ", ".join(["type", "path", *sorted(SOURCE_KEYS[kind])])
        raise DataError("params.yaml", f"prepare.sources ({kind} {path})", unknown[0], f"unknown key; allowed: {allowed}")
    path = root / path
    if path.is_dir():
        raise DataError(path, None, "path", "is a folder; give the file (e.g. .../Posts.xml, a .jsonl or .csv)")
    if kind == "bank":
        return load_bank(path, drops)
    if kind == "stackexchange":
        return load_stackexchange(path, drops, **spec)
    return load_qa(path, drops, **spec)


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


def _order_key(seed: int, rec_id: str) -> str:
    return hashlib.sha256(f"{seed}:{rec_id}".encode()).hexdigest()


def split(records: list[dict], sizes: dict, seed: int, eval_records: list[dict] | None = None) -> dict[str, list[dict]]:
    """Deterministic disjoint split by id. ``eval`` is filled first, then rs, rm, sft, so growing a later
    split never moves questions between earlier ones. ``eval_records`` (an external eval file) replace
    the eval split; their questions are removed from the pool."""
    for name in sizes:
        if name not in SPLITS:
            raise DataError("params.yaml", "prepare.splits", name, f"unknown split (known: {', '.join(SPLITS)})")
    for name in SPLITS:
        n = sizes.get(name, 0)
        if not isinstance(n, int) or n < 0:
            raise DataError("params.yaml", "prepare.splits", name, f"size must be a non-negative integer, not {n!r}")
    pool = sorted(records, key=lambda r: _order_key(seed, r["id"]))
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
