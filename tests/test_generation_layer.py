"""The one generation layer: seeds per (seed, question, sample), fingerprints in cache keys, one factory for
every generating stage (local / vllm / openai), and the answer/sample stages on a server."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import read_jsonl, write_params
from openai_server import FakeOpenAIServer
from sciexplain.backends import engine_backend, make_backend, served_fingerprint
from sciexplain.cache import backend_cache_key, generate_cached
from sciexplain.generation import GenRequest, SamplingParams, fingerprint, request_seed
from sciexplain.records import DataError, UserError
from sciexplain.openai_backend import OpenAIBackend
from sciexplain.prompts import student_messages

SP = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.95, seed=3)


def test_request_seed_is_per_question_and_sample():
    seeds = {request_seed(0, q, s) for q in ("a", "b", "c") for s in range(4)}
    assert len(seeds) == 12  # every sample of every question its own seed
    assert request_seed(0, "a", 2) == request_seed(0, "a", 2)  # and the same on a rerun
    assert request_seed(0, "a", 3) == request_seed(0, "a", 0) + 3  # vLLM's child seeds: seed + index
    assert request_seed(1, "a", 0) != request_seed(0, "a", 0)
    assert all(0 <= s < 2**31 for s in seeds)


def test_fingerprint_follows_the_weights(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"w1")
    (folder / "README.md").write_text("notes are not weights")
    a = fingerprint(folder)
    (folder / "README.md").write_text("other notes")
    assert fingerprint(folder) == a
    (folder / "adapter_model.safetensors").write_bytes(b"w2")
    assert fingerprint(folder) != a
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf")
    assert served_fingerprint(str(gguf)) == fingerprint(gguf)
    assert served_fingerprint(None) is None
    with pytest.raises(UserError, match="no such file"):
        fingerprint(tmp_path / "missing")


def _requests(n_questions=2, n_samples=3):
    return [GenRequest.from_messages(f"q{i}", student_messages(f"question {i}"), sample=s)
            for i in range(n_questions) for s in range(n_samples)]


def test_openai_samples_differ_by_seed_and_rerun_is_cached(tmp_path):
    with FakeOpenAIServer() as srv:
        backend = OpenAIBackend("sft", base_url=srv.base_url, api_key_env=None, fingerprint="abc")
        reqs = _requests()
        out = generate_cached(backend, reqs, SP, tmp_path / "cache.jsonl", progress=False)
        seeds = [b["seed"] for b in srv.bodies]
        assert sorted(seeds) == sorted(request_seed(SP.seed, r.id, r.sample) for r in reqs)
        assert len({r.text for r in out}) == len(reqs)  # the server's answer carries the seed: all distinct
        again = generate_cached(backend, reqs, SP, tmp_path / "cache.jsonl", progress=False)
        assert again.stats.hits == len(reqs) and srv.total_served == len(reqs)
        assert [r.text for r in again] == [r.text for r in out]


def test_a_new_fingerprint_under_the_same_served_name_is_asked_again(tmp_path):
    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"round 1")
    reqs = _requests(1, 2)
    with FakeOpenAIServer() as srv:
        def run():
            b = OpenAIBackend("sft", base_url=srv.base_url, api_key_env=None, fingerprint=served_fingerprint(adapter))
            return generate_cached(b, reqs, SP, tmp_path / "cache.jsonl", progress=False)

        assert run().stats.misses == 2
        assert run().stats.hits == 2
        (adapter / "adapter_model.safetensors").write_bytes(b"round 2: retrained")
        assert run().stats.misses == 2  # stale answers of the old adapter are not reused
        assert srv.total_served == 4


def test_cache_key_names_weights_and_request_seed():
    req = _requests(1, 1)[0]
    a = OpenAIBackend("sft", base_url="http://127.0.0.1:9/v1", api_key_env=None, fingerprint="one")
    b = OpenAIBackend("sft", base_url="http://127.0.0.1:9/v1", api_key_env=None, fingerprint="two")
    c = OpenAIBackend("sft", base_url="http://127.0.0.1:9/v1", api_key_env=None, fingerprint="one")
    assert backend_cache_key(a, req, SP) != backend_cache_key(b, req, SP)
    assert backend_cache_key(a, req, SP) == backend_cache_key(c, req, SP)
    other = GenRequest(id="other-id", messages=req.messages, sample=0)  # same text, other question id -> other seed
    assert backend_cache_key(a, other, SP) != backend_cache_key(a, req, SP)


def test_the_factory_builds_every_backend(tiny_base, tmp_path):
    from sciexplain.local_backend import LocalBackend

    local = make_backend("local", base_dir=tiny_base, batch_size=4)
    assert isinstance(local, LocalBackend) and local.batch_size == 4
    remote = make_backend("openai", model="base", base_url="http://127.0.0.1:9/v1", api_key_env=None,
                          weights=[tiny_base])
    assert remote.cache_id == f"base@{fingerprint(tiny_base)}"
    with pytest.raises(DataError, match="engine.backend.*unknown backend 'tgi'"):
        make_backend("tgi", where="engine.backend")
    with pytest.raises(DataError, match="teacher.model"):
        make_backend("openai", where="teacher.backend")


def test_vllm_missing_is_one_clear_line(tiny_base, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vLLM (this one has none anyway)
    with pytest.raises(UserError, match="requirements-gpu.txt"):
        make_backend("vllm", base_dir=tiny_base)


def _params(tmp_path, **engine):
    import yaml

    from sciexplain.params_schema import Params

    p = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    p["engine"].update(engine)
    return Params(p)


def test_engine_backend_served_names_and_weights(tiny_base, tmp_path):
    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    p = _params(tmp_path, backend="openai", base_url="http://127.0.0.1:9/v1", served_names={"sft": "my-sft"})
    b = engine_backend(p, "sft", tiny_base, adapter)
    assert b.model == "my-sft" and b.fingerprint == fingerprint(tiny_base, adapter)
    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"gguf")
    p = _params(tmp_path, backend="openai", base_url="http://127.0.0.1:9/v1", weights={"base": str(gguf)})
    b = engine_backend(p, "base", tiny_base)
    assert b.model == "base" and b.fingerprint == fingerprint(gguf)
    assert engine_backend(_params(tmp_path), "base", tiny_base).name == "local"


# ---------------------------------------------------------------- vLLM's offline engine, by contract
class _FakeCompletion:
    def __init__(self, text, finish_reason="stop"):
        self.text, self.token_ids, self.finish_reason = text, [1] * len(text.split()), finish_reason


class _FakeLLM:
    """Stands in for ``vllm.LLM`` (no CUDA here) with vLLM's documented seed rule: child i of a request with
    ``n`` samples and seed s is sampled with seed s + i. It answers with the seed it sampled with."""

    calls: list = []

    def __init__(self, **kw):
        self.kw = kw

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        _FakeLLM.calls.append((prompts, params, lora_request))
        outs = []
        for pr, sp in zip(prompts, params):
            comps = [_FakeCompletion(f"seed {sp.seed + i if sp.seed is not None else 'greedy'}") for i in range(sp.n)]
            outs.append(types.SimpleNamespace(prompt_token_ids=pr["prompt_token_ids"], outputs=comps))
        return outs


class _FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, stop_token_ids=None,
                 repetition_penalty=1.0):  # vllm.SamplingParams has it, default 1.0
        self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed
        self.stop_token_ids = stop_token_ids


@pytest.fixture()
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = _FakeLLM, _FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = lambda name, idx, path: ("lora", name, idx, path)
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", req)):
        monkeypatch.setitem(sys.modules, name, mod)
    _FakeLLM.calls = []
    return vllm


def test_vllm_backend_n_samples_per_request_and_resume_equivalence(fake_vllm, tiny_base, tmp_path):
    import json

    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    backend = make_backend("vllm", base_dir=tiny_base, adapter=adapter, vllm={"gpu_memory_utilization": 0.5})
    assert backend.llm.kw["enable_lora"] and backend.llm.kw["max_lora_rank"] == 16
    assert backend.llm.kw["gpu_memory_utilization"] == 0.5
    reqs = _requests(2, 4)
    full = backend.generate(reqs, SP)
    prompts, params, lora = _FakeLLM.calls[-1]
    assert [sp.n for sp in params] == [4, 4]  # one request per question, n samples
    assert lora[1] == "sft"
    assert [r.text for r in full] == [f"seed {request_seed(SP.seed, r.id, r.sample)}" for r in reqs]
    # a resumed run asks only for samples 1 and 3 of q0: the same answers as in the full run
    part = backend.generate([reqs[1], reqs[3]], SP)
    assert [p.n for p in _FakeLLM.calls[-1][1]] == [1, 1]
    assert [r.text for r in part] == [full[1].text, full[3].text]
    # through the response cache, in chunks
    backend.batch_size = 3
    cached = generate_cached(backend, reqs, SP, tmp_path / "c.jsonl", progress=False)
    assert [r.text for r in cached] == [r.text for r in full]


# ---------------------------------------------------------------- the stages on a server
def _prepared(root: Path, n: int = 3) -> None:
    from sciexplain.records import stable_id, write_jsonl

    qs = [f"Why does thing {i} happen?" for i in range(n)]
    for split in ("rm", "eval", "rs"):
        write_jsonl(root / "data/prepared" / f"{split}.jsonl",
                    [{"id": stable_id(q), "question": q, "domain": "physics"} for q in qs])


def test_answer_and_sample_stages_on_an_openai_server(workdir, tiny_base):
    from stages import answer, sample

    _prepared(workdir)
    adapter = workdir / "models/sft"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    with FakeOpenAIServer() as srv:
        write_params(workdir / "params.yaml", {"engine": {"backend": "openai", "base_url": srv.base_url},
                                                "sample": {"n": 3}})
        r = CliRunner().invoke(answer.main, ["--model-name", "base", "--base", str(tiny_base), "--splits", "eval",
                                             "--out", "data/generations/base"])
        assert r.exit_code == 0, r.output
        recs = read_jsonl(workdir / "data/generations/base/eval.jsonl")
        assert len(recs) == 3 and all(x["answer"].startswith("Explanation of") for x in recs)
        assert {b["model"] for b in srv.bodies} == {"base"}
        r = CliRunner().invoke(sample.main, ["--base", str(tiny_base), "--adapter", str(adapter)])
        assert r.exit_code == 0, r.output
        samples = read_jsonl(workdir / "data/rs/samples.jsonl")
        assert len(samples) == 9
        by_q = {}
        for s in samples:
            by_q.setdefault(s["id"], set()).add(s["answer"])
        assert all(len(v) == 3 for v in by_q.values())  # N distinct samples per question
        assert {b["model"] for b in srv.bodies[3:]} == {"sft"}
        served = srv.total_served
        assert CliRunner().invoke(sample.main, ["--base", str(tiny_base), "--adapter", str(adapter)]).exit_code == 0
        assert srv.total_served == served  # a rerun is answered from the cache
