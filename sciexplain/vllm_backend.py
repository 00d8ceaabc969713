"""The ``vllm`` generation backend: vLLM's offline engine (CUDA), the base model + a LoRA adapter.

* One engine per stage process (``vllm.LLM``), built from the same ``models/base`` folder the other
  backends use; a LoRA adapter folder is applied per request through ``LoRARequest`` (no merge).
  The engine loads the full-precision base (bf16 on the GPU) even where training ran in 4-bit: a QLoRA
  adapter applies to the de-quantised base, and generation is faster and better there. On a card too
  small for that, set ``vllm: {quantization: bitsandbytes}``.
* Prompts are the chat template rendered by our tokenizer and passed as token ids, so the engine
  sees exactly what the ``local`` backend sees (no second BOS).
* The samples of one question go in one request with ``n`` samples and seed
  ``request_seed(seed, id, first sample)``; vLLM gives child ``i`` the seed ``seed + i``, which is
  :func:`sciexplain.generation.request_seed` of sample ``first + i``. So a resumed run asks exactly
  for the missing samples and gets the answers a fresh run would have got.
* vLLM is an optional GPU dependency (``pip install -r requirements-gpu.txt``): it is imported only
  when this backend is built, and a missing install is one clear line.

``engine`` keyword arguments (params ``vllm:``) go straight to ``vllm.LLM``: e.g.
``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size``, ``enforce_eager``, ``max_lora_rank``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .generation import GenRequest, GenResult, SamplingParams, fingerprint, request_seed
from .records import UserError

log = logging.getLogger(__name__)

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank


class VLLMMissing(UserError, RuntimeError):
    pass


def import_vllm():
    """``(vllm module, LoRARequest)``, or one clear line saying how to install it."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as e:
        raise VLLMMissing(
            f"backend 'vllm' needs vLLM, which is not installed ({e.__class__.__name__}: {e}); it runs on a CUDA GPU: "
            "pip install -r requirements-gpu.txt, or choose backend local or openai") from None
    return vllm, LoRARequest


def lora_rank(adapter) -> int:
    """The smallest rank vLLM accepts that holds the adapter's ``r``."""
    cfg = Path(adapter) / "adapter_config.json"
    try:
        r = int(json.loads(cfg.read_text())["r"])
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{cfg}: cannot read the LoRA rank 'r' ({e})") from None
    return next((x for x in _LORA_RANKS if x >= r), r)


def sample_runs(samples: list[int]) -> list[tuple[int, int]]:
    """Sorted sample indices as runs of consecutive ones: ``[0, 1, 2, 5]`` -> ``[(0, 3), (5, 1)]`` (start, n)."""
    runs: list[tuple[int, int]] = []
    for s in sorted(set(samples)):
        if runs and runs[-1][0] + runs[-1][1] == s:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((s, 1))
    return runs


class VLLMBackend:
    name = "vllm"

    def __init__(self, base_dir, adapter=None, engine: dict | None = None,
                 label: str | None = None, batch_size: int = 1024):
        from .local_backend import stop_token_ids
        from .models import load_tokenizer

        vllm, LoRARequest = import_vllm()
        self.tokenizer = load_tokenizer(base_dir, padding_side="left")
        self.stops = stop_token_ids(self.tokenizer)
        kw = {"model": str(base_dir), "tokenizer": str(base_dir), "seed": 0, "dtype": "auto"}
        if adapter:
            kw.update(enable_lora=True, max_loras=1, max_lora_rank=lora_rank(adapter))
        kw.update(engine or {})
        self._vllm = vllm
        self.llm = vllm.LLM(**kw)
        self.lora = LoRARequest(Path(adapter).name or "adapter", 1, str(Path(adapter).resolve())) if adapter else None
        self.model = label or f"{Path(base_dir).name}:{fingerprint(base_dir, adapter)}"
        self.batch_size = int(batch_size)  # requests per call (the response cache records each call's answers)
        self.stats = {"generated_tokens": 0, "seconds": 0.0, "sequences": 0}

    def request_seed(self, req: GenRequest, sampling: SamplingParams) -> int:
        return request_seed(sampling.seed, req.id, req.sample)

    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenResult]:
        """Answers in request order. :func:`~sciexplain.cache.generate_cached` calls this with ``batch_size``
        requests at a time and caches each call's answers before the next call."""
        greedy = sampling.temperature <= 0
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.id, r.messages), []).append(i)
        prompts, params, slots = [], [], []  # slots[k]: request index of each of prompt k's samples
        for (rid, messages), idx in groups.items():
            ids = self.tokenizer.apply_chat_template([{"role": m, "content": c} for m, c in messages],
                                                     add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict):  # transformers 5 may return a BatchEncoding
                ids = ids["input_ids"]
            by_sample = {requests[i].sample: i for i in idx}
            for start, n in sample_runs(list(by_sample)):
                if greedy:  # every sample of a greedy decode is the same: ask once, copy
                    sp = self._vllm.SamplingParams(n=1, temperature=0.0, max_tokens=sampling.max_new_tokens,
                                                   repetition_penalty=sampling.repetition_penalty,
                                                   stop_token_ids=self.stops)
                    prompts.append({"prompt_token_ids": list(ids)})
                    params.append(sp)
                    slots.append([[by_sample[s] for s in range(start, start + n)]])
                    continue
                sp = self._vllm.SamplingParams(
                    n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                    repetition_penalty=sampling.repetition_penalty,
                    seed=request_seed(sampling.seed, rid, start), stop_token_ids=self.stops)
                prompts.append({"prompt_token_ids": list(ids)})
                params.append(sp)
                slots.append([[by_sample[s]] for s in range(start, start + n)])
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=True)
        dt = time.perf_counter() - t0
        results: list[GenResult | None] = [None] * len(requests)
        generated = 0
        for out, targets in zip(outs, slots):
            n_prompt = len(out.prompt_token_ids or [])
            for completion, target in zip(out.outputs, targets):
                n_new = len(completion.token_ids)
                generated += n_new
                for i in target:
                    res = GenResult(id=requests[i].id, sample=requests[i].sample, text=completion.text.strip(),
                                    prompt_tokens=n_prompt, completion_tokens=n_new,
                                    finished=completion.finish_reason == "stop",
                                    extra={"finish_reason": completion.finish_reason})
                    results[i] = res
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"vLLM returned no answer for {len(missing)} of {len(requests)} requests")
        self.stats["generated_tokens"] += generated
        self.stats["seconds"] += dt
        self.stats["sequences"] += len(requests)
        log.info("vLLM: %d sequences, %d new tokens in %.1f s (%.1f tokens/s)",
                 len(requests), generated, dt, generated / max(dt, 1e-9))
        return results  # type: ignore[return-value]

    def tokens_per_second(self) -> float:
        return self.stats["generated_tokens"] / max(self.stats["seconds"], 1e-9)
