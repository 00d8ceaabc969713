"""OpenAI Batch API export / import."""
from __future__ import annotations

import json
import random

import pytest

from openai_server import FakeOpenAIServer, completion_for
from sciexplain.batch_api import custom_id, export_batch, import_batch, parse_custom_id
from sciexplain.generation import GenRequest, SamplingParams, request_seed
from sciexplain.records import DataError
from sciexplain.openai_backend import OpenAIBackend

SP = SamplingParams(max_new_tokens=64, temperature=0.8, top_p=0.95, seed=3)


def reqs():
    out = []
    for i in range(4):
        for s in range(2):
            out.append(GenRequest.from_messages(f"rec{i}", [{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}], s))
    return out


def simulate_batch_run(input_path, output_path, *, shuffle=True):
    """What the Batch API would return for an input file, answered like tests/openai_server.py does."""
    out = []
    for n, line in enumerate(input_path.read_text().splitlines()):
        req = json.loads(line)
        body = completion_for(req["body"], finish_reason="length" if n % 3 == 2 else "stop")
        out.append({"id": f"batch_req_{n}", "custom_id": req["custom_id"], "response": {"status_code": 200, "request_id": f"r{n}", "body": body}, "error": None})
    if shuffle:
        random.Random(0).shuffle(out)  # the Batch API does not keep input order
    output_path.write_text("".join(json.dumps(o) + "\n" for o in out))


def test_export_format(tmp_path):
    path = tmp_path / "batch_in.jsonl"
    assert export_batch(reqs(), SP, "gpt-test", path) == 8
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["custom_id"] for r in rows[:3]] == ["rec0", "rec0#1", "rec1"]
    assert all(r["method"] == "POST" and r["url"] == "/v1/chat/completions" for r in rows)
    assert rows[1]["body"] == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q0"}],
        "max_tokens": 64,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": request_seed(3, "rec0", 1),  # as the live backend sends it: per (seed, id, sample)
    }
    assert [p.name for p in tmp_path.iterdir()] == ["batch_in.jsonl"]  # no temp file left behind


def test_export_refuses_duplicates_and_keeps_old_file(tmp_path):
    path = tmp_path / "batch_in.jsonl"
    path.write_text("old\n")
    dup = [GenRequest.from_messages("a", [{"role": "user", "content": "x"}])] * 2
    with pytest.raises(DataError, match="custom_id"):
        export_batch(dup, SP, "m", path)
    assert path.read_text() == "old\n"


@pytest.mark.parametrize("rid, sample", [("abc", 0), ("abc", 3), ("a#b", 0), ("a#7", 0), ("a#7", 2)])
def test_custom_id_round_trip(rid, sample):
    assert parse_custom_id(custom_id(GenRequest(rid, (), sample))) == (rid, sample)


def test_round_trip_matches_live_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIEXPLAIN_TEST_BATCH_KEY", "sk-x")
    rs = reqs()
    export_batch(rs, SP, "gpt-test", tmp_path / "in.jsonl")
    simulate_batch_run(tmp_path / "in.jsonl", tmp_path / "out.jsonl")

    in_file_order = import_batch(tmp_path / "out.jsonl")
    assert sorted((r.id, r.sample) for r in in_file_order) == sorted((r.id, r.sample) for r in rs)
    got = import_batch(tmp_path / "out.jsonl", requests=rs)
    assert [(r.id, r.sample) for r in got] == [(r.id, r.sample) for r in rs]

    with FakeOpenAIServer() as srv:
        live = OpenAIBackend("gpt-test", base_url=srv.base_url, api_key_env="SCIEXPLAIN_TEST_BATCH_KEY").generate(rs, SP)
    for b, l in zip(got, live):
        assert (b.text, b.prompt_tokens, b.completion_tokens) == (l.text, l.prompt_tokens, l.completion_tokens)
        assert b.text == "Explanation of q%s (seed %d)" % (b.id[-1], request_seed(3, b.id, b.sample))
    assert sum(not r.finished for r in got) == 2  # the simulated "length" answers


def test_import_with_requests_needs_every_answer(tmp_path):
    rs = reqs()
    export_batch(rs, SP, "m", tmp_path / "in.jsonl")
    simulate_batch_run(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    with pytest.raises(DataError, match=r"1 requests have no answer, e.g. \['rec9'\]"):
        import_batch(tmp_path / "out.jsonl", requests=rs + [GenRequest("rec9", ())])
    with pytest.raises(DataError, match="answers match no request"):
        import_batch(tmp_path / "out.jsonl", requests=rs[1:])


GOOD = {"custom_id": "r1", "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}}, "error": None}


def _bad(mutate):
    rec = json.loads(json.dumps(GOOD))
    rec["custom_id"] = "r2"
    mutate(rec)
    return json.dumps(rec)


@pytest.mark.parametrize(
    "line, field, words",
    [
        ('{"custom_id": "r2", "response": ', None, "invalid JSON"),
        ("[1, 2]", None, "JSON object"),
        (_bad(lambda r: r.pop("custom_id")), "custom_id", "missing"),
        (_bad(lambda r: r.update(error={"code": "server_error", "message": "boom"})), "error", "request 'r2' failed: server_error: boom"),
        (_bad(lambda r: r.pop("response")), "response", "missing"),
        (_bad(lambda r: r["response"].update(status_code=500, body={"error": {"message": "oops"}})), "response.status_code", "HTTP 500: oops"),
        (_bad(lambda r: r["response"]["body"].pop("choices")), "response.body.choices", "missing"),
        (_bad(lambda r: r["response"]["body"].update(choices=[])), "response.body.choices", "empty"),
        (_bad(lambda r: r["response"]["body"]["choices"][0]["message"].update(content=5)), "response.body.choices[0].message.content", "string"),
        (_bad(lambda r: r["response"]["body"]["usage"].update(prompt_tokens="x")), "response.body.usage.prompt_tokens", "integer"),
        (_bad(lambda r: r.update(custom_id="r1")), "custom_id", "duplicate 'r1' (first on line 1)"),
    ],
    ids=["json", "not-object", "no-custom-id", "error", "no-response", "status", "no-choices", "empty-choices", "content-type", "usage", "duplicate"],
)
def test_malformed_output_names_file_line_and_field(tmp_path, line, field, words):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(DataError) as ei:
        import_batch(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}, line 2")
    assert ei.value.where == 2 and ei.value.field == field
    assert words in msg


def test_missing_output_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        import_batch(tmp_path / "nope.jsonl")
