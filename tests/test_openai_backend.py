"""OpenAIBackend against a real local HTTP server (tests/openai_server.py)."""
from __future__ import annotations

import socket
import time
import traceback

import pytest

from openai_server import FakeOpenAIServer, answer_text
from sciexplain.generation import GenRequest, SamplingParams, request_seed
from sciexplain.openai_backend import BackendError, OpenAIBackend

KEY_ENV = "SCIEXPLAIN_TEST_OPENAI_KEY"
KEY = "sk-test-DO-NOT-LEAK-0123456789"


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def make_backend(srv, **kw) -> OpenAIBackend:
    kw.setdefault("api_key_env", KEY_ENV)
    kw.setdefault("retry_base_delay", 0.001)
    kw.setdefault("retry_max_delay", 0.05)
    return OpenAIBackend("teacher-test", base_url=srv.base_url, **kw)


def reqs(n: int, prefix: str = "q") -> list[GenRequest]:
    return [
        GenRequest.from_messages(f"id{i}", [{"role": "system", "content": "Be clear."}, {"role": "user", "content": f"{prefix}{i}"}])
        for i in range(n)
    ]


def test_success_forwards_params_and_keeps_order(server):
    sampling = SamplingParams(max_new_tokens=77, temperature=0.7, top_p=0.9, seed=5)
    requests = reqs(6)
    seen = []
    out = make_backend(server, max_concurrency=3).generate(requests, sampling, on_result=lambda i, r: seen.append(i))
    assert [r.id for r in out] == [f"id{i}" for i in range(6)]
    for i, r in enumerate(out):
        assert r.text == f"Explanation of q{i} (seed {request_seed(5, f'id{i}', 0)})"  # a seed per request
        assert r.finished is True
        assert r.prompt_tokens == 3 and r.completion_tokens == 5
    assert sorted(seen) == list(range(6))
    body = server.bodies[0]
    assert body["model"] == "teacher-test"
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (77, 0.7, 0.9)
    assert sorted(b["seed"] for b in server.bodies) == sorted(request_seed(5, f"id{i}", 0) for i in range(6))
    assert body["messages"][0] == {"role": "system", "content": "Be clear."}
    assert set(server.auth) == {f"Bearer {KEY}"}
    assert all(server.served[f"q{i}"] == 1 for i in range(6))


def test_length_finish_is_not_finished(server):
    server.finish_reason = "length"
    (r,) = make_backend(server).generate(reqs(1), SamplingParams())
    assert r.finished is False and r.extra["finish_reason"] == "length"


def test_concurrency_is_bounded(server):
    server.delay = 0.15
    t0 = time.monotonic()
    make_backend(server, max_concurrency=3).generate(reqs(9), SamplingParams())
    assert server.max_in_flight == 3
    assert time.monotonic() - t0 < 9 * 0.15  # really concurrent


def test_429_then_success(server):
    server.fail_first = 2  # each content: two 429s, then an answer
    out = make_backend(server, max_retries=3).generate(reqs(3), SamplingParams())
    assert [r.text for r in out] == [answer_text({"messages": [{"role": "user", "content": f"q{i}"}],
                                                  "seed": request_seed(0, f"id{i}", 0)}) for i in range(3)]
    assert all(server.attempts[f"q{i}"] == 3 for i in range(3))
    assert all(server.served[f"q{i}"] == 1 for i in range(3))


def test_429_more_than_retries_fails(server):
    server.fail_first = 5
    with pytest.raises(BackendError, match="after 3 attempts: last error HTTP 429"):
        make_backend(server, max_retries=2).generate(reqs(1), SamplingParams())


def test_500_forever_clear_error(server):
    server.always_status = 500
    t0 = time.monotonic()
    with pytest.raises(BackendError) as ei:
        make_backend(server, max_retries=3).generate(reqs(2), SamplingParams())
    msg = str(ei.value)
    assert "HTTP 500" in msg and "after 4 attempts" in msg and "\n" not in msg
    assert server.attempts["q0"] == 4 or server.attempts["q1"] == 4
    assert time.monotonic() - t0 < 5


def test_timeout_is_retried(server):
    server.slow_first = (1, 1.0)
    (r,) = make_backend(server, timeout=0.3).generate(reqs(1), SamplingParams())
    assert r.text.startswith("Explanation of q0")
    assert server.attempts["q0"] == 2


def test_connection_error_is_retried_then_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    backend = OpenAIBackend(
        "m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, max_retries=2, retry_base_delay=0.001
    )
    with pytest.raises(BackendError, match="after 3 attempts: last error connection error"):
        backend.generate(reqs(1), SamplingParams())


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_is_immediate_and_never_shows_the_key(server, status):
    server.always_status = status  # the 401 body quotes the key, like the real API
    with pytest.raises(BackendError) as ei:
        make_backend(server).generate(reqs(3), SamplingParams())
    msg = str(ei.value)
    assert f"HTTP {status}" in msg and KEY_ENV in msg and "\n" not in msg
    shown = "".join(traceback.format_exception(ei.value))
    assert KEY not in shown and KEY[:12] not in shown
    assert KEY not in repr(make_backend(server))
    assert sum(server.attempts.values()) <= 3  # no retries: at most one call per request


def test_other_4xx_is_not_retried(server):
    server.always_status = 400
    with pytest.raises(BackendError, match="HTTP 400"):
        make_backend(server, max_retries=5).generate(reqs(1), SamplingParams())
    assert server.attempts["q0"] == 1


def test_missing_key_clear_error(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    backend = make_backend(server)  # constructing needs no key (cached runs work offline) ...
    with pytest.raises(BackendError) as ei:  # ... calling does
        backend.generate(reqs(1), SamplingParams())
    assert str(ei.value).startswith(f"{KEY_ENV} is not set: export it")
    assert "\n" not in str(ei.value)
    assert sum(server.attempts.values()) == 0


@pytest.mark.parametrize("env", [None, "none", "null", "NONE"])
def test_no_key_for_local_server(server, monkeypatch, env):
    monkeypatch.delenv(KEY_ENV)
    (r,) = make_backend(server, api_key_env=env).generate(reqs(1), SamplingParams())
    assert r.text.startswith("Explanation of q0")
    assert server.auth == ["Bearer sk-no-key-required"]


def test_no_key_needs_base_url():
    with pytest.raises(BackendError, match="needs a key"):
        OpenAIBackend("gpt-x", base_url=None, api_key_env=None)


def test_failure_reports_finished_calls_and_starts_no_new_ones(server):
    server.fail_contents = {"q0"}
    server.delay = 0.05
    got = {}
    with pytest.raises(BackendError, match="id0"):
        make_backend(server, max_concurrency=2, max_retries=1).generate(
            reqs(20), SamplingParams(), on_result=lambda i, r: got.setdefault(i, r)
        )
    assert len(got) == server.total_served  # every answered call was handed over
    assert server.total_served < 19  # the queue was not drained after the failure


@pytest.mark.parametrize("value", ["sk-proj-abcdefghijklmnopqrstuvwxyz0123456789", "sk-abc.def", "key with spaces"])
def test_a_key_given_as_the_variable_name_is_never_echoed(value):
    with pytest.raises(BackendError) as e:
        OpenAIBackend("gpt-x", base_url=None, api_key_env=value)
    assert value not in str(e.value) and "looks like an API key" in str(e.value)


MALFORMED = [b"not json", b'{"choices": "x"}', b'{"choices": [{}]}', b'[1, 2]',
             b'{"choices": [{"message": {"content": 5}, "finish_reason": "stop"}]}',
             b'{"choices": [{"message": null, "finish_reason": "stop"}]}',
             b'{"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": "x"}}']


@pytest.fixture(scope="module")
def raw_server():
    """A real HTTP server on 127.0.0.1 that answers every POST with 200 and the body in ``state['body']``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"body": b"{}"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = state["body"]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield state
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("body", MALFORMED)
def test_a_malformed_200_reply_is_one_clear_line(raw_server, body):
    raw_server["body"] = body
    backend = OpenAIBackend("m", base_url=raw_server["url"], api_key_env=None, max_retries=0)
    with pytest.raises(BackendError) as e:
        backend.generate(reqs(1), SamplingParams())
    msg = str(e.value)
    assert "\n" not in msg and raw_server["url"] in msg and "'id0'" in msg


def test_repetition_penalty_goes_in_the_body_only_when_on(server):
    """Not an OpenAI API field: sent (as vLLM's and llama.cpp's names) only when set; the Batch API refuses it."""
    from sciexplain.batch_api import request_body
    from sciexplain.records import UserError

    be = make_backend(server)
    be.generate(reqs(1), SamplingParams(max_new_tokens=5))
    assert "repetition_penalty" not in server.bodies[-1] and "repeat_penalty" not in server.bodies[-1]
    be.generate(reqs(1, prefix="r"), SamplingParams(max_new_tokens=5, repetition_penalty=1.1))
    assert server.bodies[-1]["repetition_penalty"] == 1.1 and server.bodies[-1]["repeat_penalty"] == 1.1
    assert "repetition_penalty" not in request_body(reqs(1)[0], SamplingParams(), "m")
    with pytest.raises(UserError, match="repetition_penalty 1.1 is not an OpenAI Batch API field"):
        request_body(reqs(1)[0], SamplingParams(repetition_penalty=1.1), "m")
