"""A real OpenAI-compatible engine, not a mock: llama.cpp's server (llama-cpp-python[server]) serving the embedded
SmolLM2-135M GGUF on 127.0.0.1 to the teacher, answer and sample stages through their ``openai`` backend.

A counting proxy sits between the stages and the server: it only relays bytes, so every answer comes from
llama.cpp, and the tests can count the calls that reach the engine per (served name, question, seed).
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
from click.testing import CliRunner

from conftest import ROOT, cache_lines, read_jsonl, write_params
from llama_server import CountingProxy, LlamaServer, llama_cpp_available

pytestmark = [pytest.mark.slow, pytest.mark.engine]

QUESTIONS = ["Why is the sky blue?", "How do vaccines work?", "Why does ice float on water?", "What is photosynthesis?"]


@pytest.fixture(scope="module")
def llama():
    """llama.cpp's server with the embedded GGUF, served as ``base`` (one per module: it starts in a few seconds)."""
    if not llama_cpp_available():
        pytest.fail("llama-cpp-python[server] is not installed: run `make setup` (requirements-engine.txt)")
    from sciexplain.models import embedded_gguf

    with LlamaServer(embedded_gguf(), alias="base", n_ctx=2048) as server:
        yield server


@pytest.fixture()
def proxy(llama):
    with CountingProxy(llama.base_url) as p:
        yield p


def _questions(path: Path, questions=QUESTIONS) -> list[dict]:
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [{"id": f"q{i}", "question": q, "domain": "physics"} for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def _engine(base_url: str, **extra) -> dict:
    return {"engine": {"backend": "openai", "base_url": base_url, "api_key_env": None, "max_concurrency": 1,
                       "max_retries": 1, **extra}}


def _run_stage(module: str, args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", f"stages.{module}", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out




# -- the engine itself ---------------------------------------------------------------------------------------

def test_llama_server_chat_template_seed_and_n(llama):
    """The server formats chats with the GGUF's own template and answers sanely; the per-request seed picks the
    sample (same seed and same prompt-cache state -> same text; another seed -> another text); ``n`` is ignored."""
    import openai

    log = llama.log()
    assert "Using gguf chat template" in log and "Using chat eos_token: <|im_end|>" in log, log[-2000:]
    client = openai.OpenAI(base_url=llama.base_url, api_key="sk-no-key-required", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["base"]

    def ask(question, seed, **kw):
        return client.chat.completions.create(model="base", messages=[{"role": "user", "content": question}],
                                              max_tokens=24, temperature=0.9, top_p=0.95, seed=seed, **kw)

    a = ask(QUESTIONS[0], 11)
    ask(QUESTIONS[1], 11)  # another prompt in between: the next call evaluates its prompt afresh, like the first
    a2 = ask(QUESTIONS[0], 11)
    b = ask(QUESTIONS[0], 12)
    ta = a.choices[0].message.content
    assert a2.choices[0].message.content == ta  # same seed, same sample
    assert b.choices[0].message.content != ta  # another seed, another sample
    words = ta.lower().split()
    assert len(words) >= 8 and "<|im_start|>" not in ta and "<|im_end|>" not in ta, ta
    assert any(w.strip(".,'") in {"sky", "blue", "light", "sun", "sunlight", "atmosphere", "scattering"} for w in words), ta
    assert a.usage.completion_tokens <= 24
    n3 = ask(QUESTIONS[0], 12, n=3)
    assert len(n3.choices) == 1  # llama.cpp's server drops n: N samples need N calls, each with its own seed


# -- teacher -------------------------------------------------------------------------------------------------

@pytest.fixture()
def teacher_project(workdir):
    prepared = workdir / "data/prepared"
    _questions(prepared / "sft.jsonl", QUESTIONS[:2])
    (prepared / "eval.jsonl").write_text(json.dumps({"id": "e0", "question": QUESTIONS[2], "domain": "physics"}) + "\n")
    shutil.copytree(ROOT / "prompts", workdir / "prompts")
    return workdir


def test_teacher_stage_on_llamacpp(teacher_project, proxy, llama):
    from stages import teacher

    write_params(teacher_project / "params.yaml", {"teacher": {
        "backend": "openai", "model": "base", "base_url": proxy.base_url, "api_key_env": "none", "max_concurrency": 2,
        "max_retries": 1, "splits": ["sft", "eval"], "few_shot": 0, "max_new_tokens": 64, "min_words": 1,
        "unfinished": "trim", "weights": str(llama.model)}})
    r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 0, r.output
    assert proxy.total == 3 and not proxy.repeated()
    assert {k[0] for k in proxy.calls} == {"base"}
    sent = proxy.bodies[0]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]  # the quality prompt, then the question
    # what the stage cached is what llama.cpp answered
    relayed = sorted(t for texts in proxy.texts.values() for t in texts)
    cached = sorted(e["text"] for e in cache_lines(teacher_project / "data/cache/teacher.jsonl"))
    assert cached == relayed and all(t.strip() for t in relayed)
    sft = read_jsonl(teacher_project / "data/generations/teacher/sft.jsonl")
    assert [x["id"] for x in sft] == ["q0", "q1"] and sft[0]["source"] == "openai:base"
    m = json.loads((teacher_project / "metrics/teacher.json").read_text())
    assert m["answers"] == 3 and m["backend"] == "openai"
    assert "cache" not in m and "tokens_per_s" not in m  # run-time counters stay out of DVC metrics
    # a rerun is answered from the cache: nothing reaches the engine
    r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 0, r.output
    assert proxy.total == 3


# -- answer and sample through params engine -----------------------------------------------------------------

def test_sample_stage_n_distinct_and_resume_after_kill(workdir, proxy, llama):
    """sample.n = 3 on llama.cpp: 3 distinct answers per question (one seed per (seed, question, sample)); the
    stage is killed (SIGKILL) after some answers are cached, and the rerun sends only the calls not cached."""
    from sciexplain.generation import request_seed

    questions = _questions(workdir / "data/prepared/rs.jsonl", QUESTIONS[:3])
    write_params(workdir / "params.yaml", {
        **_engine(proxy.base_url, served_names={"sft": "base"}, weights={"sft": str(llama.model)}),
        "sample": {"n": 3, "max_new_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 0}})
    cache = workdir / "data/cache/sample.jsonl"
    args = ["--questions", "data/prepared/rs.jsonl", "--out", "data/rs/samples.jsonl", "--cache", str(cache),
            "--metrics", "metrics/sample.json"]
    proxy.delay = 0.3  # room to kill the stage between answers
    proc = _run_stage("sample", args, workdir)
    deadline = time.monotonic() + 240
    while len(cache_lines(cache)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    proxy.wait_idle()  # a call in flight when the stage died is still answered by the server
    cached = {(e["id"], e["sample"]): e["text"] for e in cache_lines(cache)}
    assert 4 <= len(cached) < 9
    assert not (workdir / "data/rs/samples.jsonl").exists()
    first = Counter(proxy.calls)

    out = _finish(_run_stage("sample", args, workdir))
    assert "sampled 9 answers" in out
    second = proxy.calls - first
    seeds = {request_seed(0, q["id"], s): (q["id"], s) for q in questions for s in range(3)}
    assert len(seeds) == 9
    resent = {seeds[k[2]] for k in second}
    assert not resent & set(cached)  # no answer that was already cached was asked for again
    assert not {seeds[k[2]] for k in proxy.repeated()} & set(cached)  # at most the call in flight at the kill
    assert sum(second.values()) == 9 - len(cached) and max(second.values()) == 1
    assert {k[0] for k in proxy.calls} == {"base"}  # sft is served as "base" (engine.served_names)
    assert {b["seed"] for b in proxy.bodies} == set(seeds)

    recs = read_jsonl(workdir / "data/rs/samples.jsonl")
    assert [(r["id"], r["sample"]) for r in recs] == [(q["id"], s) for q in questions for s in range(3)]
    for q in questions:
        texts = [r["answer"] for r in recs if r["id"] == q["id"]]
        assert len(set(texts)) == 3 and all(t.strip() for t in texts), texts  # N distinct samples
    for (qid, s), text in cached.items():  # what was cached before the kill is what the rerun used
        assert next(r["answer"] for r in recs if r["id"] == qid and r["sample"] == s) == text
    m = json.loads((workdir / "metrics/sample.json").read_text())
    assert m["answers"] == 9 and m["samples_per_question"] == 3
    assert f"9 answers, {len(cached)} from the cache, {9 - len(cached)} generated" in out  # the stage's log line
    print(f"\nkill/resume: {len(cached)} answers cached at the kill; calls answered before it {sum(first.values())}, "
          f"after it {sum(second.values())}; calls that reached the engine {sum(proxy.attempts.values())} for 9 samples; "
          f"keys answered twice: {len(proxy.repeated())} (none of them cached before the kill)")


def test_answer_stage_cache_follows_served_weights_fingerprint(workdir, proxy):
    """Same served name, other weights behind it (engine.weights changed on disk) -> asked again, not cached."""
    _questions(workdir / "data/prepared/eval.jsonl", QUESTIONS[:2])
    weights = workdir / "served/sft"
    weights.mkdir(parents=True)
    (weights / "adapter_model.safetensors").write_bytes(b"adapter v1")
    write_params(workdir / "params.yaml", {
        **_engine(proxy.base_url, max_concurrency=2, served_names={"sft": "base"}, weights={"sft": str(weights)}),
        "generate": {"max_new_tokens": 24, "temperature": 0.7, "top_p": 0.9, "seed": 0}})
    args = ["--model-name", "sft", "--adapter", "models/sft", "--splits", "eval", "--out", "data/generations/sft",
            "--cache", "data/cache/answer-sft.jsonl", "--metrics", "metrics/answer_sft.json"]

    def run() -> list[dict]:
        from stages import answer

        r = CliRunner().invoke(answer.main, args)
        assert r.exit_code == 0, r.output
        return read_jsonl(workdir / "data/generations/sft/eval.jsonl")

    v1 = run()
    assert proxy.total == 2 and all(r["answer"].strip() for r in v1)
    assert json.loads((workdir / "metrics/answer_sft.json").read_text())["backend"] == "openai"
    run()
    assert proxy.total == 2  # unchanged weights: from the cache
    (weights / "adapter_model.safetensors").write_bytes(b"adapter v2")  # retrained, served under the same name
    run()
    assert proxy.total == 4 and not any(v > 2 for v in proxy.calls.values())
    assert len(cache_lines(workdir / "data/cache/answer-sft.jsonl")) == 4  # both versions kept, each under its key
    run()
    assert proxy.total == 4  # the new weights' answers are cached in turn
