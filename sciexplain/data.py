"""Question sources, cleaning and the deterministic split used by the ``prepare`` stage.

Sources (``prepare.sources`` in params.yaml, a list of {type, path, ...}):
- ``bank``: the project's science question bank, JSONL {id, question, domain}.
- ``stackexchange``: a Stack Exchange data-dump ``Posts.xml`` (PostTypeId 1 = question, 2 = answer).
  The accepted answer (else the top-voted one) with Score >= ``min_score`` is kept as the forum answer.
- ``qa``: CSV or JSONL Q/A files; ``question_field`` / ``answer_field`` / ``domain_field`` name the columns.

Every record gets a stable ``id`` = hash of the normalised question (:func:`sciexplain.records.stable_id`).
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from .records import DataError, normalize_text, read_jsonl_lines, stable_id

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
    for line, rec in read_jsonl_lines(path, required=("question", "domain")):
        if not isinstance(rec["question"], str):
            raise DataError(path, line, "question", f"must be a string, got {type(rec['question']).__name__}")
        out.append(_record(rec["question"], str(rec["domain"]), "bank", None))
    return out


class PostRow(dict):
    """A ``<row>`` of a Posts.xml: its attributes (XML-unescaped) and ``line``, where it starts in the file."""

    line: int | None = None


def _where(row) -> tuple[int | str, str]:
    """(the record an error names: the row's line, else its Id; what to add to the message)."""
    line = getattr(row, "line", None)
    if line is not None:
        return line, f" (row Id={row['Id']})" if row.get("Id") is not None else ""
    return f"row Id={row.get('Id', '?')}", ""


def _int_attr(path, row, name, required=True):
    value = row.get(name)
    where, rid = _where(row)
    if value is None:
        if required:
            raise DataError(path, where, name, f"missing attribute{rid}")
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(path, where, name, f"not an integer: {value!r}{rid}") from None


_NOT_XML = {b"7z\xbc\xaf\x27\x1c": "a 7z archive", b"\x1f\x8b": "a gzip file", b"PK\x03\x04": "a zip archive",
            b"BZh": "a bzip2 file", b"\xfd7zXZ\x00": "an xz file", b"\x28\xb5\x2f\xfd": "a zstd file"}
_CHUNK = 1 << 20


def _line_bytes(path: Path, lineno: int) -> bytes:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if i == lineno:
                return raw
    return b""


def iter_post_rows(path: str | Path):
    """Yield ``(row, post_id, post_type)`` for every ``<row>`` of a data-dump Posts.xml (attributes XML-unescaped,
    Body still HTML; ``row`` is a :class:`PostRow`, which knows its line), streaming. Every row needs integer
    ``Id`` and ``PostTypeId``; a question or answer (PostTypeId 1 or 2) also a ``Body`` and an integer ``Score``,
    an answer an integer ``ParentId``. Anything else -- a missing or empty file, an archive or binary data,
    malformed XML, bytes that are not UTF-8, a DOCTYPE (DTDs and entities, e.g. "billion laughs" or external
    entities, are refused: a dump has none), a root element other than ``<posts>`` -- raises
    :class:`DataError` naming the line and, where one is to blame, the attribute."""
    from xml.parsers import expat

    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, None, "is a folder, not a Posts.xml file")
    if path.stat().st_size == 0:
        raise DataError(path, None, None, "file is empty")
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    pending: list[PostRow] = []
    depth = [0]

    def start(tag, attrs):
        depth[0] += 1
        if depth[0] == 1 and tag != "posts":
            raise DataError(path, parser.CurrentLineNumber, None,
                            f"root element is <{tag}>, not <posts>: is this a Stack Exchange Posts.xml?")
        if depth[0] == 2 and tag == "row":
            row = PostRow(attrs)
            row.line = parser.CurrentLineNumber
            pending.append(row)

    def end(tag):
        depth[0] -= 1

    def doctype(name, *args):
        raise DataError(path, parser.CurrentLineNumber, None, f"a DOCTYPE declaration (<!DOCTYPE {name} ...>): DTDs and "
                        "entity declarations are refused (a Stack Exchange dump has none)")

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = lambda name, *args: doctype(name)
    with open(path, "rb") as f:
        first = True
        while True:
            chunk = f.read(_CHUNK)
            if first:
                first = False
                for magic, what in _NOT_XML.items():
                    if chunk.startswith(magic):
                        raise DataError(path, None, None, f"{what}, not XML: extract the Posts.xml inside it first")
                if b"\x00" in chunk[:4096] and not chunk.startswith((b"\xff\xfe", b"\xfe\xff")):  # not UTF-16
                    line = chunk[:chunk.index(b"\x00")].count(b"\n") + 1
                    raise DataError(path, line, None, "binary data, not XML (a NUL byte)")
            try:
                parser.Parse(chunk, not chunk)
            except expat.ExpatError as e:
                raw = _line_bytes(path, e.lineno)
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as u:
                    if e.code == expat.errors.codes[expat.errors.XML_ERROR_INVALID_TOKEN]:
                        raise DataError(path, e.lineno, None,
                                        f"not valid UTF-8 (byte {u.start + 1} of the line): save the file as UTF-8") from None
                problem = expat.ErrorString(e.code)
                if not chunk and depth[0] > 0:
                    problem = f"{problem}: the file ends before the root element is closed (cut off?)"
                raise DataError(path, e.lineno, None, f"malformed XML at column {e.offset + 1}: {problem}") from None
            for row in pending:
                post_id, kind = _int_attr(path, row, "Id"), _int_attr(path, row, "PostTypeId")
                if kind in (1, 2):
                    if row.get("Body") is None:
                        raise DataError(path, row.line, "Body", f"missing attribute (row Id={post_id})")
                    _int_attr(path, row, "Score")
                    _int_attr(path, row, "ParentId" if kind == 2 else "AcceptedAnswerId", required=kind == 2)
                yield row, post_id, kind
            pending.clear()
            if not chunk:
                return


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
    question_ids = {post_id for _row, post_id, kind in rows if kind == 1}
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
            if parent not in question_ids:  # e.g. a dump cut to a subset: its question is not in the file
                drops.add("answer_without_question")
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


def _csv_rows(path: Path, needed: tuple[str, ...]) -> list[tuple[int, dict]]:
    """``(line, row)`` of a CSV file with a header row (a record's line is where it starts); the ``needed``
    columns must be in the header. Checks encoding, NUL bytes, quoting (strict) and the number of fields."""
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(path, line, None, "not valid UTF-8: save the file as CSV UTF-8") from None
    if "\x00" in text:
        raise DataError(path, text[:text.index("\x00")].count("\n") + 1, None, "a NUL byte: binary data, not CSV text")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, rows, start = None, [], 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = row
                for name in needed:
                    if name not in header:
                        raise DataError(path, line, name, f"missing column (columns: {', '.join(' '.join(c.split()) for c in header)})")
                continue
            if len(row) > len(header):
                raise DataError(path, line, None, f"{len(row)} fields but the header has {len(header)} (an unquoted comma?)")
            if len(row) < len(header):
                raise DataError(path, line, header[len(row)], "missing: the row has fewer fields than the header")
            rows.append((line, dict(zip(header, row))))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataError(path, start, None, "bad CSV: a quote opened here is never closed") from None
        raise DataError(path, reader.line_num, None, f"bad CSV: {e}") from None
    if header is None:
        raise DataError(path, None, None, "file is empty")
    if not rows:
        raise DataError(path, None, None, "file has a header but no rows")
    return rows


def _text_field(path, line, rec: dict, name: str, required: bool) -> str | None:
    value = rec.get(name)
    if value is None and name not in rec and required:
        raise DataError(path, line, name, f"missing (the record has: {', '.join(sorted(rec)) or 'no fields'})")
    if value is not None and not isinstance(value, str):
        raise DataError(path, line, name, f"must be a string, got {type(value).__name__}")
    if required and not (value or "").strip():
        raise DataError(path, line, name, "missing or empty")
    return value


def load_qa(path: str | Path, drops: Drops, question_field: str = "question", answer_field: str | None = "answer",
            domain_field: str | None = None, domain: str | None = None) -> list[dict]:
    """Q/A pairs from CSV (header row) or JSONL; a bad record raises :class:`DataError` naming its line and field."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path, tuple(f for f in (question_field, answer_field, domain_field) if f))
    else:
        rows = read_jsonl_lines(path)
    out = []
    for line, r in rows:
        q = _text_field(path, line, r, question_field, required=True)
        a = _text_field(path, line, r, answer_field, required=False) if answer_field else None
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
        if name not in sizes and not (name == "eval" and eval_records is not None):
            # a missing split once became an empty file that a later stage read as "no questions"
            raise DataError("params.yaml", "prepare.splits", name, "missing split size; every split needs one")
        n = sizes.get(name, 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
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
