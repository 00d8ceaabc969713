"""Canary: API keys never reach outputs, caches, DVC files or logs.

Every API key variable the pipeline reads is set to a canary string, and every openai path runs through its real
stage command against a real local OpenAI-compatible server (tests/openai_server.py), by ``dvc repro`` in a small
tmp project (the real dvc.yaml's stages that call a server: answer@base, answer@sft, sample on ``engine.backend:
openai``; the teacher on ``openai``; an LLM judge on ``openai`` in ``judge.panel``, which the validate, teacher and
judge stages run), then the teacher's Batch API export and a stage whose key the server rejects (the server's 401
message quotes the key, as OpenAI's does). Every command's stdout and stderr go to log files. Then every file under
data/, models/, metrics/, reports/, plots/, .dvc/, logs/, and dvc.lock is read: the canary is in none of them. The
server must have seen each canary in its Authorization header, so the test cannot pass without keys being used.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_params
from openai_server import FakeOpenAIServer, answer_text, verdict_reply

STAGES = ["code", "answer", "validate", "teacher", "compare", "judge", "sample"]  # every one but code calls a server
RUNS = ["code", "answer@base", "answer@sft", "validate", "teacher", "compare@sft_vs_base", "judge@sft_vs_base", "sample"]
SEARCHED = ["data", "models", "metrics", "reports", "plots", ".dvc", "logs", "dvc.lock"]
ENGINE_KEY_ENV = "SCIEXPLAIN_ENGINE_API_KEY"


def _reply(body: dict) -> str:
    content = (body.get("messages") or [{}])[-1].get("content", "")
    return verdict_reply(body) if "Verdict" in content else answer_text(body)


def find_canaries(roots: list[Path], canaries: list[str]) -> tuple[int, list[str]]:
    """(files read, [path: canary] for every file under ``roots`` that holds a canary, also inside a longer token)."""
    needles = [c.encode() for c in canaries]
    files, hits = 0, []
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for path in paths:
            files += 1
            data = path.read_bytes()
            hits += [f"{path}: {c.decode()}" for c in needles if c in data]
    return files, hits


def test_the_search_finds_a_planted_canary(tmp_path):
    """The search below can fail: a canary planted deep in a folder (inside JSON, without its prefix) is found."""
    deep = tmp_path / "data/cache/x"
    deep.mkdir(parents=True)
    (deep / "a.jsonl").write_text(json.dumps({"text": "key=sk-canary-abc123def"}) + "\n")
    (tmp_path / "dvc.lock").write_text("clean\n")
    files, hits = find_canaries([tmp_path / "data", tmp_path / "dvc.lock"], ["canary-abc123def"])
    assert files == 2 and len(hits) == 1 and "a.jsonl" in hits[0]


def _run(args, cwd: Path, log: Path, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(args)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}\n--- exit {r.returncode}\n")
    if ok:
        assert r.returncode == 0, f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _project(repo: Path, tiny_base: Path, server: FakeOpenAIServer) -> None:
    for rel in ("stages", "sciexplain", "prompts", "data/raw"):
        shutil.copytree(ROOT / rel, repo / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"] = {name: dvc["stages"][name] for name in STAGES}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    # the models are only hashed on the openai backend (the weights a server was started from, for the cache key)
    shutil.copytree(tiny_base, repo / "models/base")
    (repo / "models/sft").mkdir(parents=True)
    (repo / "models/sft/adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (repo / "models/sft/adapter_model.safetensors").write_bytes(b"adapter served as sft")
    raw = [json.loads(x) for x in (ROOT / "data/raw/questions.jsonl").read_text().splitlines()[:11]]
    splits = {"sft": raw[:3], "rm": raw[3:6], "rs": raw[6:8], "eval": raw[8:11]}
    for split, recs in splits.items():
        path = repo / "data/prepared" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"answer": None, "domain": r["domain"], "id": r["id"], "question": r["question"],
                                            "source": "bank"}, sort_keys=True) + "\n" for r in recs))
    judge = {"name": "gpt", "type": "llm", "backend": "openai", "model": "judge-canary", "base_url": server.base_url,
             "api_key_env": "OPENAI_API_KEY", "max_concurrency": 4, "max_retries": 1, "max_new_tokens": 48}
    write_params(repo / "params.yaml", {"answer": {"models": None}, "compare": {"pairs": None}})
    write_params(repo / "params.yaml", {
        "answer": {"models": {"base": {"adapter": None, "splits": ["sft", "rm", "eval"]},
                              "sft": {"adapter": "models/sft", "splits": ["rm", "eval"]}}},
        "compare": {"pairs": {"sft_vs_base": ["sft", "base"]}},
        "engine": {"backend": "openai", "base_url": server.base_url, "api_key_env": ENGINE_KEY_ENV, "max_concurrency": 4,
                   "max_retries": 1},
        "teacher": {"backend": "openai", "model": "teacher-canary", "base_url": server.base_url,
                    "api_key_env": "OPENAI_API_KEY", "max_concurrency": 4, "max_retries": 1, "few_shot": 1,
                    "max_new_tokens": 64, "min_words": 1},
        "generate": {"max_new_tokens": 24},
        "judge": {"panel": [{"name": "rubric", "type": "rubric"}, judge]},
        "validate": {"max_pairs": 4, "bootstrap": 50},
        "sample": {"n": 2, "max_new_tokens": 24},
    })


@pytest.mark.e2e
def test_no_api_key_in_any_output_cache_dvc_file_or_log(tmp_path, tiny_base):
    canaries = {"OPENAI_API_KEY": f"sk-canary-openai-{secrets.token_hex(12)}",
                ENGINE_KEY_ENV: f"sk-canary-engine-{secrets.token_hex(12)}"}
    env = dict(os.environ, **canaries, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONPATH="",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1")
    repo = tmp_path / "repo"
    logs = repo / "logs"
    with FakeOpenAIServer() as server:
        server.reply = _reply
        _project(repo, tiny_base, server)
        _run(["dvc", "init", "--no-scm", "-q"], repo, logs / "dvc-init.log", env)
        out = _run(["dvc", "repro"], repo, logs / "dvc-repro.log", env).stdout
        for name in RUNS:
            assert f"Running stage '{name}'" in out, out[-3000:]
        _run(["dvc", "status"], repo, logs / "dvc-status.log", env)

        # the teacher's Batch API export (stops with exit 1 after writing the file, by design)
        batch_params = repo / "params_batch.yaml"
        shutil.copy(repo / "params.yaml", batch_params)
        write_params(batch_params, {"teacher": {"backend": "batch-export", "batch_file": "data/batch/teacher_requests.jsonl",
                                                "repetition_penalty": 1.0}})  # the Batch API has no such field
        r = _run([sys.executable, "-m", "stages.teacher", "--params", "params_batch.yaml"], repo,
                 logs / "teacher-batch-export.log", env, ok=False)
        assert r.returncode == 1 and "Batch API requests" in r.stderr, r.stderr[-2000:]
        batch = (repo / "data/batch/teacher_requests.jsonl").read_text().splitlines()
        assert len(batch) == 9 and json.loads(batch[0])["url"] == "/v1/chat/completions"

        # a rejected key: the server's 401 message quotes it; the stage's one-line error must not
        calls_before = len(server.auth)
        server.always_status = 401
        r = _run([sys.executable, "-m", "stages.answer", "--model-name", "base", "--splits", "eval",
                  "--out", "data/rejected/base", "--cache", "data/cache/rejected.jsonl", "--metrics", "metrics/rejected.json"],
                 repo, logs / "answer-401.log", env, ok=False)
        server.always_status = None
        assert r.returncode == 1 and "rejected the API key" in r.stderr and ENGINE_KEY_ENV in r.stderr, r.stderr[-2000:]
        assert len(server.auth) > calls_before

    # the server got every key: the test ran with keys in use
    for var, canary in canaries.items():
        assert f"Bearer {canary}" in server.auth, f"the server never received {var}'s key"
    assert server.total_served >= 40, server.total_served
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(RUNS)
    assert lock["stages"]["teacher"]["params"]["params.yaml"]["teacher"]["api_key_env"] == "OPENAI_API_KEY"  # a name only
    assert (repo / "data/cache/teacher.jsonl").exists() and (repo / "data/judgments/sft_vs_base/judge-gpt.jsonl").exists()

    roots = [repo / p for p in SEARCHED if (repo / p).exists()]
    assert {p.name for p in roots} >= {"data", "models", "metrics", ".dvc", "logs", "dvc.lock"}
    files, hits = find_canaries(roots, list(canaries.values()))
    everything, hits_anywhere = find_canaries([repo], list(canaries.values()))  # params, dvc.yaml, code copies too
    print(f"\ncanary: {files} files searched under {', '.join(p.name for p in roots)} ({everything} in the whole "
          f"project); {len(hits) + len(hits_anywhere)} hold a key; the server saw {len(set(server.auth))} distinct "
          f"Authorization headers over {len(server.auth)} calls")
    assert files >= 50, f"only {files} files searched"
    assert not hits, f"API keys leaked into {len(hits)} of {files} files: {hits[:10]}"
    assert not hits_anywhere, f"API keys leaked into {hits_anywhere[:10]}"
