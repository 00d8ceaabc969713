"""Local web page for blind A/B annotation, one item at a time, for one annotator of several.

    python -m sciexplain.annotate_web --sheet data/compare/base_vs_sft/sheet.jsonl \\
        --out data/annotations/base_vs_sft/alice.jsonl [--host 127.0.0.1] [--port 8765]

    # several annotators: each gets their share of the sheet, a chosen share seen by everyone
    python -m sciexplain.annotate_web --sheet data/compare/base_vs_sft/sheet.jsonl \\
        --annotator alice --annotators alice,bob,carol,dave --overlap 0.25
    # --out defaults to data/annotations/<the sheet's folder>/<annotator>.jsonl

Assignment (:func:`assign_items`), deterministic from the item ids, the set of annotator names and
``--assign-seed`` only: items are ranked by a hash of (seed, item id); the first ``ceil(overlap * N)`` of
that ranking are the *overlap* items, assigned to **every** annotator (so agreement can be measured on
them: Fleiss' kappa on the items everyone rated, Krippendorff's alpha on every item two or more rated);
the rest are dealt round-robin in ranking order to the annotators sorted by name, so each item is seen by
at least one annotator and shares differ by at most one item. Every annotator who runs the page with the
same sheet, names, overlap and seed gets the same split, on any machine. The page shows the annotator's
own items only, with progress as done / assigned; a vote on an item not assigned to them is refused.

The server only ever reads the sheet (never the key) and serves the four sheet fields and each item's
``item_hash`` (:func:`sciexplain.sheets.item_hash` of the question and the answers in their A/B order).
The page sends the hash of what it showed with every vote and the server stores it in the row, so a vote
counts only while the sheet is unchanged; a vote for an older version of an item (a page loaded before the
sheet changed, or a sheet rewritten on disk while the server runs) is refused with 409. Answers
are untrusted text: the page sets them with ``textContent`` from the JSON API, never as HTML,
and every response carries a strict Content-Security-Policy (no inline script or style).

Each saved answer is written to the annotator's file at once, atomically and fsynced
(:func:`sciexplain.annotation_store.append_annotation`), saves serialised by a lock. The server holds the file's
:class:`sciexplain.annotation_store.AnnotationLock` for its whole life, so a second server on the same file refuses
to start; temp files go to :func:`sciexplain.annotation_store.work_dir` (outside ``data/annotations``, a DVC
dependency), and a start removes the ones a killed server left. Rows of the file made on another version of
the sheet (stale) are not shown as answered; answering the item again replaces them.

Hardening: a 30 s socket timeout per connection (a stalled client never holds a thread for long), a 64 KiB
body cap, a clean 400 for any malformed body (too deeply nested JSON included), ``--host ::1`` (IPv6).

Routes: ``GET /`` page, ``GET /app.js``, ``GET /app.css`` (the files of ``sciexplain/static/annotate/``, a fixed
route table, read once at start: no request path reaches the file system), ``GET /api/items`` (this annotator's
items, the ``strengths`` scale the page builds its buttons from, and ``assignment``: annotator, annotators,
overlap, overlap_items, sheet_items, assigned),
``GET /api/annotations`` (this annotator's answers on the current sheet), ``POST /api/annotate``
``{item_id, item_hash, choice, strength, comment}`` -> 400 with ``{"error": message}`` on bad input, 409 when the
hash is not the current sheet's.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import click

from sciexplain.annotation_store import AnnotationLock, append_annotation
from sciexplain.annotations import STRENGTHS, load_annotations
from sciexplain.sheets import HASH_FIELD, SHEET_FIELDS, read_sheet, sheet_hashes
from sciexplain.records import DataError, UserError

MAX_BODY = 64 * 1024
MAX_COMMENT = 4000
SOCKET_TIMEOUT = 30.0  # seconds a connection may stall before the server drops it
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

#: The page's own files, next to this module (``sciexplain/static/annotate/``).
STATIC_DIR = Path(__file__).resolve().parent / "static" / "annotate"
#: The only files the server serves, by route; no route maps a request path onto the file system.
STATIC_ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}


def load_static(directory: str | Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """``{route: (body, content type)}`` for :data:`STATIC_ROUTES`, read once when a server is made.
    UserError naming the file when one is missing or unreadable (an incomplete checkout or install)."""
    assets = {}
    for route, (name, ctype) in STATIC_ROUTES.items():
        path = Path(directory) / name
        try:
            assets[route] = (path.read_bytes(), ctype)
        except OSError as e:
            raise UserError(f"annotation page file {path} cannot be read: {e.strerror or e} "
                            "(the sciexplain checkout is incomplete)") from None
    return assets


def _rank(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"sciexplain-assign:{seed}:{item_id}".encode("utf-8")).hexdigest()


def assign_items(item_ids: list[str], annotators: list[str], overlap: float, seed: int = 0) -> dict:
    """Who rates what (see the module docstring): ``{"assigned": {annotator: [item ids in sheet order]},
    "overlap": [ids every annotator rates], "annotators": sorted names}``."""
    names = sorted(set(annotators))
    if not names or any(not n.strip() for n in names) or len(names) != len(annotators):
        raise ValueError(f"annotators must be distinct non-empty names, got {annotators!r}")
    if not 0.0 <= float(overlap) <= 1.0:
        raise ValueError(f"overlap must be between 0 and 1, got {overlap!r}")
    ranked = sorted(item_ids, key=lambda i: (_rank(seed, i), i))
    n_overlap = min(len(ranked), math.ceil(float(overlap) * len(ranked) - 1e-9)) if len(names) > 1 else len(ranked)
    shared = set(ranked[:n_overlap])
    owner = {i: names[k % len(names)] for k, i in enumerate(ranked[n_overlap:])}
    assigned = {n: [i for i in item_ids if i in shared or owner.get(i) == n] for n in names}
    return {"assigned": assigned, "overlap": [i for i in item_ids if i in shared], "annotators": names}


class Conflict(UserError):
    """A vote for another version of the sheet than the current one (HTTP 409)."""


class AnnotationApp:
    """State behind the server: the sheet (no key), this annotator's share of it, and their file (locked)."""

    def __init__(self, sheet_path: str | Path, out_path: str | Path, annotator: str | None = None,
                 annotators: list[str] | None = None, overlap: float = 0.25, seed: int = 0):
        self.sheet_path, self.out_path = Path(sheet_path), Path(out_path)
        if self.out_path.suffix != ".jsonl":
            raise DataError(self.out_path, None, None, "the annotation file must end in .jsonl")
        # the four shown fields + the hash of what is shown (a sheet's finished flags are for the judges, not people)
        sheet = read_sheet(self.sheet_path)
        self._sheet_stat = self._stat_sheet()
        self.sheet = [{**{f: it[f] for f in SHEET_FIELDS}, HASH_FIELD: it[HASH_FIELD]} for it in sheet]
        self.hashes = sheet_hashes(self.sheet)
        self.sheet_ids = [it["item_id"] for it in self.sheet]
        self.annotator = annotator or self.out_path.stem
        self.assignment = {"annotator": self.annotator, "annotators": [self.annotator], "overlap": None,
                           "overlap_items": 0, "sheet_items": len(self.sheet), "assigned": len(self.sheet), "seed": seed}
        if annotators:
            if self.annotator not in annotators:
                raise DataError(None, None, "annotators", f"{self.annotator!r} is not one of {annotators}")
            plan = assign_items(self.sheet_ids, annotators, overlap, seed)
            mine = set(plan["assigned"][self.annotator])
            self.items = [it for it in self.sheet if it["item_id"] in mine]
            self.assignment.update(annotators=plan["annotators"], overlap=float(overlap),
                                   overlap_items=len(plan["overlap"]), assigned=len(self.items))
        else:
            self.items = list(self.sheet)
        self.ids = [it["item_id"] for it in self.items]
        self.lock = threading.Lock()  # saves inside this server, one at a time
        self.file_lock = AnnotationLock(self.out_path)  # other processes: one writer per file
        try:
            self.stale = []
            if self.out_path.exists():  # fail early on a broken, foreign or hash-less file
                self.stale = load_annotations(self.out_path, self.hashes, sheet_path=self.sheet_path).stale
        except BaseException:
            self.close()
            raise

    @property
    def cleaned(self) -> list[Path]:
        """Temp files a crashed server had left, removed at this start."""
        return self.file_lock.cleaned

    def close(self) -> None:
        self.file_lock.release()

    def _stat_sheet(self):
        st = os.stat(self.sheet_path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _check_sheet_on_disk(self, item_id: str) -> None:
        """Refuse a vote when the sheet file was rewritten since the start and this item is shown differently."""
        try:
            now = self._stat_sheet()
        except OSError:
            raise Conflict(f"{self.sheet_path} is gone since this server started: restart it") from None
        if now == self._sheet_stat:
            return
        try:
            disk = sheet_hashes(read_sheet(self.sheet_path))
        except DataError as e:
            raise Conflict(f"{self.sheet_path} changed since this server started and cannot be read ({e}): "
                           "restart the server") from None
        if disk.get(item_id) != self.hashes[item_id]:
            raise Conflict(f"{self.sheet_path} changed on disk since this server started (item {item_id!r} now shows "
                           "other answers or another A/B order): restart the server and reload the page")

    def annotations(self) -> dict:
        with self.lock:
            if not self.out_path.exists():
                return {}
            found = load_annotations(self.out_path, self.hashes, sheet_path=self.sheet_path).annotations
        return {k: {"choice": a.choice, "strength": a.strength, "comment": a.comment} for k, a in found.items()}

    def annotate(self, record) -> dict:
        if isinstance(record, dict) and isinstance(record.get("comment"), str) and len(record["comment"]) > MAX_COMMENT:
            raise DataError(None, None, "comment", f"longer than {MAX_COMMENT} characters")
        item = record.get("item_id") if isinstance(record, dict) else None
        item = item.strip() if isinstance(item, str) else None
        if item in self.hashes and item not in self.ids:
            raise DataError(None, None, "item_id", f"item {item!r} is not assigned to {self.annotator!r}")
        shown = record.get(HASH_FIELD) if isinstance(record, dict) else None
        if item in self.hashes and isinstance(shown, str) and shown.strip() and shown.strip() != self.hashes[item]:
            raise Conflict(f"item {item!r} was shown as {shown.strip()!r}, the sheet now holds {self.hashes[item]!r}: "
                           "reload the page")
        with self.lock:
            if item in self.hashes:
                self._check_sheet_on_disk(item)
            rec = append_annotation(self.out_path, record, {i: self.hashes[i] for i in self.ids},
                                    tmp_dir=self.file_lock.tmp_dir)
        return rec


class Handler(BaseHTTPRequestHandler):
    server_version = "sciexplain-annotate"
    sys_version = ""
    app: AnnotationApp  # set on the subclass by make_server
    assets: dict[str, tuple[bytes, str]] = {}  # load_static(), set on the subclass by make_server
    quiet = False
    timeout = SOCKET_TIMEOUT  # socket timeout of every connection (StreamRequestHandler.setup applies it)

    def log_message(self, format, *args):  # noqa: A002
        if not self.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        """Against DNS rebinding: a loopback-bound server answers only loopback Host names."""
        if self.server.server_address[0] not in LOOPBACK:
            return True
        host = self.headers.get("Host", "")
        name = urlsplit("//" + host).hostname or ""
        return name in LOOPBACK

    def do_GET(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        route = urlsplit(self.path).path
        if route in self.assets:
            self._send(200, *self.assets[route])
        elif route == "/api/items":
            self._json(200, {"items": self.app.items, "strengths": list(STRENGTHS), "assignment": self.app.assignment})
        elif route == "/api/annotations":
            try:
                self._json(200, {"annotations": self.app.annotations()})
            except DataError as e:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        if urlsplit(self.path).path != "/api/annotate":
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        # A JSON content type cannot be sent cross-site without a CORS preflight, which we never grant.
        if self.headers.get_content_type() != "application/json":
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if length < 0 or length > MAX_BODY:
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            return self._error(HTTPStatus.BAD_REQUEST, "body shorter than its Content-Length")
        try:
            record = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return self._error(HTTPStatus.BAD_REQUEST, f"invalid JSON: {e}")
        except RecursionError:
            return self._error(HTTPStatus.BAD_REQUEST, "invalid JSON: nested too deeply")
        try:
            rec = self.app.annotate(record)
        except Conflict as e:
            return self._error(HTTPStatus.CONFLICT, str(e))
        except DataError as e:
            # A request error names no file; a problem with the annotation file itself is a server error.
            status = HTTPStatus.BAD_REQUEST if e.path is None else HTTPStatus.INTERNAL_SERVER_ERROR
            return self._error(status, str(e))
        except RecursionError:
            return self._error(HTTPStatus.BAD_REQUEST, "record nested too deeply")
        except OSError as e:  # disk full, permissions: not saved, and the page says so
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save to {self.app.out_path}: "
                               f"{e.strerror or e}")
        self._json(200, {"ok": True, "record": {k: rec[k] for k in ("choice", "strength", "comment")},
                         "item_id": rec["item_id"]})


class AnnotationServer(ThreadingHTTPServer):
    """Threads per connection (daemonic); an unexpected error in one request is one line on stderr, not a
    traceback; closing the server releases the annotation file's lock."""

    daemon_threads = True
    app: AnnotationApp
    quiet = False

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if not self.quiet and not isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"annotate: request from {client_address[0]} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    def server_close(self) -> None:
        try:
            super().server_close()
        finally:
            self.app.close()


class AnnotationServer6(AnnotationServer):
    address_family = socket.AF_INET6


def make_server(sheet: str | Path, out: str | Path, host: str = "127.0.0.1", port: int = 8765,
                quiet: bool = False, annotator: str | None = None, annotators: list[str] | None = None,
                overlap: float = 0.25, seed: int = 0, timeout: float = SOCKET_TIMEOUT) -> AnnotationServer:
    """A ready (not yet serving) server; port 0 picks a free port (see ``server.server_address``); an IPv6
    ``host`` (``::1``) gets an IPv6 server. ``annotators`` (with ``annotator`` among them): serve only
    ``annotator``'s share (:func:`assign_items`). Takes the out file's lock (UserError when another server holds
    it) until ``server_close()``; ``timeout``: seconds a connection may stall."""
    assets = load_static()
    app = AnnotationApp(sheet, out, annotator, annotators, overlap, seed)
    handler = type("BoundHandler", (Handler,), {"app": app, "assets": assets, "quiet": quiet, "timeout": timeout})
    cls = AnnotationServer6 if ":" in host else AnnotationServer
    try:
        server = cls((host, port), handler)
    except BaseException:
        app.close()
        raise
    server.app = app
    server.quiet = quiet
    return server


@click.command()
@click.option("--sheet", required=True, type=click.Path(exists=True, dir_okay=False), help="sheet.jsonl (no key)")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="this annotator's file, data/annotations/<pair>/<annotator>.jsonl "
                   "(default with --annotator: <annotations-root>/<the sheet's folder>/<annotator>.jsonl)")
@click.option("--annotator", default=None, help="who is annotating (default: the --out file's stem)")
@click.option("--annotators", default=None,
              help="comma-separated names of everyone annotating this sheet: each gets their share (see --overlap)")
@click.option("--overlap", default=0.25, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="with --annotators: the share of items every annotator rates (for agreement)")
@click.option("--assign-seed", default=0, show_default=True, type=int, help="with --annotators: seeds the item hash")
@click.option("--annotations-root", default="data/annotations", show_default=True, help="where --out goes by default")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
def main(sheet: str, out: str | None, annotator: str | None, annotators: str | None, overlap: float, assign_seed: int,
         annotations_root: str, host: str, port: int) -> None:
    """Serve the blind A/B annotation page for one annotator."""
    names = [n.strip() for n in annotators.split(",")] if annotators else None
    if names and annotator is None:
        raise click.BadParameter("name yourself with --annotator (one of --annotators)", param_hint="--annotator")
    if out is None:
        if annotator is None:
            raise click.BadParameter("give --out or --annotator", param_hint="--out")
        out = str(Path(annotations_root) / Path(sheet).resolve().parent.name / f"{annotator}.jsonl")
    if annotator is not None and Path(out).stem != annotator:
        raise click.BadParameter(f"the file name is the annotator's name: expected {annotator}.jsonl", param_hint="--out")
    if Path(out).stem.startswith("judge-"):
        raise click.BadParameter("names starting with 'judge-' are reserved for LLM judges", param_hint="--out")
    try:
        server = make_server(sheet, out, host, port, annotator=annotator, annotators=names, overlap=overlap,
                             seed=assign_seed)
    except (UserError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    h, p = server.server_address[:2]
    shown = f"[{h}]" if ":" in h else h
    a = server.app.assignment
    share = (f" ({a['assigned']} of {a['sheet_items']} sheet items; {a['overlap_items']} shared by all "
             f"{len(a['annotators'])} annotators)" if names else "")
    click.echo(f"Annotating {len(server.app.items)} items as '{Path(out).stem}'{share} -> {out}")
    for path in server.app.cleaned:
        click.echo(f"removed {path}, left by a server that did not stop cleanly", err=True)
    if server.app.stale:
        click.echo(f"warning: {len(server.app.stale)} answers in {out} were given on another version of the sheet "
                   "(other answers or A/B order): they do not count and show as not annotated; answer them again",
                   err=True)
    click.echo(f"Open http://{shown}:{p}/   (Ctrl+C to stop)")
    if host not in LOOPBACK:
        click.echo("warning: listening beyond this machine; anyone who can reach it can annotate", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
