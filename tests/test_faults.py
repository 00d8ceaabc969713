"""Fault injection: a stage is killed with SIGKILL in the middle of its calls, then run again.

Four paths, each through its real stage command in a subprocess:

(a) teacher on the ``openai`` backend, (b) teacher on the ``local`` backend (a tiny random model),
(c) the judge stage with an LLM judge on ``openai``, (d) the sample stage (``engine.backend: openai``, ``sample.n`` 3).

The openai paths talk to a real local HTTP server (tests/openai_server.py) that answers each call after a delay and
counts every call it gets per (prompt, seed); the local path runs under a shim that logs each batch the backend
starts. After each kill and after the final rerun:

* no finished response is lost: every call the stage had cached when it died is never asked again;
* the calls asked twice are exactly the calls that were sent but not yet cached at a kill, at most
  ``max_concurrency`` per crash (the local backend: at most one batch, ``teacher.batch_size`` rows);
* the outputs (and the raw cached texts) are byte-identical to a clean, uninterrupted run's.

The counts go into the assertion messages and are printed (``pytest -s``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, cache_lines, write_params
from openai_server import FakeOpenAIServer, answer_text, call_key, verdict_reply

M = 3  # max_concurrency of every openai path here
QUESTIONS = [
    "Why is the sky blue?", "How do vaccines train the immune system?", "Why does ice float on water?",
    "What is photosynthesis?", "How do tides work?", "Why do stars shine?", "What causes earthquakes?",
    "How does a rainbow form?", "Why do magnets attract iron?", "What is an atom made of?",
    "How do plants take up water?", "Why is the ocean salty?",
]


# -- helpers -------------------------------------------------------------------------------------------------

def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1")


def _popen(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=f, stderr=subprocess.STDOUT, text=True)


def _stage(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"stages.{module}", *args]




def _questions(path: Path, questions) -> list[dict]:
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [{"id": f"q{i}", "question": q, "domain": "physics"} for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def _project(path: Path, params: dict) -> Path:
    path.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    shutil.copytree(ROOT / "prompts", path / "prompts")
    write_params(path / "params.yaml", params)
    return path


def _reply_of(server: FakeOpenAIServer, body: dict) -> str:
    return server.reply(body) if server.reply is not None else answer_text(body)


def kill_and_resume(argv, cwd: Path, cache: Path, total: int, kill_at: list[int], *, server=None, calls_log=None,
                    settle: float = 0.05, timeout: float = 240) -> dict:
    """Run ``argv`` in ``cwd`` once per ``kill_at`` entry, SIGKILL it as soon as its cache holds that many answers,
    then run it to the end. Counts, per crash, the calls sent (server: per (prompt, seed); local: per request id
    from ``calls_log``) and not cached when it died, and checks that no cached call was ever asked again."""
    def sent() -> Counter:
        if server is not None:
            return Counter(server.calls)
        if calls_log is None or not calls_log.exists():
            return Counter()
        return Counter(line for line in calls_log.read_text().splitlines() if line)

    def cached_calls() -> set:
        lines = cache_lines(cache)
        if server is None:
            return {f"{e['id']}:{e['sample']}" for e in lines}
        by_text = {_reply_of(server, b): call_key(b) for b in server.bodies}
        return {by_text[e["text"]] for e in lines}

    crashes = []
    for n, k in enumerate(kill_at):
        before = sent()
        log = cwd / f"run{n}.log"
        proc = _popen(argv, cwd, log)
        deadline = time.monotonic() + timeout
        while len(cache_lines(cache)) < k and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.003)
        time.sleep(settle)  # let the calls started after the k-th answer reach the engine
        in_flight = server.in_flight if server is not None else None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"run {n} ended ({proc.returncode}) before the kill:\n{log.read_text()[-3000:]}"
        if server is not None:
            server.wait_idle()  # calls in flight at the kill are still answered (and billed) by the server
        cached = cached_calls()
        assert k <= len(cached) < total, f"kill {n} landed outside the run: {len(cached)} of {total} cached"
        asked = set(sent() - before)
        crashes.append({"cached": cached, "asked": asked, "lost": asked - cached, "in_flight_at_kill": in_flight,
                        "served_lost": {c for c in asked - cached if server is not None and server.served_calls[c]}})
    before = sent()
    log = cwd / "final.log"
    proc = _popen(argv, cwd, log)
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-3000:]
    final_asked = sent() - before
    assert len(cache_lines(cache)) == total, f"{len(cache_lines(cache))} cache lines for {total} calls (a call cached twice?)"
    return {"crashes": crashes, "final_asked": final_asked, "all_sent": sent(), "server": server is not None}


def check_counts(what: str, run: dict, total: int, bound: int, *, require_lost: bool = True) -> str:
    """The bound and the no-loss rule over every crash of ``run``; returns the summary line."""
    crashes, all_sent = run["crashes"], run["all_sent"]
    duplicates = sum(v - 1 for v in all_sent.values() if v > 1)
    lost = [len(c["lost"]) for c in crashes]
    unit = "calls" if run["server"] else "rows"
    summary = (f"{what}: {len(crashes)} faults injected (SIGKILL), {len(crashes)} survived; {total} {unit}; cached at "
               f"each kill {[len(c['cached']) for c in crashes]}; sent but not cached at each kill {lost}")
    if run["server"]:
        summary += (f" (answered by the server anyway: {[len(c['served_lost']) for c in crashes]}; in the server's delay "
                    f"at the kill: {[c['in_flight_at_kill'] for c in crashes]})")
    summary += f"; duplicate {unit} {duplicates}, bound {bound} per crash = {bound * len(crashes)}"
    print("\n" + summary)
    for n in range(len(crashes) - 1, -1, -1):  # calls asked after crash n: the later crashes' and the final run's
        after = Counter(run["final_asked"])
        for c in crashes[n + 1:]:
            after.update(c["asked"])
        reasked = set(after) & crashes[n]["cached"]
        assert not reasked, f"{summary}\nLOST: {len(reasked)} answers cached before kill {n} were asked again: {sorted(reasked)[:5]}"
        assert crashes[n]["lost"] <= set(after), f"{summary}\ncalls lost at kill {n} were never asked again"
    assert all(x <= bound for x in lost), f"{summary}\nmore than {bound} calls lost at one crash"
    assert duplicates == sum(lost) <= bound * len(crashes), summary
    assert set(all_sent) and len(all_sent) == total, f"{summary}\n{len(all_sent)} distinct calls for {total}"
    if require_lost:  # the kill landed while calls were in flight: the bound was exercised, not vacuous
        assert sum(lost) >= 1, f"{summary}\nno call was in flight at any kill"
    return summary


def _finish(proc: subprocess.Popen, log: Path) -> None:
    proc.wait(timeout=240)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _same_files(clean: Path, fault: Path, rels: list[str]) -> None:
    for rel in rels:
        a, b = (clean / rel).read_bytes(), (fault / rel).read_bytes()
        assert a == b, f"{rel} differs from the clean run's after kill + resume"


def _texts(cache: Path) -> dict:
    return {(e["id"], e["sample"]): e["text"] for e in cache_lines(cache)}


@pytest.fixture()
def servers():
    with FakeOpenAIServer() as clean, FakeOpenAIServer() as fault:
        fault.delay, fault.jitter = 0.15, 0.25  # each call takes a while, calls finish out of step: kills land mid-call
        yield clean, fault


# -- the backend alone: the window that makes the bound hold -------------------------------------------------

def test_openai_backend_never_has_more_than_max_concurrency_calls_unrecorded():
    """A slow ``on_result`` (a slow disk under fsync) must not let the pool run ahead: at every moment at most
    ``max_concurrency`` calls are sent and not yet recorded, so a kill at any moment loses at most that many."""
    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.openai_backend import OpenAIBackend

    reqs = [GenRequest.from_messages(f"id{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(10)]
    with FakeOpenAIServer() as srv:
        srv.delay = 0.02
        backend = OpenAIBackend("m", base_url=srv.base_url, api_key_env=None, max_concurrency=M)
        recorded, worst = [], []

        def on_result(i, res):
            time.sleep(0.15)  # meanwhile, idle workers must not start further calls
            recorded.append(i)
            worst.append(sum(srv.attempts.values()) - len(recorded))

        out = backend.generate(reqs, SamplingParams(max_new_tokens=8, seed=1), on_result=on_result)
    assert [r.text for r in out] == [f"Explanation of q{i} (seed {backend.request_seed(r, SamplingParams(seed=1))})"
                                     for i, r in enumerate(reqs)]
    assert sorted(recorded) == list(range(10))
    assert max(worst) <= M - 1, f"calls sent but not recorded reached {max(worst) + 1} > max_concurrency {M}"


# -- (a) teacher, openai -------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_teacher_openai_killed_twice_resumes_without_loss(tmp_path, servers):
    clean_srv, srv = servers
    args = ["--prepared", "data/prepared", "--out", "data/generations/teacher", "--cache", "data/cache/teacher.jsonl",
            "--metrics", "metrics/teacher.json", "--student", "data/none.jsonl"]
    dirs = {}
    for name, server in (("clean", clean_srv), ("fault", srv)):
        d = dirs[name] = _project(tmp_path / name, {"teacher": {
            "backend": "openai", "model": "gpt-test", "base_url": server.base_url, "api_key_env": None,
            "max_concurrency": M, "max_retries": 1, "splits": ["sft"], "few_shot": 1, "plan": "none",
            "max_new_tokens": 64, "min_words": 1}})
        _questions(d / "data/prepared/sft.jsonl", QUESTIONS)
    clean = _popen(_stage("teacher", *args), dirs["clean"], dirs["clean"] / "clean.log")  # runs beside the faulty one
    total = len(QUESTIONS)
    run = kill_and_resume(_stage("teacher", *args), dirs["fault"], dirs["fault"] / "data/cache/teacher.jsonl", total,
                          kill_at=[2, 7], server=srv)
    _finish(clean, dirs["clean"] / "clean.log")
    assert sum(clean_srv.calls.values()) == total
    check_counts("teacher/openai", run, total, M)
    assert srv.max_in_flight <= M
    _same_files(dirs["clean"], dirs["fault"], ["data/generations/teacher/sft.jsonl", "metrics/teacher.json"])
    assert _texts(dirs["clean"] / "data/cache/teacher.jsonl") == _texts(dirs["fault"] / "data/cache/teacher.jsonl")


# -- (b) teacher, local tiny model ---------------------------------------------------------------------------

_COUNTING_SHIM = """
import os, runpy, sys
from sciexplain import local_backend
_generate = local_backend.LocalBackend.generate
def generate(self, requests, sampling, *a, **kw):
    with open(os.environ["CALLS_LOG"], "a") as f:  # every row the engine starts, before it starts
        f.write("".join(f"{r.id}:{r.sample}\\n" for r in requests)); f.flush(); os.fsync(f.fileno())
    return _generate(self, requests, sampling, *a, **kw)
local_backend.LocalBackend.generate = generate
sys.argv = ["stages/teacher.py", *sys.argv[1:]]
runpy.run_module("stages.teacher", run_name="__main__", alter_sys=True)
"""


@pytest.mark.e2e
def test_teacher_local_killed_resumes_without_loss(tmp_path, tiny_base, one_torch_thread, monkeypatch):
    from click.testing import CliRunner

    from stages import teacher

    batch = 2
    questions = QUESTIONS[:8]
    params = {"teacher": {"backend": "local", "splits": ["eval"], "few_shot": 0, "plan": "none", "max_new_tokens": 24,
                          "temperature": 0.7, "batch_size": batch, "min_words": 1, "unfinished": "trim"}}
    args = ["--prepared", "data/prepared", "--base", str(tiny_base), "--out", "data/generations/teacher",
            "--cache", "data/cache/teacher.jsonl", "--metrics", "metrics/teacher.json", "--student", "data/none.jsonl"]
    dirs = {}
    for name in ("clean", "fault"):
        dirs[name] = _project(tmp_path / name, params)
        _questions(dirs[name] / "data/prepared/eval.jsonl", questions)
    monkeypatch.chdir(dirs["clean"])
    r = CliRunner().invoke(teacher.main, args)
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)

    calls_log = dirs["fault"] / "calls.log"
    monkeypatch.setenv("CALLS_LOG", str(calls_log))
    argv = [sys.executable, "-c", _COUNTING_SHIM, *args]
    run = kill_and_resume(argv, dirs["fault"], dirs["fault"] / "data/cache/teacher.jsonl", len(questions),
                          kill_at=[batch], calls_log=calls_log)
    check_counts("teacher/local", run, len(questions), batch, require_lost=False)
    _same_files(dirs["clean"], dirs["fault"], ["data/generations/teacher/eval.jsonl", "metrics/teacher.json"])
    assert _texts(dirs["clean"] / "data/cache/teacher.jsonl") == _texts(dirs["fault"] / "data/cache/teacher.jsonl")


# -- (c) LLM judge on openai ---------------------------------------------------------------------------------

@pytest.mark.e2e
def test_llm_judge_openai_killed_resumes_without_loss(tmp_path, servers):
    from sciexplain.sheets import build_sheet

    clean_srv, srv = servers
    pairs = [{"item_id": f"i{n}", "question": q, "answer_1": f"{q} Short answer {n}.",
              "answer_2": f"{q} A longer answer, number {n}, with a reason.", "model_1": "base", "model_2": "sft"}
             for n, q in enumerate(QUESTIONS[:8])]
    sheet, _ = build_sheet(pairs, seed=0)
    args = ["--compare", "data/compare", "--prompt", "prompts/judge.md", "--cache", "data/cache/judge",
            "--out", "data/judgments", "--metrics", "metrics/judge.json"]
    dirs = {}
    for name, server in (("clean", clean_srv), ("fault", srv)):
        server.reply = verdict_reply
        d = dirs[name] = _project(tmp_path / name, {"judge": {"panel": [
            {"name": "gpt", "type": "llm", "backend": "openai", "model": "judge-test", "base_url": server.base_url,
             "api_key_env": None, "max_concurrency": M, "max_retries": 1, "max_new_tokens": 48}]}})
        (d / "data/compare/base_vs_sft").mkdir(parents=True)
        (d / "data/compare/base_vs_sft/sheet.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sheet))
    clean = _popen(_stage("judge", *args), dirs["clean"], dirs["clean"] / "clean.log")  # runs beside the faulty one
    total = 2 * len(sheet)  # each item asked in both A/B orders
    run = kill_and_resume(_stage("judge", *args), dirs["fault"], dirs["fault"] / "data/cache/judge/gpt.jsonl", total,
                          kill_at=[4], server=srv)
    _finish(clean, dirs["clean"] / "clean.log")
    assert sum(clean_srv.calls.values()) == total
    check_counts("judge/llm-openai", run, total, M)
    _same_files(dirs["clean"], dirs["fault"], ["data/judgments/base_vs_sft/judge-gpt.jsonl", "metrics/judge.json"])
    verdicts = [json.loads(x) for x in (dirs["fault"] / "data/judgments/base_vs_sft/judge-gpt.jsonl").read_text().splitlines()]
    assert len(verdicts) == len(sheet) and any(v["choice"] in ("A", "B") for v in verdicts)  # replies were parsed


# -- (d) sampling, engine openai, n > 1 ----------------------------------------------------------------------

@pytest.mark.e2e
def test_sample_openai_n3_killed_resumes_without_loss(tmp_path, servers):
    clean_srv, srv = servers
    n, questions = 3, QUESTIONS[:5]
    args = ["--questions", "data/prepared/rs.jsonl", "--out", "data/rs/samples.jsonl", "--cache", "data/cache/sample.jsonl",
            "--metrics", "metrics/sample.json"]
    dirs = {}
    for name, server in (("clean", clean_srv), ("fault", srv)):
        d = dirs[name] = _project(tmp_path / name, {"engine": {"backend": "openai", "base_url": server.base_url, "api_key_env": None,
                                "max_concurrency": M, "max_retries": 1, "served_names": {"sft": "base"},
                                "weights": {"sft": "served/sft.safetensors"}},
                     "sample": {"n": n, "max_new_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 0}})
        (d / "served").mkdir()
        (d / "served/sft.safetensors").write_bytes(b"the weights the server was started from")
        _questions(d / "data/prepared/rs.jsonl", questions)
    clean = _popen(_stage("sample", *args), dirs["clean"], dirs["clean"] / "clean.log")  # runs beside the faulty one
    total = n * len(questions)
    run = kill_and_resume(_stage("sample", *args), dirs["fault"], dirs["fault"] / "data/cache/sample.jsonl", total,
                          kill_at=[5], server=srv)
    _finish(clean, dirs["clean"] / "clean.log")
    assert len(clean_srv.calls) == total == sum(clean_srv.calls.values())  # one call per (question, sample) and seed
    check_counts("sample/openai n=3", run, total, M)
    _same_files(dirs["clean"], dirs["fault"], ["data/rs/samples.jsonl", "metrics/sample.json"])
    recs = [json.loads(x) for x in (dirs["fault"] / "data/rs/samples.jsonl").read_text().splitlines()]
    assert len({r["answer"] for r in recs}) == total  # N distinct samples per question
