"""A real local HTTP server that speaks enough of the OpenAI chat completions API for tests.

    with FakeOpenAIServer() as srv:          # 127.0.0.1, a free port
        srv.base_url                         # "http://127.0.0.1:PORT/v1"
        srv.fail_first = 2                   # each distinct content: first 2 calls get 429
        srv.always_status = 500              # every call gets 500 (or 401 / 403 / 400 ...)
        srv.fail_contents = {"q3"}           # calls whose last user content is "q3" get 500
        srv.delay = 0.5                      # every answered call waits this long first
        srv.jitter = 0.2                     # ... plus 0-0.2 s, fixed per (content, seed): calls do not finish in step
        srv.slow_first = (1, 0.5)            # each content: first call waits 0.5 s (for timeouts)
        srv.gate_after = 3                   # only 3 calls are let through; later calls block until
        srv.open_gate(drop=True)             # released; drop=True closes them with no answer
        srv.reply = lambda body: "Verdict: A"  # the answer text (default: answer_text(body))
        srv.served["q1"]                     # calls that got a 200 answer, per last user content
        srv.attempts["q1"]                   # all calls, per content
        srv.calls[("q1", seed)]              # all calls, per (content, seed): tells N samples of one prompt apart
        srv.served_calls[("q1", seed)]       # calls that got a 200 answer, per (content, seed)
        srv.bodies, srv.auth                 # every request body / Authorization header seen
        srv.max_in_flight                    # most calls in their delay at the same time
        srv.wait_idle()                      # until no call is being handled (e.g. after its client was killed)

The answer is deterministic (see :func:`completion_for`), so tests (and a simulated Batch API
output) can predict it. Content is the key for counting: tests use distinct contents.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def last_user_content(body: dict) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


def call_key(body: dict) -> tuple[str, object]:
    """(last user content, seed): what one distinct call asks for."""
    return last_user_content(body), body.get("seed")


def answer_text(body: dict) -> str:
    return f"Explanation of {last_user_content(body)} (seed {body.get('seed')})"


def verdict_reply(body: dict) -> str:
    """A judge's reply (use as ``srv.reply``): reasoning unique to the call, then a verdict line, fixed per
    (content, seed)."""
    h = hashlib.sha256(json.dumps(call_key(body)).encode()).hexdigest()
    side = "AB"[int(h[0], 16) % 2]
    strength = ("Significantly better", "Better", "Slightly better")[int(h[1], 16) % 3]
    return f"I compared both answers ({h[:16]}).\nVerdict: {side}, Strength: {strength}"


def completion_for(body: dict, finish_reason: str = "stop", text: str | None = None) -> dict:
    """The chat.completion object the server returns for a request body (``text``: default :func:`answer_text`)."""
    text = answer_text(body) if text is None else text
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1700000000,
        "model": body.get("model", "test-model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt_tokens + len(text.split()),
        },
    }


class LoopbackHTTP:
    """An HTTP server on 127.0.0.1 (a free port) run in a thread by ``with``; subclasses give ``_handler_class``."""

    def _start_http(self) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, client_address: None  # clients that hang up: not our problem
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class FakeOpenAIServer(LoopbackHTTP):
    def __init__(self):
        self.fail_first = 0
        self.fail_status = 429
        self.retry_after = "0.01"
        self.always_status: int | None = None
        self.fail_contents: set[str] = set()  # these contents always get 500
        self.in_flight = 0
        self.active = 0  # requests being handled (read, delayed, answered)
        self.max_in_flight = 0  # most calls handled at the same time
        self.delay = 0.0
        self.jitter = 0.0
        self.slow_first: tuple[int, float] | None = None
        self.finish_reason = "stop"
        self.reply = None  # callable(body) -> answer text; None: answer_text(body)
        self.gate_after: int | None = None
        self._gate = threading.Event()
        self._drop = False
        self.admitted = 0  # calls let through the gate
        self.served: Counter = Counter()
        self.attempts: Counter = Counter()
        self.calls: Counter = Counter()  # per (content, seed)
        self.served_calls: Counter = Counter()  # per (content, seed)
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self._start_http()

    @property
    def total_served(self) -> int:
        return sum(self.served.values())

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Return once no request is being handled (a call whose client died is still answered into the void)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.active == 0:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"the fake OpenAI server still handles {self.active} requests after {timeout:g}s")

    def open_gate(self, drop: bool = False) -> None:
        self._drop = drop
        self._gate.set()

    def __exit__(self, *exc) -> None:
        self.open_gate(drop=True)
        super().__exit__(*exc)

    # -- request handling ----------------------------------------------------------------------
    def _decide(self, body: dict, auth: str) -> tuple[int, dict, dict, float]:
        """(status, json body, extra headers, delay) for one call; counts it."""
        content = last_user_content(body)
        with self.lock:
            self.attempts[content] += 1
            self.calls[call_key(body)] += 1
            n = self.attempts[content]
            self.bodies.append(body)
        delay = self.delay
        if self.jitter:
            h = hashlib.sha256(json.dumps(call_key(body)).encode()).digest()
            delay += self.jitter * int.from_bytes(h[:4], "big") / 2**32
        if self.slow_first and n <= self.slow_first[0]:
            delay = max(delay, self.slow_first[1])
        if content in self.fail_contents:
            return 500, _error(500, auth), {}, delay
        if self.always_status is not None:
            return self.always_status, _error(self.always_status, auth), {}, delay
        if n <= self.fail_first:
            headers = {"Retry-After": self.retry_after} if self.fail_status == 429 else {}
            return self.fail_status, _error(self.fail_status, auth), headers, delay
        text = self.reply(body) if self.reply is not None else None
        return 200, completion_for(body, self.finish_reason, text), {}, delay

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                with server.lock:
                    server.active += 1
                try:
                    self._post()
                finally:
                    with server.lock:
                        server.active -= 1

            def _post(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(400, {"error": {"message": "bad JSON", "type": "invalid_request_error"}})
                auth = self.headers.get("Authorization") or ""
                with server.lock:
                    server.auth.append(auth)
                    gated = server.gate_after is not None and server.admitted >= server.gate_after
                    server.admitted += 0 if gated else 1
                if gated:
                    server._gate.wait()
                    if server._drop:  # hang up without an answer (not counted as served)
                        with server.lock:
                            server.attempts[last_user_content(body)] += 1
                            server.calls[call_key(body)] += 1
                        self.close_connection = True
                        return
                status, payload, headers, delay = server._decide(body, auth)
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if delay:
                        time.sleep(delay)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if self._send(status, payload, headers) and status == 200:
                    with server.lock:
                        server.served[last_user_content(body)] += 1
                        server.served_calls[call_key(body)] += 1

            def _send(self, status, payload, headers=None) -> bool:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except OSError:  # the client hung up (e.g. it timed out)
                    self.close_connection = True
                    return False

        return Handler


def _error(status: int, auth: str) -> dict:
    if status == 401:
        # Like the real API, the message quotes the key it got: the client must not pass it on.
        key = auth.removeprefix("Bearer ")
        return {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error", "code": "invalid_api_key"}}
    if status == 429:
        return {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    return {"error": {"message": f"Server error {status}", "type": "server_error", "code": None}}
