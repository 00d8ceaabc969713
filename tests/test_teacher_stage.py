"""The teacher stage against a real OpenAI-compatible HTTP server on 127.0.0.1, and through Batch API files."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import read_jsonl, write_params
from openai_server import FakeOpenAIServer, answer_text
from stages import teacher

SECRET = "sk-test-secret-never-in-outputs"


@pytest.fixture()
def project(workdir):
    prepared = workdir / "data/prepared"
    prepared.mkdir(parents=True)
    for split, qs in {"sft": ["Why is the sky blue?", "What is photosynthesis?", "How do magnets work?"],
                      "eval": ["Why do stars twinkle?"]}.items():
        (prepared / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}{i}", "question": q, "domain": "physics"}) + "\n" for i, q in enumerate(qs)))
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "prompts", workdir / "prompts")
    write_params(workdir / "params.yaml", {"teacher": {"splits": ["sft", "eval"], "min_words": 3, "model": "gpt-test"}})
    return workdir


def test_teacher_openai_backend(project, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    with FakeOpenAIServer() as server:
        server.fail_contents = {"How do magnets work?"}  # always 500 -> a clear error, after the others are cached
        write_params(project / "params.yaml", {"teacher": {"backend": "openai", "base_url": server.base_url,
                                                           "api_key_env": "MY_KEY", "max_retries": 1}})
        r = CliRunner().invoke(teacher.main, [])
        assert r.exit_code == 1 and "500" in r.output and "Traceback" not in r.output
        assert not (project / "data/generations").exists()
        served_before = server.total_served
        server.fail_contents = set()
        r = CliRunner().invoke(teacher.main, [])
        assert r.exit_code == 0, r.output
        assert server.total_served == served_before + 1  # the finished calls came from the cache
        assert all(a == f"Bearer {SECRET}" for a in server.auth)
    sft = read_jsonl(project / "data/generations/teacher/sft.jsonl")
    assert [x["id"] for x in sft] == ["sft0", "sft1", "sft2"]
    assert sft[0]["answer"].startswith("Explanation of Why is the sky blue?") and sft[0]["keep"]
    assert sft[0]["model"] == "teacher" and sft[0]["source"] == "openai:gpt-test"
    m = json.loads((project / "metrics/teacher.json").read_text())
    assert m["answers"] == 4 and m["kept"] == {"sft": 3, "eval": 1}
    for path in list((project / "data").rglob("*")) + list((project / "metrics").rglob("*")):
        if path.is_file():
            assert SECRET not in path.read_text(errors="ignore"), path


def test_teacher_missing_key_is_one_line(project, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_params(project / "params.yaml", {"teacher": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}})
    r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 1 and "OPENAI_API_KEY" in r.output and "Traceback" not in r.output


def test_teacher_filters_are_counted(project):
    with FakeOpenAIServer() as server:
        write_params(project / "params.yaml", {"teacher": {"backend": "openai", "base_url": server.base_url,
                                                           "api_key_env": "none", "min_words": 8}})
        r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 0, r.output
    m = json.loads((project / "metrics/teacher.json").read_text())
    # "Explanation of What is photosynthesis? (seed 0)" has 7 words -> too short
    assert m["filtered"] == {"too_short": 1} and m["kept"]["sft"] == 2
    rec = next(x for x in read_jsonl(project / "data/generations/teacher/sft.jsonl") if x["id"] == "sft1")
    assert rec["keep"] is False and rec["drop_reason"] == "too_short"


def test_teacher_batch_export_then_import(project):
    write_params(project / "params.yaml", {"teacher": {"backend": "batch-export", "batch_file": "batch_in.jsonl", "repetition_penalty": 1.0}})
    r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 1 and "wrote 4 Batch API requests" in r.output
    requests = read_jsonl(project / "batch_in.jsonl")
    assert {q["custom_id"] for q in requests} == {"sft0", "sft1", "sft2", "eval0"}
    with open(project / "batch_out.jsonl", "w") as f:  # what OpenAI returns for the batch
        for q in requests:
            body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Answer: " + answer_text(q["body"])},
                                 "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}
            f.write(json.dumps({"custom_id": q["custom_id"], "response": {"status_code": 200, "body": body},
                                "error": None}) + "\n")
    write_params(project / "params.yaml", {"teacher": {"backend": "batch-import", "batch_file": "batch_out.jsonl"}})
    r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 0, r.output
    ev = read_jsonl(project / "data/generations/teacher/eval.jsonl")
    assert ev[0]["answer"].startswith("Explanation of Why do stars twinkle?")  # "Answer:" marker stripped
