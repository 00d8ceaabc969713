"""The ``local`` generation backend: any transformers causal LM (+ LoRA adapter).

Batched with left padding and the KV cache; the samples of one prompt come from one
``num_return_sequences`` call; prompts are grouped by length so a batch carries little padding;
sampling is seeded per batch; generation stops at EOS / end of turn or ``max_new_tokens``.

Reproducibility: the same requests with the same seed give the same answers on CPU. Sampled answers
depend on which prompts share a batch (transformers draws one random stream per batch), so a run that
was resumed from the response cache, or whose request set grew, can sample the not-yet-cached answers
differently than a fresh run would. Greedy decoding (temperature 0) does not have this caveat.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from .generation import GenRequest, GenResult, SamplingParams, fingerprint

log = logging.getLogger(__name__)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the chat end-of-turn token where the vocabulary has one (<|im_end|>, <|eot_id|>, </s>)."""
    ids = []
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


class LocalBackend:
    name = "local"

    def __init__(self, base_dir, adapter=None, quantize_4bit="auto", batch_size: int = 16,
                 model=None, tokenizer=None, label: str | None = None):
        from .models import load_causal_lm, load_tokenizer

        self.tokenizer = tokenizer or load_tokenizer(base_dir, padding_side="left")
        self.tokenizer.padding_side = "left"
        self.lm = model if model is not None else load_causal_lm(base_dir, adapter, quantize_4bit)
        self.lm.eval()
        self.batch_size = int(batch_size)
        # ``model`` identifies these weights in the response cache (the nn.Module is ``lm``)
        self.model = label or f"{Path(base_dir).name}:{fingerprint(base_dir, adapter)}"
        self.stops = stop_token_ids(self.tokenizer)
        self.stats = {"generated_tokens": 0, "seconds": 0.0, "sequences": 0}

    def prompt_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, requests: list[GenRequest], sampling: SamplingParams,
                 on_result: Callable[[int, GenResult], None] | None = None) -> list[GenResult]:
        # group the samples of one conversation: one num_return_sequences call per prompt
        groups: "OrderedDict[tuple, list[int]]" = OrderedDict()
        for i, r in enumerate(requests):
            groups.setdefault(r.messages, []).append(i)
        prompts = []
        for messages, idx in groups.items():
            text = self.prompt_text([{"role": m, "content": c} for m, c in messages])
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            prompts.append((len(ids), text, idx))
        prompts.sort(key=lambda p: (p[0], p[1]))  # by length: little padding per batch
        results: list[GenResult | None] = [None] * len(requests)
        n_max = max((len(p[2]) for p in prompts), default=1)
        per_batch = max(1, self.batch_size // n_max)
        for b, start in enumerate(range(0, len(prompts), per_batch)):
            batch = prompts[start:start + per_batch]
            for i, res in self._generate_batch(batch, requests, sampling, n_max, b):
                results[i] = res
                if on_result is not None:
                    on_result(i, res)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, batch, requests, sampling: SamplingParams, n: int, batch_index: int):
        tok = self.tokenizer
        enc = tok([p[1] for p in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.lm.device) for k, v in enc.items()}
        greedy = sampling.temperature <= 0
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=self.stops, pad_token_id=tok.pad_token_id,
                      num_return_sequences=n, do_sample=not greedy)
        if greedy:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            # seeded per batch from (seed, the batch's first request id): same requests -> same samples
            first = requests[batch[0][2][0]].id
            torch.manual_seed(int(hashlib.sha256(f"{sampling.seed}:{first}:{batch_index}".encode()).hexdigest()[:8], 16))
        t0 = time.perf_counter()
        out = self.lm.generate(**enc, **kwargs)
        dt = time.perf_counter() - t0
        prompt_len = enc["input_ids"].shape[1]
        new = out[:, prompt_len:]
        generated = 0
        for p_i, (n_prompt, _text, idx) in enumerate(batch):
            for s_i, i in enumerate(sorted(idx, key=lambda k: requests[k].sample)):
                row = new[p_i * n + s_i].tolist()
                stop_at = next((j for j, t in enumerate(row) if t in self.stops), None)
                finished = stop_at is not None
                used = row[: stop_at] if finished else row
                n_completion = len(used) + (1 if finished else 0)
                generated += n_completion
                text = tok.decode(used, skip_special_tokens=True).strip()
                yield i, GenResult(id=requests[i].id, sample=requests[i].sample, text=text, prompt_tokens=n_prompt,
                                   completion_tokens=n_completion, finished=finished)
        self.stats["generated_tokens"] += generated
        self.stats["seconds"] += dt
        self.stats["sequences"] += len(batch) * n
        log.info("batch %d: %d sequences, %d new tokens in %.1f s (%.1f tokens/s)",
                 batch_index, len(batch) * n, generated, dt, generated / max(dt, 1e-9))

    def tokens_per_second(self) -> float:
        return self.stats["generated_tokens"] / max(self.stats["seconds"], 1e-9)
