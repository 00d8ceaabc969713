import json

import pytest
from click.testing import CliRunner

from conftest import read_jsonl, write_params
from stages import base_model, prepare


@pytest.fixture()
def built_base(workdir, tiny_base):
    write_params(workdir / "params.yaml", {"base_model": {"source": str(tiny_base)}})
    r = CliRunner().invoke(base_model.main, ["--out", "models/base", "--metrics", "metrics/base_model.json"])
    assert r.exit_code == 0, r.output
    return workdir


def test_base_model_stage(built_base):
    m = json.loads((built_base / "metrics/base_model.json").read_text())
    assert m["source"] == "local" and m["parameters"] > 1000 and "label" not in m
    prov = json.loads((built_base / "models/base/provenance.json").read_text())
    assert prov["source"].startswith("local:") and list(prov["weights_sha256"]) == ["model.safetensors"]
    assert (built_base / "models/base/model.safetensors").exists()
    assert (built_base / "models/base/tokenizer_config.json").exists()


def test_base_model_bad_source_is_one_clean_line(workdir):
    write_params(workdir / "params.yaml", {"base_model": {"source": "not a model"}})
    r = CliRunner().invoke(base_model.main, [])
    assert r.exit_code == 1 and "Traceback" not in r.output and "base_model.source" in r.output
    assert not (workdir / "models").exists() or not any((workdir / "models").iterdir())


def test_prepare_stage(built_base):
    write_params(built_base / "params.yaml", {"prepare": {"splits": {"sft": 10, "rm": 6, "rs": 4, "eval": 5}}})
    r = CliRunner().invoke(prepare.main, [])
    assert r.exit_code == 0, r.output
    splits = {n: read_jsonl(built_base / f"data/prepared/{n}.jsonl") for n in ("sft", "rm", "rs", "eval")}
    assert {n: len(v) for n, v in splits.items()} == {"sft": 10, "rm": 6, "rs": 4, "eval": 5}
    ids = [r["id"] for v in splits.values() for r in v]
    assert len(set(ids)) == 25
    m = json.loads((built_base / "metrics/prepare.json").read_text())
    assert m["splits"] == {"eval": 5, "rs": 4, "rm": 6, "sft": 10} and m["questions_kept"] >= 400
    first = (built_base / "data/prepared/sft.jsonl").read_bytes()
    assert CliRunner().invoke(prepare.main, []).exit_code == 0
    assert (built_base / "data/prepared/sft.jsonl").read_bytes() == first  # deterministic


def test_prepare_with_stackexchange_and_eval_file(built_base):
    fixtures = __import__("pathlib").Path(__file__).parent / "fixtures"
    (built_base / "evalq.jsonl").write_text(json.dumps({"question": "Why does ice float on water?"}) + "\n")
    write_params(built_base / "params.yaml", {"prepare": {
        "sources": [{"type": "bank", "path": "data/raw/questions.jsonl"},
                    {"type": "stackexchange", "path": str(fixtures / "Posts.xml"), "min_score": 1, "domain": "physics"}],
        "eval_file": "evalq.jsonl", "splits": {"sft": 400, "rm": 40, "rs": 30, "eval": 5}}})
    r = CliRunner().invoke(prepare.main, [])
    assert r.exit_code == 0, r.output
    ev = read_jsonl(built_base / "data/prepared/eval.jsonl")
    assert [e["question"] for e in ev] == ["Why does ice float on water?"]
    m = json.loads((built_base / "metrics/prepare.json").read_text())
    assert m["drops"]["unsafe_html"] == 1 and m["with_forum_answer"] >= 1
    others = [r for n in ("sft", "rm", "rs") for r in read_jsonl(built_base / f"data/prepared/{n}.jsonl")]
    assert ev[0]["id"] not in {r["id"] for r in others}


def test_prepare_errors_leave_nothing_behind(built_base):
    write_params(built_base / "params.yaml", {"prepare": {"splits": {"sft": 5000}}})
    r = CliRunner().invoke(prepare.main, [])
    assert r.exit_code == 1 and "prepare.splits" in r.output and "Traceback" not in r.output
    assert not (built_base / "data/prepared").exists()
    (built_base / "data/raw/questions.jsonl").write_text('{"question": "Why?", "domain": "physics"}\n{"question": "x"}\n')
    write_params(built_base / "params.yaml", {"prepare": {"splits": {"sft": 1}}})
    r = CliRunner().invoke(prepare.main, [])
    assert r.exit_code == 1 and "questions.jsonl, line 2, field 'domain'" in r.output
    assert not (built_base / "data/prepared").exists()
