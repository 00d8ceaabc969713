"""The in-process llama.cpp backend on the embedded GGUF (SmolLM2-135M): the teacher's default engine.

What must hold: an answer depends only on its own request (order, batch-mates, a resume, the number of engines
do not change it); the shared prompt prefix is evaluated once per engine; budgets and stop flags are right;
the teacher stage runs on it and a rerun answers from the cache.
"""
import json

import pytest
from click.testing import CliRunner

pytest.importorskip("llama_cpp")

from conftest import read_jsonl, write_params  # noqa: E402
from sciexplain import prompts  # noqa: E402
from sciexplain.generation import GenRequest, SamplingParams  # noqa: E402
from sciexplain.records import DataError, UserError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.engine]

QUESTIONS = ["Why is the sky blue?", "How do vaccines train the immune system?", "What is entropy?"]
SAMPLING = SamplingParams(max_new_tokens=20, temperature=0.7, top_p=0.9, seed=3, repetition_penalty=1.1)


def teacher_requests(root, questions=QUESTIONS):
    system = prompts.load_system_prompt(root / "prompts", "none")
    shots = prompts.load_few_shot(root / "prompts", 2, "none")
    return [GenRequest.from_messages(f"q{i}", prompts.teacher_messages(q, system, shots, "none"))
            for i, q in enumerate(questions)]


@pytest.fixture(scope="module")
def backend():
    from sciexplain.llamacpp_backend import LlamaCppBackend

    return LlamaCppBackend("embedded", n_ctx=2048, workers=1)


def texts(results):
    return [(r.id, r.text, r.completion_tokens, r.finished) for r in results]


def test_answers_do_not_depend_on_order_batch_mates_or_engines(backend):
    from conftest import ROOT
    from sciexplain.llamacpp_backend import LlamaCppBackend

    reqs = teacher_requests(ROOT)
    first = backend.generate(reqs, SAMPLING)
    assert texts(backend.generate(list(reversed(reqs)), SAMPLING)[::-1]) == texts(first)
    assert texts(backend.generate(reqs[1:2], SAMPLING)) == texts(first[1:2])  # a resume asks for a subset
    two = LlamaCppBackend("embedded", n_ctx=2048, workers=2)
    assert texts(two.generate(reqs, SAMPLING)) == texts(first)
    other_seed = backend.generate(reqs, SamplingParams(**{**SAMPLING.__dict__, "seed": 4}))
    assert texts(other_seed) != texts(first)  # the seed is used
    assert all(r.text and 0 < r.completion_tokens <= SAMPLING.max_new_tokens + 1 for r in first)
    assert all(r.completion_tokens == SAMPLING.max_new_tokens for r in first if not r.finished)


def test_shared_prefix_is_evaluated_once(backend):
    from conftest import ROOT

    reqs = teacher_requests(ROOT)
    backend.llm.reset()  # nothing cached
    before = dict(backend.stats)
    backend.generate(reqs, SAMPLING)
    full = [backend.prompt_tokens(r) for r in reqs]
    n_prefix = {n for _t, n in full}
    assert len(n_prefix) == 1 and n_prefix.pop() > 500  # system prompt + 2 few-shot turns, the same for all
    prefix = full[0][1]
    evaluated = backend.stats["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    assert evaluated == prefix + sum(len(t) - prefix for t, _n in full)  # the prefix once, then each question
    assert backend.stats["prompt_tokens"] - before["prompt_tokens"] == sum(len(t) for t, _n in full)


def test_greedy_is_repeatable_and_budget_is_kept(backend):
    req = [GenRequest.from_messages("g", [{"role": "user", "content": "Name the largest planet."}])]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    a, b = backend.generate(req, greedy), backend.generate(req, greedy)
    assert texts(a) == texts(b) and a[0].text
    assert a[0].completion_tokens <= 9 and (a[0].finished or a[0].completion_tokens == 8)


def test_context_overflow_names_the_request(backend):
    req = [GenRequest.from_messages("long-one", [{"role": "user", "content": "word " * 2100}])]
    with pytest.raises(UserError, match="request 'long-one'.*exceed the llamacpp context of 2048"):
        backend.generate(req, SamplingParams(max_new_tokens=8))


def test_adapter_on_llamacpp_is_refused():
    from sciexplain.backends import make_backend

    with pytest.raises(DataError, match="serves no LoRA adapter"):
        make_backend("llamacpp", adapter="models/sft", where="engine.backend")


def test_teacher_stage_on_llamacpp_and_cached_rerun(workdir):
    import shutil

    from conftest import ROOT
    from stages import teacher

    prepared = workdir / "data/prepared"
    prepared.mkdir(parents=True)
    (prepared / "sft.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "question": q, "domain": "physics"}) + "\n"
                                                for i, q in enumerate(QUESTIONS[:2])))
    shutil.copytree(ROOT / "prompts", workdir / "prompts")
    write_params(workdir / "params.yaml", {"teacher": {"backend": "llamacpp", "gguf": "embedded", "splits": ["sft"],
                                                       "min_words": 1, "max_new_tokens": 24}})
    r = CliRunner().invoke(teacher.main, [])
    assert r.exit_code == 0, r.output
    out = read_jsonl(workdir / "data/generations/teacher/sft.jsonl")
    assert [x["id"] for x in out] == ["s0", "s1"] and all(x["completion_tokens"] > 0 for x in out)
    assert out[0]["source"] == "llamacpp:embedded"
    cache_lines = (workdir / "data/cache/teacher.jsonl").read_text().splitlines()
    assert len(cache_lines) == 2
    r = CliRunner().invoke(teacher.main, [])  # every answer from the cache: nothing appended
    assert r.exit_code == 0, r.output
    assert (workdir / "data/cache/teacher.jsonl").read_text().splitlines() == cache_lines
    assert read_jsonl(workdir / "data/generations/teacher/sft.jsonl") == out
