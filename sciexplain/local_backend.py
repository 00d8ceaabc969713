"""The ``local`` generation backend: any transformers causal LM (+ LoRA adapter).

Batched with left padding and the KV cache; a LoRA adapter is merged into the fp32 weights for generation; the
samples of one prompt are rows of one batch; prompts are grouped by length so a batch carries little padding; a row
stops at EOS / end of turn or ``max_new_tokens`` and then leaves the batch (:meth:`LocalBackend._decode`: the
decoding of ``generate`` without computing finished rows); its answer is handed on (cached, counted) at once.

Seeds: every sampled row draws its tokens from its own random stream, seeded with
:func:`sciexplain.generation.request_seed` (seed, request id, sample index) -- the same rule as the
vLLM and OpenAI backends -- through :class:`SeededSampler` (temperature and nucleus top-p, then one
draw per row). So a sample does not depend on which other prompts share its batch: a run resumed from
the response cache, or one whose request set grew, samples exactly what a fresh run samples (up to
float rounding between different padding widths). Greedy decoding (temperature 0) is plain argmax.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import torch

from .generation import GenRequest, GenResult, SamplingParams, fingerprint, request_seed

log = logging.getLogger(__name__)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the chat end-of-turn token where the vocabulary has one (<|im_end|>, <|eot_id|>, </s>)."""
    ids = []
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


class SeededSampler:
    """A logits processor that samples each row from its own ``torch.Generator`` (temperature, then top-p)
    and returns logits whose argmax is the drawn token; ``generate`` then runs in greedy mode.

    transformers draws every row of a batch from one global stream, so a row's sample would depend on its
    batch-mates; here row ``r`` depends only on ``seeds[r]`` and its own logits.

    The draw: the nucleus is the smallest set of most probable tokens whose mass reaches ``top_p`` (a token is
    kept when the mass before it is <= ``top_p``); one uniform ``u`` from the row's stream picks the token by
    inverse CDF over the nucleus in descending-probability order. The nucleus is found among the ``k`` most
    probable tokens (``topk``), with a full sort only for a row whose top ``k`` do not reach ``top_p``: the same
    draw at a fraction of the cost (a full-vocabulary sort and a multinomial over 49k tokens per row and step
    took most of a decoding step on a CPU, bench/RESULTS.md).
    """

    VERSION = "nucleus-icdf-1"  # part of the local backend's cache key: a change of the draw is a new cache

    def __init__(self, seeds: list[int], temperature: float, top_p: float, k: int = 128):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p, self.k = float(temperature), float(top_p), int(k)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token id per row of ``probs`` (rows sum to 1)."""
        rows, vocab = probs.shape
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators]).to(probs.dtype)
        top_p = self.top_p if self.top_p < 1.0 else float("inf")
        vals, idx = probs.topk(min(self.k, vocab), dim=-1) if top_p != float("inf") else probs.sort(-1, descending=True)
        tokens = torch.empty(rows, dtype=torch.long)
        short = (vals.sum(-1) <= top_p).tolist()  # the nucleus may reach past the top k: sort that row fully
        for r in range(rows):
            v, i = (probs[r].sort(descending=True) if short[r] and vals.shape[-1] < vocab else (vals[r], idx[r]))
            csum = v.cumsum(-1)
            m = max(1, int(((csum - v) <= top_p).sum()))  # kept: a prefix of the sorted tokens, >= 1
            kept = csum[:m]
            j = int(torch.searchsorted(kept, u[r] * kept[-1], right=True))
            tokens[r] = i[min(j, m - 1)]
        return tokens

    def keep(self, rows: list[int]) -> None:
        """Only these rows go on (the others stopped): their streams continue where they were."""
        self.generators = [self.generators[r] for r in rows]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, self.draw(probs).unsqueeze(-1), 0.0)
        return out


class LocalBackend:
    name = "local"

    def __init__(self, base_dir, adapter=None, quantize_4bit="auto", batch_size: int = 16,
                 model=None, tokenizer=None, label: str | None = None):
        from .models import load_causal_lm, load_tokenizer, use_4bit

        self.tokenizer = tokenizer or load_tokenizer(base_dir, padding_side="left")
        self.tokenizer.padding_side = "left"
        self.lm = model if model is not None else load_causal_lm(base_dir, adapter, quantize_4bit)
        self.merged = False
        if model is None and adapter and not use_4bit(quantize_4bit):
            # the LoRA folded into the fp32 weights: the same function, without 7 extra matmul pairs per layer and
            # step (a 4-bit base is left unmerged: folding into NF4 weights would round the adapter away)
            self.lm = self.lm.merge_and_unload()
            self.merged = True
        self.lm.eval()
        self.batch_size = int(batch_size)
        # ``model`` identifies these weights in the response cache (the nn.Module is ``lm``)
        self.model = label or f"{Path(base_dir).name}:{fingerprint(base_dir, adapter)}"
        self.cache_id = f"{self.model}|sampler:{SeededSampler.VERSION}"
        self.dtype = str(next(self.lm.parameters()).dtype).replace("torch.", "")
        if self.dtype != "float32":  # bf16 answers differ from fp32 ones: never served from each other's cache
            self.cache_id += f"|dtype:{self.dtype}"
        self.stops = stop_token_ids(self.tokenizer)
        self.stats = {"generated_tokens": 0, "seconds": 0.0, "sequences": 0}

    def request_seed(self, req: GenRequest, sampling: SamplingParams) -> int:
        return request_seed(sampling.seed, req.id, req.sample)

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
    def _decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sampling: SamplingParams,
                sampler: "SeededSampler | None") -> Iterator[tuple[int, list[int]]]:
        """``(row, new tokens)`` of every row, yielded as soon as the row is done (a finished row ends with its stop
        token), so its answer is cached and counted while the others still run.

        The decoding of ``generate`` (left padding, positions from the mask, the repetition penalty over the whole
        row, then the seeded draw or argmax), with one difference: a row that stops leaves the batch (its KV cache,
        mask, ids and random stream are dropped), so the rows still running no longer carry it. ``generate`` keeps
        computing finished rows until the longest row stops; with answers that stop at ~55% of the token cap on
        average, that was ~45% of every batch's work (bench/RESULTS.md). A row's tokens depend only on its own
        prompt, seed and logits, as before.
        """
        from transformers import DynamicCache
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

        penalty = (RepetitionPenaltyLogitsProcessor(float(sampling.repetition_penalty))
                   if sampling.repetition_penalty != 1.0 else None)
        stops = torch.tensor(self.stops, device=input_ids.device)
        rows = input_ids.shape[0]
        out: list[list[int]] = [[] for _ in range(rows)]
        live = list(range(rows))  # batch position -> row
        ids, mask = input_ids, attention_mask
        position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.lm.config)
        step_ids, step_pos = ids, position
        for _ in range(sampling.max_new_tokens):
            logits = self.lm(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
            if penalty is not None:
                logits = penalty(ids, logits)
            if sampler is not None:
                token = sampler.draw(torch.softmax(logits / sampler.temperature, dim=-1)).to(ids.device)
            else:
                token = logits.argmax(-1)
            for r, t in zip(live, token.tolist()):
                out[r].append(t)
            stopped = torch.isin(token, stops)
            if len(out[live[0]]) == sampling.max_new_tokens or bool(stopped.all()):
                break
            for r, done in zip(live, stopped.tolist()):
                if done:
                    yield r, out[r]
            ids = torch.cat([ids, token[:, None]], dim=-1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            step_ids, step_pos = token[:, None], position[:, -1:] + 1
            position = step_pos
            if bool(stopped.any()):  # the stopped rows leave the batch
                keep = (~stopped).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                ids, mask, step_ids, step_pos, position = (t[keep] for t in (ids, mask, step_ids, step_pos, position))
                kept = keep.tolist()
                live = [live[k] for k in kept]
                if sampler is not None:
                    sampler.keep(kept)
        for r in live:
            yield r, out[r]

    def _generate_batch(self, batch, requests, sampling: SamplingParams, n: int, batch_index: int):
        tok = self.tokenizer
        # one row per request: the samples of a prompt are adjacent rows of the same prompt
        rows = [(n_prompt, text, i) for n_prompt, text, idx in batch for i in sorted(idx, key=lambda k: requests[k].sample)]
        enc = tok([r[1] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        sampler = None
        if sampling.temperature > 0:
            seeds = [self.request_seed(requests[r[2]], sampling) for r in rows]
            sampler = SeededSampler(seeds, sampling.temperature, sampling.top_p)
        t0 = time.perf_counter()
        generated = 0
        for r, row in self._decode(enc["input_ids"].to(self.lm.device), enc["attention_mask"].to(self.lm.device),
                                   sampling, sampler):
            n_prompt, _text, i = rows[r]
            stop_at = next((j for j, t in enumerate(row) if t in self.stops), None)
            finished = stop_at is not None
            used = row[: stop_at] if finished else row
            n_completion = len(used) + (1 if finished else 0)
            generated += n_completion
            text = tok.decode(used, skip_special_tokens=True).strip()
            yield i, GenResult(id=requests[i].id, sample=requests[i].sample, text=text, prompt_tokens=n_prompt,
                               completion_tokens=n_completion, finished=finished)
        dt = time.perf_counter() - t0
        self.stats["generated_tokens"] += generated
        self.stats["seconds"] += dt
        self.stats["sequences"] += len(rows)
        log.info("batch %d: %d sequences, %d new tokens in %.1f s (%.1f tokens/s)",
                 batch_index, len(rows), generated, dt, generated / max(dt, 1e-9))

    def tokens_per_second(self) -> float:
        return self.stats["generated_tokens"] / max(self.stats["seconds"], 1e-9)
