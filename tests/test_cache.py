"""Response cache: keys, durability, torn lines, resume without duplicate calls."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openai_server import FakeOpenAIServer
from sciexplain import cache as cache_mod
from sciexplain.cache import ResponseCache, cache_key, generate_cached
from sciexplain.generation import GenRequest, GenResult, SamplingParams, request_seed
from sciexplain.records import DataError
from sciexplain.openai_backend import BackendError, OpenAIBackend

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "SCIEXPLAIN_TEST_OPENAI_KEY"
KEY = "sk-test-cache-SECRET-987"


class CountingBackend:
    """A plain Backend (no on_result): answers in chunks, counts every call, can fail on a given chunk."""

    name = "fake"

    def __init__(self, model="fake-model", fail_on_chunk=None):
        self.model = model
        self.calls: dict[tuple, int] = {}
        self.chunks = 0
        self.fail_on_chunk = fail_on_chunk

    def generate(self, requests, sampling):
        self.chunks += 1
        if self.chunks == self.fail_on_chunk:
            raise RuntimeError("simulated crash")
        out = []
        for r in requests:
            self.calls[r.messages] = self.calls.get(r.messages, 0) + 1
            out.append(GenResult(r.id, r.sample, f"answer to {r.messages[-1][1]} #{r.sample}", 3, 4, r.sample % 2 == 0))
        return out


def reqs(n, prefix="q", samples=1):
    return [
        GenRequest.from_messages(f"id{i}", [{"role": "user", "content": f"{prefix}{i}"}], sample=s)
        for i in range(n)
        for s in range(samples)
    ]


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


# -- keys ------------------------------------------------------------------------------------------
BASE_REQ = GenRequest.from_messages("a", [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
BASE_SP = SamplingParams(max_new_tokens=100, temperature=0.5, top_p=0.9, seed=1)


@pytest.mark.parametrize(
    "name, model, req, sp",
    [
        ("other", "m", BASE_REQ, BASE_SP),
        ("b", "m2", BASE_REQ, BASE_SP),
        ("b", "m", GenRequest("a", BASE_REQ.messages, sample=1), BASE_SP),
        ("b", "m", GenRequest("a", (("system", "s"), ("user", "u2"))), BASE_SP),
        ("b", "m", GenRequest("a", (("user", "s"), ("user", "u"))), BASE_SP),
        ("b", "m", BASE_REQ, SamplingParams(100, 0.5, 0.9, seed=2)),
        ("b", "m", BASE_REQ, SamplingParams(101, 0.5, 0.9, 1)),
        ("b", "m", BASE_REQ, SamplingParams(100, 0.6, 0.9, 1)),
        ("b", "m", BASE_REQ, SamplingParams(100, 0.5, 0.8, 1)),
    ],
    ids=["backend", "model", "sample", "content", "role", "seed", "max_new_tokens", "temperature", "top_p"],
)
def test_key_changes_with_what_decides_the_answer(name, model, req, sp):
    base = cache_key("b", "m", BASE_REQ, BASE_SP)
    assert len(base) == 64 and base == cache_key("b", "m", BASE_REQ, BASE_SP)
    assert cache_key(name, model, req, sp) != base


def test_key_ignores_record_id():
    assert cache_key("b", "m", GenRequest("other-id", BASE_REQ.messages), BASE_SP) == cache_key("b", "m", BASE_REQ, BASE_SP)


# -- cache behaviour with a plain backend ------------------------------------------------------------
def test_second_run_is_all_hits(tmp_path):
    path = tmp_path / "c.jsonl"
    be = CountingBackend()
    rs = reqs(5, samples=2)
    first = generate_cached(be, rs, SamplingParams(), path, progress=False, chunk_size=3)
    assert first.stats.as_dict() == {"hits": 0, "misses": 10, "deduplicated": 0, "torn_lines": 0}
    assert [(r.id, r.sample) for r in first] == [(r.id, r.sample) for r in rs]
    second = generate_cached(be, list(reversed(rs)), SamplingParams(), path, progress=False)
    assert (second.stats.hits, second.stats.misses) == (10, 0)
    assert [r.text for r in second] == [r.text for r in reversed(first)]
    assert [r.finished for r in second] == [r.finished for r in reversed(first)]
    assert set(be.calls.values()) == {2}  # samples 0 and 1 of each prompt, once each
    assert len(lines(path)) == 10
    # a different seed is a different call
    third = generate_cached(be, rs[:2], SamplingParams(seed=9), path, progress=False)
    assert third.stats.misses == 2


def test_identical_requests_are_called_once(tmp_path):
    be = CountingBackend()
    msgs = [{"role": "user", "content": "same"}]
    rs = [GenRequest.from_messages("x", msgs), GenRequest.from_messages("y", msgs)]
    out = generate_cached(be, rs, SamplingParams(), tmp_path / "c.jsonl", progress=False)
    assert [r.id for r in out] == ["x", "y"] and out[0].text == out[1].text
    assert be.calls == {(("user", "same"),): 1}
    assert (out.stats.misses, out.stats.deduplicated) == (1, 1)


def test_crash_midway_keeps_finished_chunks(tmp_path):
    path = tmp_path / "c.jsonl"
    rs = reqs(10)
    crashing = CountingBackend(fail_on_chunk=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_cached(crashing, rs, SamplingParams(), path, progress=False, chunk_size=4)
    assert len(lines(path)) == 8  # two chunks answered and kept
    fresh = CountingBackend()
    out = generate_cached(fresh, rs, SamplingParams(), path, progress=False, chunk_size=4)
    assert (out.stats.hits, out.stats.misses) == (8, 2)
    assert sum(fresh.calls.values()) == 2
    assert all(crashing.calls.get(r.messages, 0) + fresh.calls.get(r.messages, 0) == 1 for r in rs)


def test_every_result_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(cache_mod.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    generate_cached(CountingBackend(), reqs(5), SamplingParams(), tmp_path / "c.jsonl", progress=False, chunk_size=5)
    assert len(synced) == 5


def test_torn_last_line_is_ignored_counted_and_repaired(tmp_path):
    path = tmp_path / "c.jsonl"
    rs = reqs(3)
    generate_cached(CountingBackend(), rs[:2], SamplingParams(), path, progress=False)
    with open(path, "ab") as f:
        f.write(b'{"key": "abc", "id": "id2", "text": "half a li')  # a crash mid-write
    cache = ResponseCache(path)
    assert (len(cache), cache.torn_lines) == (2, 1)
    be = CountingBackend()
    out = generate_cached(be, rs, SamplingParams(), path, progress=False)
    assert out.stats.as_dict() == {"hits": 2, "misses": 1, "deduplicated": 0, "torn_lines": 1}
    assert len(lines(path)) == 3  # every line parses: the torn tail was cut before appending
    assert ResponseCache(path).torn_lines == 0


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "c.jsonl"
    generate_cached(CountingBackend(), reqs(1), SamplingParams(), path, progress=False)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    be = CountingBackend()
    out = generate_cached(be, reqs(2), SamplingParams(), path, progress=False)
    assert (out.stats.hits, out.stats.misses, out.stats.torn_lines) == (1, 1, 0)
    assert len(lines(path)) == 2


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "c.jsonl"
    generate_cached(CountingBackend(), reqs(2), SamplingParams(), path, progress=False)
    good = path.read_text().splitlines()
    path.write_text("\n".join([good[0], "{not json", good[1]]) + "\n")
    with pytest.raises(DataError, match=r"c\.jsonl, line 2: corrupt cache line"):
        ResponseCache(path)


def test_wrong_result_count_is_an_error(tmp_path):
    class Short(CountingBackend):
        def generate(self, requests, sampling):
            return super().generate(requests, sampling)[:-1]

    with pytest.raises(RuntimeError, match="returned 1 results for 2 requests"):
        generate_cached(Short(), reqs(2), SamplingParams(), tmp_path / "c.jsonl", progress=False)


# -- with the OpenAI backend and a real server ----------------------------------------------------------
@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def test_openai_failure_keeps_every_answered_call(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    path = tmp_path / "c.jsonl"
    rs = reqs(12)
    server.fail_contents = {"q5"}
    server.delay = 0.02
    backend = OpenAIBackend("m", base_url=server.base_url, api_key_env=KEY_ENV, max_concurrency=3, max_retries=1, retry_base_delay=0.001)
    with pytest.raises(BackendError, match="id5"):
        generate_cached(backend, rs, SamplingParams(), path, progress=False)
    assert len(lines(path)) == server.total_served > 0
    server.fail_contents = set()
    out = generate_cached(backend, rs, SamplingParams(), path, progress=False)
    assert out.stats.hits + out.stats.misses == 12
    assert [r.text for r in out] == [f"Explanation of q{i} (seed {request_seed(0, f'id{i}', 0)})" for i in range(12)]
    assert all(server.served[f"q{i}"] == 1 for i in range(12))
    raw = path.read_bytes()
    assert KEY.encode() not in raw and b"Bearer" not in raw  # no secret in the cache


_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from sciexplain.cache import generate_cached
from sciexplain.generation import GenRequest, SamplingParams
from sciexplain.openai_backend import OpenAIBackend
n, url, path = int(sys.argv[2]), sys.argv[3], sys.argv[4]
rs = [GenRequest.from_messages(f"id{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(n)]
backend = OpenAIBackend("m", base_url=url, api_key_env="%s", max_concurrency=2)
generate_cached(backend, rs, SamplingParams(), path, progress=False)
print("finished")
""" % KEY_ENV


def test_killed_run_resumes_without_duplicate_calls(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    n, k = 8, 3
    path = tmp_path / "c.jsonl"
    server.gate_after = k  # the server answers k calls, then holds the rest until we kill the client
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(ROOT), str(n), server.base_url, str(path)],
        env={**os.environ, KEY_ENV: KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not (path.exists() and len(path.read_text().splitlines()) >= k):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "child never cached k answers"
            time.sleep(0.02)
        time.sleep(0.1)  # give it the chance to (wrongly) do more
    finally:
        child.kill()  # SIGKILL: no cleanup, no finally blocks in the child
        child.wait()
    assert child.returncode != 0
    server.open_gate(drop=True)  # the held calls die unanswered
    server.gate_after = None
    assert len(lines(path)) == server.total_served == k

    backend = OpenAIBackend("m", base_url=server.base_url, api_key_env=KEY_ENV, max_concurrency=2)
    out = generate_cached(backend, reqs(n), SamplingParams(), path, progress=False)
    assert (out.stats.hits, out.stats.misses) == (k, n - k)
    assert [r.text for r in out] == [f"Explanation of q{i} (seed {request_seed(0, f'id{i}', 0)})" for i in range(n)]
    assert dict(server.served) == {f"q{i}": 1 for i in range(n)}  # each call answered exactly once, overall
    assert len(lines(path)) == n
