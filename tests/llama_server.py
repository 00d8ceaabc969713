"""A real OpenAI-compatible engine for tests: llama.cpp's server (``llama-cpp-python[server]``) on 127.0.0.1.

    with LlamaServer(gguf_path, alias="base") as srv:    # python -m llama_cpp.server on a free port
        srv.base_url                                     # "http://127.0.0.1:PORT/v1"
    with CountingProxy(srv.base_url) as proxy:           # forwards to the server, counts what reaches it
        proxy.base_url
        proxy.calls[(model, last user content, seed)]    # chat completions answered (HTTP 200)
        proxy.texts[key]                                 # the answer texts relayed for that key
        proxy.bodies                                     # every request body forwarded
        proxy.delay = 0.3                                # each chat call waits this long first
        proxy.wait_idle()                                # until no call is in flight

The answers come from llama.cpp itself; the proxy only forwards bytes and counts, so a test can prove that
a resumed run sent no call twice.

What llama.cpp's server (llama-cpp-python 0.3.36) does with the OpenAI request fields, as measured here:
* ``seed`` is honoured per request (it seeds the sampler before the call): another seed, another sample.
  The same seed gives the same text when the prompt is evaluated the same way; the server keeps the KV cache
  of the previous request and reuses its longest common prefix, and a prompt re-used from that cache (the same
  prompt twice in a row) can sample differently from one evaluated afresh. Without a seed, each call's seed is
  drawn from the previous one, so answers depend on the order of calls.
* ``n`` is dropped: one choice per call, so N samples are N calls, each with its own seed.
* Any ``model`` name is answered by the one loaded model; ``--model_alias`` is only what /v1/models lists.
* Calls are served one at a time (one model, one lock); concurrent calls queue.
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from openai_server import LoopbackHTTP


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_cpp_available() -> bool:
    try:
        importlib.import_module("llama_cpp.server.app")  # needs the [server] extra: fastapi, uvicorn, ...
    except Exception:
        return False
    return True


class LlamaServer:
    """``python -m llama_cpp.server`` serving one GGUF under ``alias``; started on enter, stopped on exit."""

    def __init__(self, model: str | os.PathLike, alias: str = "base", *, n_ctx: int = 2048, threads: int | None = None,
                 startup_timeout: float = 120.0, extra_args: list[str] | None = None):
        self.model = Path(model)
        self.alias = alias
        self.n_ctx = n_ctx
        # One thread by default: on a 2-core machine shared with other work, llama.cpp's spinning thread barrier makes
        # 2 threads several times slower than 1 (a 650-token prompt: 74 s vs 18 s, measured here under load).
        self.threads = int(threads or os.environ.get("SCIEXPLAIN_LLAMA_THREADS", 1))
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", self.alias,
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), *self.extra_args]

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> "LlamaServer":
        # No chat_format flag: the server then formats chats with the template stored in the GGUF.
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        # its own session keeps it out of the terminal's Ctrl-C group, so it must be stopped explicitly: by __exit__,
        # or at interpreter exit (a SIGTERM turned into SystemExit, as bench.run does, also reaches this)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200 and any(m.get("id") == self.alias for m in json.load(r).get("data", [])):
                        return self
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer /v1/models within {self.startup_timeout:g}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass


def last_user_content(body: dict) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


class CountingProxy(LoopbackHTTP):
    """A loopback HTTP proxy in front of an OpenAI-compatible server that counts the chat completions it relays."""

    def __init__(self, upstream_base_url: str, timeout: float = 300.0):
        self.upstream = upstream_base_url.rstrip("/")
        self.timeout = timeout
        self.calls: Counter = Counter()  # (model, last user content, seed) -> answered calls
        self.attempts: Counter = Counter()  # same key -> calls received (answered or not)
        self.bodies: list[dict] = []
        self.texts: dict = {}  # same key -> the answer texts relayed, in order
        self.delay = 0.0  # seconds each chat completion waits before it is forwarded
        self.in_flight = 0  # chat completions received and not yet answered
        self.lock = threading.Lock()
        self._start_http()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def repeated(self) -> dict:
        """Keys answered more than once."""
        return {k: v for k, v in self.calls.items() if v > 1}

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Wait until no chat completion is in flight (e.g. the one a killed client left behind)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.in_flight, f"{self.in_flight} calls still in flight after {timeout:g}s"

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.attempts.clear()
            self.bodies.clear()
            self.texts.clear()

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _relay(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else None
                key = None
                if method == "POST" and self.path.rstrip("/").endswith("/chat/completions"):
                    try:
                        body = json.loads(raw or b"{}")
                    except json.JSONDecodeError:
                        body = {}
                    key = (body.get("model"), last_user_content(body), body.get("seed"))
                    with proxy.lock:
                        proxy.bodies.append(body)
                        proxy.attempts[key] += 1
                        proxy.in_flight += 1
                try:
                    self._forward(method, raw, key)
                finally:
                    if key is not None:
                        with proxy.lock:
                            proxy.in_flight -= 1

            def _forward(self, method: str, raw: bytes | None, key) -> None:
                if key is not None and proxy.delay:
                    time.sleep(proxy.delay)
                path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                req = urllib.request.Request(proxy.upstream + path, data=raw, method=method,
                                             headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                try:
                    with urllib.request.urlopen(req, timeout=proxy.timeout) as r:
                        status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/json")
                except urllib.error.HTTPError as e:
                    status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "application/json")
                except (urllib.error.URLError, OSError) as e:
                    status, data, ctype = 502, json.dumps({"error": {"message": f"upstream: {e}"}}).encode(), "application/json"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:  # the client is gone (e.g. the stage was killed): not counted as delivered
                    self.close_connection = True
                    return
                if key is not None and status == 200:
                    try:
                        text = json.loads(data)["choices"][0]["message"]["content"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        text = None
                    with proxy.lock:
                        proxy.calls[key] += 1
                        proxy.texts.setdefault(key, []).append(text)

            def do_GET(self):
                self._relay("GET")

            def do_POST(self):
                self._relay("POST")

        return Handler
