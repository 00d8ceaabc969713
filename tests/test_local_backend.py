import pytest

from sciexplain.cache import generate_cached
from sciexplain.generation import GenRequest, SamplingParams
from sciexplain.local_backend import LocalBackend

QUESTIONS = ["Why is the sky blue?", "What is photosynthesis?", "How do stars shine and why do they fuse hydrogen?",
             "Why?", "Explain plate tectonics in simple terms for a student."]


def _reqs(n_samples=1):
    return [GenRequest.from_messages(f"q{i}", [{"role": "user", "content": q}], sample=s)
            for i, q in enumerate(QUESTIONS) for s in range(n_samples)]


@pytest.fixture(scope="module")
def backend(tiny_base):
    return LocalBackend(tiny_base, batch_size=4)


def test_batched_greedy_equals_one_at_a_time(backend):
    sp = SamplingParams(max_new_tokens=12, temperature=0.0)
    batched = backend.generate(_reqs(), sp)
    single = [backend.generate([r], sp)[0] for r in _reqs()]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in single]
    assert all(r.completion_tokens <= 12 for r in batched)
    assert [r.id for r in batched] == [f"q{i}" for i in range(len(QUESTIONS))]


def test_n_samples_per_prompt_and_seeds(backend):
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1.0, seed=7)
    out = backend.generate(_reqs(3), sp)
    assert [(r.id, r.sample) for r in out] == [(f"q{i}", s) for i in range(len(QUESTIONS)) for s in range(3)]
    assert len({r.text for r in out if r.id == "q0"}) > 1  # samples differ
    again = backend.generate(_reqs(3), sp)
    assert [r.text for r in again] == [r.text for r in out]  # same seed -> same samples
    other = backend.generate(_reqs(3), SamplingParams(max_new_tokens=10, temperature=1.0, seed=8))
    assert [r.text for r in other] != [r.text for r in out]


def test_finished_flag_and_token_counts(backend):
    # a model forced to emit the stop token first finishes with 1 completion token
    stop = backend.stops[0]

    def force_stop(_module, _inputs, logits):
        logits[..., stop] += 1e4
        return logits

    hook = backend.lm.lm_head.register_forward_hook(force_stop)
    try:
        r = backend.generate(_reqs()[:1], SamplingParams(max_new_tokens=8))[0]
    finally:
        hook.remove()
    assert r.finished and r.completion_tokens == 1 and r.text == ""
    r = backend.generate(_reqs()[:1], SamplingParams(max_new_tokens=3))[0]
    assert r.prompt_tokens > 5 and r.completion_tokens <= 3
    assert backend.tokens_per_second() > 0


def test_cache_makes_no_second_generation(backend, tmp_path):
    sp = SamplingParams(max_new_tokens=6)
    first = generate_cached(backend, _reqs(), sp, tmp_path / "cache.jsonl", progress=False)
    assert first.stats.misses == len(QUESTIONS)
    before = backend.stats["sequences"]
    second = generate_cached(backend, _reqs(), sp, tmp_path / "cache.jsonl", progress=False)
    assert second.stats.hits == len(QUESTIONS) and backend.stats["sequences"] == before
    assert [r.text for r in second] == [r.text for r in first]


def test_a_sample_does_not_depend_on_its_batch_mates(backend):
    """Each sampled row has its own seeded stream (request_seed of seed, id, sample): a resumed run that asks
    for one missing sample, alone or beside other prompts, gets what the full run got."""
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    full = backend.generate(_reqs(3), sp)
    by_key = {(r.id, r.sample): r.text for r in full}
    alone = backend.generate([_reqs(3)[1]], sp)[0]  # q0, sample 1, by itself
    assert alone.text == by_key[("q0", 1)]
    mixed = backend.generate([_reqs(3)[i] for i in (14, 4, 0)], sp)  # other batch, other order
    assert [r.text for r in mixed] == [by_key[("q4", 2)], by_key[("q1", 1)], by_key[("q0", 0)]]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoding_that_drops_stopped_rows_equals_generate(backend, temperature):
    """The backend's decode loop (stopped rows leave the batch) gives what ``generate`` gives (every row kept to the
    end), greedy and seeded sampling, with a repetition penalty, for rows that stop at different steps."""
    import torch
    from transformers import LogitsProcessorList

    from sciexplain.local_backend import SeededSampler

    tok = backend.tokenizer
    texts = [backend.prompt_text([{"role": "user", "content": q}]) for q in QUESTIONS]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    sp = SamplingParams(max_new_tokens=14, temperature=temperature, top_p=0.9, repetition_penalty=1.3, seed=5)
    seeds = list(range(11, 11 + len(texts)))
    sampler = (lambda: SeededSampler(seeds, temperature, 0.9)) if temperature > 0 else (lambda: None)
    stops_before = backend.stops
    def decode():
        order = list(backend._decode(enc["input_ids"], enc["attention_mask"], sp, sampler()))
        assert [len(t) for _, t in order] == sorted(len(t) for _, t in order)  # each row handed on when it stops
        done = dict(order)
        return [done[r] for r in range(len(texts))]

    free = decode()
    # stop on tokens the rows emit at different steps, so rows leave the batch one by one
    backend.stops = stops_before + sorted({free[r][s] for r, s in ((0, 2), (1, 5), (3, 9))} - set(stops_before))
    try:
        got = decode()
        kwargs = dict(max_new_tokens=14, eos_token_id=backend.stops, pad_token_id=tok.pad_token_id, do_sample=False,
                      temperature=None, top_p=None, top_k=None, repetition_penalty=1.3)
        if temperature > 0:
            kwargs["logits_processor"] = LogitsProcessorList([sampler()])
        with torch.inference_mode():
            ref = backend.lm.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:].tolist()
    finally:
        backend.stops = stops_before
    lengths = [len(r) for r in got]
    assert len(set(lengths)) > 2 and min(lengths) < 14  # rows stopped early, at different steps
    for row, want in zip(got, ref):
        assert row == want[: len(row)]
        assert all(t == tok.pad_token_id for t in want[len(row):])  # generate only padded after the stop


def test_repetition_penalty_changes_sampling_and_off_keeps_cache_keys(backend):
    """repetition_penalty > 1 reaches generate (the answers change); 1.0 is off: the same answers as before the
    knob existed and the same cache key (SamplingParams.as_dict leaves it out)."""
    from sciexplain.cache import backend_cache_key as request_key

    plain = SamplingParams(max_new_tokens=16, temperature=0.0)
    off = SamplingParams(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0)
    strong = SamplingParams(max_new_tokens=16, temperature=0.0, repetition_penalty=3.0)
    base = backend.generate(_reqs(), plain)
    assert [r.text for r in backend.generate(_reqs(), off)] == [r.text for r in base]
    assert [r.text for r in backend.generate(_reqs(), strong)] != [r.text for r in base]
    assert "repetition_penalty" not in off.as_dict() and strong.as_dict()["repetition_penalty"] == 3.0
    r = _reqs()[0]
    assert request_key(backend, r, plain) == request_key(backend, r, off) != request_key(backend, r, strong)


def test_adapter_is_merged_for_generation_and_answers_the_same(tiny_base, tmp_path):
    """The merged LoRA is the same function as the unmerged PeftModel: same greedy answers, close logits."""
    import torch
    from peft import get_peft_model

    from sciexplain.models import load_causal_lm, lora_config

    torch.manual_seed(0)
    peft_model = get_peft_model(load_causal_lm(tiny_base, trainable=True), lora_config(r=4, alpha=8, dropout=0.0,
                                target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a LoRA that changes the model (B starts at zero)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = LocalBackend(tiny_base, adapter=tmp_path / "adapter", quantize_4bit=False, batch_size=4)
    assert merged.merged and not hasattr(merged.lm, "peft_config")
    unmerged = LocalBackend(tiny_base, batch_size=4, model=load_causal_lm(tiny_base, tmp_path / "adapter", False),
                            label="unmerged")
    assert not unmerged.merged
    base = LocalBackend(tiny_base, batch_size=4)
    sp = SamplingParams(max_new_tokens=12, temperature=0.0)
    got, want = merged.generate(_reqs(), sp), unmerged.generate(_reqs(), sp)
    assert [r.text for r in got] == [r.text for r in want]
    assert [r.text for r in got] != [r.text for r in base.generate(_reqs(), sp)]  # the adapter matters
    ids = merged.tokenizer("Why is the sky blue?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged.lm(ids).logits, unmerged.lm(ids).logits, rtol=1e-4, atol=1e-4)


def _nucleus(probs, top_p):
    """The reference: tokens kept by top-p (mass before a token <= top_p), renormalised."""
    import torch

    v, i = probs.sort(descending=True)
    keep = (v.cumsum(-1) - v) <= top_p
    out = torch.zeros_like(probs)
    out[i[keep]] = v[keep]
    return out / out.sum()


def test_seeded_sampler_draws_the_nucleus_distribution():
    import torch
    from scipy.stats import chisquare

    from sciexplain.local_backend import SeededSampler

    logits = torch.tensor([2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, -3.0])
    rows = 6000
    sampler = SeededSampler(list(range(rows)), temperature=0.8, top_p=0.9, k=3)  # the nucleus is wider than k: fallback
    tokens = sampler(None, logits.repeat(rows, 1)).argmax(-1)
    want = _nucleus(torch.softmax(logits / 0.8, -1), 0.9)
    seen = torch.bincount(tokens, minlength=len(logits)).double()
    assert (seen[want == 0] == 0).all()  # never a token outside the nucleus
    kept = want > 0
    expected = want[kept].double() / want[kept].double().sum() * seen[kept].sum()
    assert chisquare(seen[kept].numpy(), expected.numpy()).pvalue > 1e-3


def test_seeded_sampler_top_k_shortcut_is_the_full_sort_draw():
    import torch

    from sciexplain.local_backend import SeededSampler

    torch.manual_seed(0)
    scores = torch.randn(64, 500) * 2
    scores[:32, :5] += 8  # half the rows peaked (nucleus inside the top k), half flat (fallback)
    seeds = list(range(100, 164))
    fast = SeededSampler(seeds, 0.7, 0.9, k=16)(None, scores).argmax(-1)
    full = SeededSampler(seeds, 0.7, 0.9, k=500)(None, scores).argmax(-1)
    assert torch.equal(fast, full)
    alone = SeededSampler(seeds[7:8], 0.7, 0.9, k=16)(None, scores[7:8]).argmax(-1)  # no batch-mates
    assert alone.item() == fast[7].item()
    no_top_p = SeededSampler(seeds, 1.0, 1.0)(None, scores).argmax(-1)
    assert no_top_p.shape == (64,) and not torch.equal(no_top_p, fast)
