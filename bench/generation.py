"""Generation contenders on the same work: Q questions x S samples x T new tokens, sampling (T 0.7, top-p 0.9).

Every HF contender decodes exactly T tokens per sequence (``min_new_tokens = max_new_tokens``), so the work is
identical and tokens/s compare directly. Contenders:

* ``study loop``: one ``model.generate(do_sample=True)`` per sample, batch 1 (the study's way); measured on the
  first ``loop_sequences`` sequences only (at ~18 tokens/s the whole work would take minutes) -- a rate.
* ``batched HF (generate, before)``: what :class:`sciexplain.local_backend.LocalBackend` did until 2026-11-26:
  ``model.generate`` on prompts sorted by length, 16 rows, each row sampled from its own seeded stream
  (:class:`SeededSampler`).
* ``backend loop``: :class:`LocalBackend` itself (its own decode loop; no stop token here, so the work is the same).
* ``stopping work``: an answer stage's work (answers stop at their end of turn): ``generate`` computes every row
  until the longest stops; the backend loop drops a row when it stops.
* ``full-sort sampler (before)``: the same with the sampler the local backend had before (a full-vocabulary sort
  and a 49k-way multinomial per row and step), to measure the top-k nucleus draw that replaced it.
* levers on that path: rows per batch (32, 64), no length sorting, eager attention instead of SDPA, one thread,
  a static KV cache with ``torch.compile`` (``--compile``).
* ``llama.cpp in-process``: :class:`sciexplain.llamacpp_backend.LlamaCppBackend` (one engine per core, one
  thread each); its answers stop at their end of turn, so its rate is completion tokens / wall time.
* ``llama.cpp``: the embedded GGUF behind llama.cpp's OpenAI-compatible server (one stream: it serves calls one
  at a time), through the project's ``openai`` backend; its answers stop at their end of turn, so its rate is
  completion tokens / wall time.

The roofline: the machine's fp32 matmul GFLOP/s measured in the same run / (2 x parameters) FLOP per token.
"""
from __future__ import annotations

from pathlib import Path

from .common import flops_per_token, matmul_peak_gflops, timed

TEMPERATURE, TOP_P = 0.7, 0.9


def questions(n: int) -> list[str]:
    from sciexplain.records import read_jsonl

    return [r["question"] for r in read_jsonl("data/raw/questions.jsonl", required=("question",))[:n]]


def _prompt_ids(tok, qs):
    from sciexplain.prompts import student_messages

    return [tok.apply_chat_template(student_messages(q), add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for q in qs]


class FullSortSampler:
    """The local backend's sampler before 2026-11-26 (a lever measured against it): a full-vocabulary sort for top-p
    and a multinomial over the whole vocabulary per row and step."""

    def __init__(self, seeds, temperature, top_p):
        import torch

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p > self.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        out = torch.full_like(scores, float("-inf"))
        for r, gen in enumerate(self.generators):
            out[r, torch.multinomial(probs[r], 1, generator=gen)] = 0.0
        return out


def hf_batched(model, tok, prompt_ids, samples: int, new_tokens: int, rows_per_batch: int, sort: bool = True,
               seed: int = 0, sampler_cls=None) -> int:
    """Tokens generated; the LocalBackend recipe (left padding, one seeded stream per row)."""
    import torch
    from transformers import LogitsProcessorList

    from sciexplain.generation import request_seed
    from sciexplain.local_backend import SeededSampler

    rows = [(i, s) for i in range(len(prompt_ids)) for s in range(samples)]
    if sort:
        rows.sort(key=lambda r: (len(prompt_ids[r[0]]), r))
    total = 0
    for start in range(0, len(rows), rows_per_batch):
        batch = rows[start:start + rows_per_batch]
        width = max(len(prompt_ids[i]) for i, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (i, _) in enumerate(batch):
            p = prompt_ids[i]
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        sampler = (sampler_cls or SeededSampler)([request_seed(seed, str(i), s) for i, s in batch], TEMPERATURE, TOP_P)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 logits_processor=LogitsProcessorList([sampler]), pad_token_id=tok.pad_token_id)
        total += (out.shape[1] - width) * len(batch)
    return total


def generate_decode(self, input_ids, attention_mask, sampling, sampler):
    """``LocalBackend._decode`` as it was before 2026-11-26: ``model.generate``, every row computed until the longest
    stops (a contender: the backend with this swapped in)."""
    import torch
    from transformers import LogitsProcessorList

    kwargs = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=self.stops or None,
                  pad_token_id=self.tokenizer.pad_token_id, do_sample=False, temperature=None, top_p=None, top_k=None,
                  repetition_penalty=sampling.repetition_penalty)
    if sampler is not None:
        kwargs["logits_processor"] = LogitsProcessorList([sampler])
    with torch.inference_mode():
        out = self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return enumerate(out[:, input_ids.shape[1]:].tolist())


def backend_run(model, tok, qs: list[str], samples: int, new_tokens: int, rows_per_batch: int, stop: bool = True,
                before: bool = False, repetition_penalty: float = 1.0) -> int:
    """Completion tokens of :class:`LocalBackend` itself on the work (``stop=False``: no stop token, exactly
    ``new_tokens`` per row, the fixed work of the other contenders); ``before``: with ``generate`` as its decoder."""
    import types

    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.local_backend import LocalBackend
    from sciexplain.prompts import student_messages

    be = LocalBackend(None, model=model, tokenizer=tok, batch_size=rows_per_batch, label="bench")
    if not stop:
        be.stops = []
    if before:
        be._decode = types.MethodType(generate_decode, be)
    reqs = [GenRequest.from_messages(str(i), student_messages(q), sample=s) for i, q in enumerate(qs) for s in range(samples)]
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=0,
                        repetition_penalty=repetition_penalty)
    return sum(r.completion_tokens for r in be.generate(reqs, sp))


def study_loop(model, tok, prompt_ids, samples: int, new_tokens: int, limit: int) -> int:
    import torch

    rows = [(i, s) for i in range(len(prompt_ids)) for s in range(samples)][:limit]
    total = 0
    for i, s in rows:
        torch.manual_seed(1000 * i + s)
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([prompt_ids[i]]), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P,
                                 top_k=None, pad_token_id=tok.pad_token_id)
        total += out.shape[1] - len(prompt_ids[i])
    return total


def llama_cpp(gguf: Path, qs: list[str], samples: int, new_tokens: int) -> tuple[int, float] | None:
    """(completion tokens, seconds) through the openai backend against llama.cpp's server; None if not installed."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from llama_server import LlamaServer, llama_cpp_available

    if not llama_cpp_available():
        return None
    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.openai_backend import OpenAIBackend
    from sciexplain.prompts import student_messages

    with LlamaServer(gguf, alias="base", n_ctx=2048) as srv:
        be = OpenAIBackend("base", base_url=srv.base_url, api_key_env=None, max_concurrency=1)
        reqs = [GenRequest.from_messages(str(i), student_messages(q), sample=s)
                for i, q in enumerate(qs) for s in range(samples)]
        sp = SamplingParams(max_new_tokens=new_tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=0)
        be.generate(reqs[:1], sp)  # warm-up (model load, first prompt)
        res, dt = timed(lambda: be.generate(reqs, sp))
    return sum(r.completion_tokens for r in res), dt


def llama_cpp_inprocess(gguf: Path, qs: list[str], samples: int, new_tokens: int) -> tuple[int, float] | None:
    """(completion tokens, seconds) of the in-process llamacpp backend; None if llama-cpp-python is missing."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.llamacpp_backend import LlamaCppBackend
    from sciexplain.prompts import student_messages

    be = LlamaCppBackend(gguf, n_ctx=2048)
    reqs = [GenRequest.from_messages(str(i), student_messages(q), sample=s) for i, q in enumerate(qs) for s in range(samples)]
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=TEMPERATURE, top_p=TOP_P, seed=0)
    be.generate(reqs[:1], sp)  # warm-up
    res, dt = timed(lambda: be.generate(reqs, sp))
    return sum(r.completion_tokens for r in res), dt


def run(base_dir: str, gguf: Path | None, n_questions: int = 16, samples: int = 4, new_tokens: int = 128,
        loop_sequences: int = 8, compile_lever: bool = False, quick: bool = False) -> dict:
    """Every contender's tokens/s, its ratio to the study loop, and the share of the roofline."""
    import torch
    from transformers import AutoModelForCausalLM

    from sciexplain.models import load_tokenizer

    tok = load_tokenizer(base_dir, padding_side="left")
    qs = questions(n_questions)
    ids = _prompt_ids(tok, qs)
    threads = torch.get_num_threads()

    def load(attn="sdpa"):
        m = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation=attn, dtype=torch.float32)
        return m.eval()

    model = load()
    peak = matmul_peak_gflops(threads=threads)
    per_token = flops_per_token(model)
    roofline = peak * 1e9 / per_token
    rows = {}

    def measure(name, fn, note=""):
        fn_warm = fn  # each contender's first batch includes its own warm-up; the work is large enough
        tokens, dt = timed(fn_warm)
        rows[name] = {"tokens": tokens, "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1), "note": note}
        print(f"  {name}: {tokens} tokens in {dt:.1f} s = {tokens / dt:.1f} tokens/s", flush=True)

    hf_batched(model, tok, ids[:1], 1, 4, 1)  # warm-up
    measure("study loop (1 generate per sample)", lambda: study_loop(model, tok, ids, samples, new_tokens, loop_sequences),
            f"first {loop_sequences} sequences")
    measure("batched HF, 16 rows, full-sort sampler (before)",
            lambda: hf_batched(model, tok, ids, samples, new_tokens, 16, sampler_cls=FullSortSampler))
    measure("batched HF, 16 rows (generate, before)", lambda: hf_batched(model, tok, ids, samples, new_tokens, 16))
    if not quick:
        measure("batched HF, 32 rows", lambda: hf_batched(model, tok, ids, samples, new_tokens, 32))
    measure("batched HF, 64 rows", lambda: hf_batched(model, tok, ids, samples, new_tokens, 64))
    measure("backend loop, 16 rows", lambda: backend_run(model, tok, qs, samples, new_tokens, 16, stop=False))
    measure("backend loop, 64 rows (one batch, as the default)", lambda: backend_run(model, tok, qs, samples, new_tokens, 64, stop=False))
    if not quick:
        measure("batched HF, 64 rows, unsorted", lambda: hf_batched(model, tok, ids, samples, new_tokens, 64, sort=False))
        torch.set_num_threads(1)
        try:
            measure("batched HF, 64 rows, 1 thread", lambda: hf_batched(model, tok, ids, samples, new_tokens, 64))
        finally:
            torch.set_num_threads(threads)
        eager = load("eager")
        measure("batched HF, 64 rows, eager attention", lambda: hf_batched(eager, tok, ids, samples, new_tokens, 64))
        del eager
    if compile_lever:
        static = load()
        static.generation_config.cache_implementation = "static"
        static.forward = torch.compile(static.forward, dynamic=False)
        try:
            hf_batched(static, tok, ids[:16], 4, 8, 64)  # compile (not timed)
            measure("batched HF, 64 rows, static cache + torch.compile",
                    lambda: hf_batched(static, tok, ids, samples, new_tokens, 64))
        except Exception as e:  # noqa: BLE001 -- a lever that does not work here is a result, not a crash
            rows["batched HF, 64 rows, static cache + torch.compile"] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(f"  static cache + compile: failed: {e}"[:300])
    if gguf is not None:
        got = llama_cpp_inprocess(gguf, qs, samples, new_tokens)
        if got is not None:
            tokens, dt = got
            rows["llama.cpp in-process (llamacpp backend)"] = {
                "tokens": tokens, "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1),
                "note": "stops at end of turn; one engine per core, one thread each"}
            print(f"  llama.cpp in-process: {tokens} tokens in {dt:.1f} s = {tokens / dt:.1f} tokens/s", flush=True)
    if gguf is not None and not quick:
        got = llama_cpp(gguf, qs, samples, new_tokens)
        if got is None:
            rows["llama.cpp server (openai backend)"] = {"error": "llama-cpp-python not installed (make setup)"}
        else:
            tokens, dt = got
            rows["llama.cpp server (openai backend)"] = {"tokens": tokens, "seconds": round(dt, 2),
                                                         "tokens_per_s": round(tokens / dt, 1),
                                                         "note": "stops at end of turn; one stream"}
            print(f"  llama.cpp: {tokens} tokens in {dt:.1f} s = {tokens / dt:.1f} tokens/s", flush=True)
    # the answer stages' work: answers stop at their end of turn (mean ~55% of the cap), so rows finish at different
    # steps; generate computes every row until the longest stops, the backend loop drops a row when it stops
    stop_qs = questions(4 if quick else 24)
    cap = 48 if quick else 384
    stopping = {}
    for name, rows_per_batch, before in (("generate (before), 16 rows", 16, True), ("backend loop, 16 rows", 16, False),
                                         (f"backend loop, all {len(stop_qs)} rows in one batch", len(stop_qs), False)):
        tokens, dt = timed(lambda: backend_run(model, tok, stop_qs, 1, cap, rows_per_batch, before=before,
                                               repetition_penalty=1.1))
        stopping[name] = {"tokens": tokens, "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1)}
        print(f"  stopping work, {name}: {tokens} tokens in {dt:.1f} s = {tokens / dt:.1f} tokens/s", flush=True)
    first = next(iter(stopping.values()))
    for r in stopping.values():
        r["vs_generate"] = round(first["seconds"] / r["seconds"], 2)
    study = rows["study loop (1 generate per sample)"]["tokens_per_s"]
    for r in rows.values():
        if "tokens_per_s" in r:
            r["vs_study_loop"] = round(r["tokens_per_s"] / study, 2)
            r["of_roofline"] = round(r["tokens_per_s"] / roofline, 3)
    best_name, best = max(((k, v) for k, v in rows.items() if "tokens_per_s" in v), key=lambda kv: kv[1]["tokens_per_s"])
    return {
        "work": f"{n_questions} questions x {samples} samples x {new_tokens} new tokens, T {TEMPERATURE}, top-p {TOP_P}",
        "matmul_peak_gflops": round(peak, 1), "flops_per_token": per_token, "roofline_tokens_per_s": round(roofline, 1),
        "threads": threads, "contenders": rows, "best": best_name,
        "ratio_vs_study_loop": best["vs_study_loop"], "target_vs_study_loop": 10.0,
        "share_of_roofline": best["of_roofline"], "target_share_of_roofline": 0.5,
        "stopping_work": {"work": f"{len(stop_qs)} questions x 1 sample, up to {cap} new tokens, stop at end of turn, "
                                  "repetition penalty 1.1 (an answer stage)", "contenders": stopping},
    }
