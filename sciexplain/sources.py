"""Question sources read by the ``prepare`` stage, each as records with a stable ``id``.

Sources (``prepare.sources`` in params.yaml, a list of {type, path, ...}):
- ``bank``: the project's science question bank, JSONL {id, question, domain}.
- ``stackexchange``: a Stack Exchange data-dump ``Posts.xml`` (PostTypeId 1 = question, 2 = answer).
  The accepted answer (else the top-voted one) with Score >= ``min_score`` is kept as the forum answer.
- ``qa``: CSV or JSONL Q/A files; ``question_field`` / ``answer_field`` / ``domain_field`` name the columns.

Every record gets a stable ``id`` = hash of the normalised question (:func:`sciexplain.records.stable_id`).
"""
from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

from .markup import UnsafeHTML, clean_text, html_to_text
from .records import DataError, Drops, read_csv_table, read_jsonl_lines, stable_id

MAX_BODY_CHARS = 100_000  # a post body longer than this is dropped and counted (a dump's longest are ~60k)
MAX_TITLE_CHARS = 1_000


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


def int_attr(path, row, name, required=True):
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
                post_id, kind = int_attr(path, row, "Id"), int_attr(path, row, "PostTypeId")
                if kind in (1, 2):
                    if row.get("Body") is None:
                        raise DataError(path, row.line, "Body", f"missing attribute (row Id={post_id})")
                    int_attr(path, row, "Score")
                    int_attr(path, row, "ParentId" if kind == 2 else "AcceptedAnswerId", required=kind == 2)
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
            parent = int_attr(path, row, "ParentId")
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
            accepted = int_attr(path, row, "AcceptedAnswerId", required=False)
            best = next((a for a in cands if int(a["Id"]) == accepted), None)
            if best is None or int_attr(path, best, "Score") < min_score:
                ranked = sorted(cands, key=lambda a: (-int_attr(path, a, "Score"), int(a["Id"])))
                best = ranked[0] if ranked else None
            if best is not None and int_attr(path, best, "Score") < min_score:
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
    header, rows = read_csv_table(path, needed)
    out = []
    for line, row in rows:
        if len(row) > len(header):
            raise DataError(path, line, None, f"{len(row)} fields but the header has {len(header)} (an unquoted comma?)")
        if len(row) < len(header):
            raise DataError(path, line, header[len(row)], "missing: the row has fewer fields than the header")
        out.append((line, dict(zip(header, row))))
    return out


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


def _source_keys() -> dict[str, set]:
    from .params_schema import BankSource, QASource, StackExchangeSource

    return {kind: set(model.model_fields) - {"type", "path"}
            for kind, model in (("bank", BankSource), ("stackexchange", StackExchangeSource), ("qa", QASource))}


SOURCE_KEYS = _source_keys()  # each source type's optional keys, as the schema declares them


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
