"""The reward model: LoRA on a 1-logit sequence classifier, trained with TRL's RewardTrainer on
preference pairs (:mod:`sciexplain.reward_train`); a batched scorer every later stage uses.

Input format (training and scoring alike, :class:`ChatEncoder`): the conversation user = question,
assistant = answer, rendered by the tokenizer's chat template and *ending with the end-of-turn
token* (``<|im_end|>`` for SmolLM2; the template's trailing newline is cut), so the classifier,
which pools the last non-pad token, scores the end-of-turn. The pad token is distinct from EOS
(:func:`sciexplain.models._fix_pad_token`), and literal special-token text inside an answer is
tokenized as plain text, so a pad id never occurs inside a sequence.

Length: TRL's RewardTrainer *drops* pairs longer than ``max_length``. We pre-tokenize instead and
truncate the answer (never the question or the end-of-turn) to fit, and count the truncations;
the trainer then drops nothing (checked). Scoring truncates the same way.

Loss (TRL 1.16, ``RewardTrainer.compute_loss``)::

    loss = -logsigmoid(r_chosen - r_rejected - margin).mean()
           + center_rewards_coefficient * mean((r_chosen + r_rejected) ** 2)

so a pair's margin (from the preference strength, or a vote pair's score gap) is how far the chosen reward
must exceed the rejected one before the loss flattens. :func:`constant_loss` is what the constant predictor
``r_chosen = r_rejected`` scores under it: a model that does not beat it on held-out pairs has learned nothing.

Here: the input format, the loss and the scorer. Training lives in :mod:`sciexplain.reward_train`; the evaluation
against people (held-out human pairs, agreement with the annotators' majority) in :mod:`sciexplain.reward_eval`.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .records import DataError, UserError

log = logging.getLogger(__name__)

REWARD_CONFIG = "reward_config.json"
_SENTINEL = "\ue000ANSWER\ue000"


def round4(x) -> float | None:
    """A number for JSON: rounded to 4 decimals, None for missing/NaN."""
    if x is None or x != x:
        return None
    return round(float(x), 4)


# --------------------------------------------------------------------------- input format

def _render(tokenizer, question: str) -> tuple[str, str]:
    """(text before the answer, text after it) of the conversation user=question, assistant=<answer>."""
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    if text.count(_SENTINEL) != 1:
        raise DataError(None, None, "chat_template", "the chat template does not render the assistant turn verbatim")
    before, after = text.split(_SENTINEL)
    return before, after


def chat_prompt(tokenizer, question: str) -> str:
    """The chat-templated question: the conversation text up to where the assistant's answer begins."""
    return _render(tokenizer, question)[0]


def end_of_turn(tokenizer) -> str:
    """What the chat template writes after an assistant answer, without trailing whitespace (``<|im_end|>``).

    The reward model's sequence ends with it, so the classifier pools the end-of-turn token.
    Falls back to the EOS token when the template writes nothing after the answer.
    """
    after = _render(tokenizer, "q")[1].rstrip()
    return after or (tokenizer.eos_token or "")



class ChatEncoder:
    """Token ids of ``chat_prompt(question) + answer + end_of_turn``, at most ``max_length`` long."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.eot_text = end_of_turn(tokenizer)
        self.eot_ids = tokenizer(self.eot_text, add_special_tokens=False)["input_ids"]
        pad = tokenizer.pad_token_id
        if pad is None or pad in self.eot_ids:
            raise UserError(f"the tokenizer's pad token {tokenizer.pad_token!r} must be set and differ from the "
                            f"end-of-turn {self.eot_text!r}, or the reward model pools the wrong token")

    def prompt(self, question: str) -> str:
        return chat_prompt(self.tokenizer, question)

    def fits(self, prompt: str) -> bool:
        """Whether ``max_length`` leaves room for at least one answer token after this prompt."""
        p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.max_length - len(p) - len(self.eot_ids) >= 1

    def encode(self, prompt: str, answer: str) -> tuple[list[int], bool]:
        """(ids, truncated): the answer is cut so the whole sequence fits ``max_length``."""
        tok = self.tokenizer
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        budget = self.max_length - len(p) - len(self.eot_ids)
        if budget < 1:
            raise DataError(None, f"prompt {prompt[-80:]!r}", "max_length",
                            f"the prompt alone is {len(p)} tokens (+{len(self.eot_ids)} end-of-turn); "
                            f"max_length {self.max_length} leaves no room for the answer")
        return p + a[:budget] + self.eot_ids, len(a) > budget


def encode_pairs(pairs: Iterable[Mapping], encoder: ChatEncoder) -> tuple[list[dict], dict]:
    """Rows ``{chosen_ids, rejected_ids, margin}`` for RewardTrainer and counts
    ``{"pairs", "truncated_pairs", "truncated_sequences", "tokens"}``."""
    rows, n_pairs, t_pairs, t_seqs, tokens = [], 0, 0, 0, 0
    for p in pairs:
        c, tc = encoder.encode(p["prompt"], p["chosen"])
        r, tr = encoder.encode(p["prompt"], p["rejected"])
        rows.append({"chosen_ids": c, "rejected_ids": r, "margin": float(p["margin"])})
        n_pairs += 1
        t_pairs += tc or tr
        t_seqs += tc + tr
        tokens += len(c) + len(r)
    return rows, {"pairs": n_pairs, "truncated_pairs": t_pairs, "truncated_sequences": t_seqs, "tokens": tokens}


# --------------------------------------------------------------------------- batching and pooling

def _batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        else:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if side == "left":  # positions must start at 0 on the first real token
        out["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return out


def _forward(model, batch) -> list[float]:
    import torch

    with torch.inference_mode():
        logits = model(**{k: v.to(model.device) for k, v in batch.items()}, use_cache=False).logits
    return logits[:, 0].float().cpu().tolist()


def check_pooling(model, tokenizer, seqs: Sequence[Sequence[int]], end_of_turn_ids: Sequence[int] = ()) -> dict:
    """Does the classifier score the last real token, not a pad? Scores the shortest sequence alone and
    inside right- and left-padded batches with the longest one (equal scores = correct pooling), and
    checks the token it pools (the last non-pad one) is the end-of-turn.

    Returns ``{"alone", "right_padded", "left_padded", "max_abs_diff", "pools_end_of_turn"}``.
    """
    short = min(seqs, key=len)
    long = max(seqs, key=len)
    if len(long) == len(short):
        long = list(long) + list(long)
    pad = tokenizer.pad_token_id
    alone = _forward(model, _batch([short], pad))[0]
    right = _forward(model, _batch([short, long], pad, "right"))[0]
    left = _forward(model, _batch([short, long], pad, "left"))[0]
    ids = _batch([short, long], pad, "right")["input_ids"]
    import torch

    pooled = (torch.arange(ids.shape[1]) * (ids != pad)).argmax(-1)
    pooled_ok = int(pooled[0]) == len(short) - 1 and int(pooled[1]) == len(long) - 1
    eot_ok = not end_of_turn_ids or (short[-1] == end_of_turn_ids[-1] and long[-1] == end_of_turn_ids[-1])
    return {"alone": round4(alone), "right_padded": round4(right), "left_padded": round4(left),
            "max_abs_diff": float(max(abs(alone - right), abs(alone - left))),
            "pools_end_of_turn": bool(pooled_ok and eot_ok)}


# --------------------------------------------------------------------------- scoring

class RewardScorer:
    """Scores answers with a trained reward model (base model + adapter folder from
    :func:`sciexplain.reward_train.train_reward_model`).

    ``score(questions, answers, batch_size)`` returns one float per answer; batches are right-padded
    and sorted by length, and equal one-at-a-time scores (up to float rounding). Results are cached
    by (question, answer) for the scorer's lifetime.
    """

    def __init__(self, base_dir, adapter, max_length: int | None = None, quantize_4bit="auto"):
        from .models import check_model_dir, load_seq_classifier, load_tokenizer

        check_model_dir(adapter, "reward model")
        cfg_path = Path(adapter) / REWARD_CONFIG
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        self.tokenizer = load_tokenizer(base_dir, padding_side="right")
        self.encoder = ChatEncoder(self.tokenizer, max_length or cfg.get("max_length") or 1024)
        self.model = load_seq_classifier(base_dir, adapter, quantize_4bit=quantize_4bit, tokenizer=self.tokenizer)
        self.model.eval()
        self._cache: dict[tuple[str, str], float] = {}
        self.truncated = 0

    def encode(self, question: str, answer: str) -> list[int]:
        ids, cut = self.encoder.encode(self.encoder.prompt(question), answer)
        return ids

    def score_ids(self, seqs: Sequence[Sequence[int]], batch_size: int = 8, progress: bool = False) -> list[float]:
        """Scores of already-encoded sequences, batched (longest first) and returned in input order."""
        bs = max(1, int(batch_size))
        order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
        out: list[float] = [0.0] * len(seqs)
        pad = self.tokenizer.pad_token_id
        starts = range(0, len(order), bs)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="reward scoring", unit="batch", mininterval=2)
        for start in starts:
            idx = order[start:start + bs]
            for i, s in zip(idx, _forward(self.model, _batch([seqs[i] for i in idx], pad))):
                out[i] = s
        return out

    def score(self, questions: Sequence[str], answers: Sequence[str], batch_size: int = 8,
              progress: bool = False) -> list[float]:
        """One reward per (question, answer); answers longer than max_length are truncated (counted in
        ``self.truncated``)."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
        todo = list(dict.fromkeys(k for k in zip(questions, answers) if k not in self._cache))
        if todo:
            seqs = []
            for q, a in todo:
                ids, cut = self.encoder.encode(self.encoder.prompt(q), a)
                self.truncated += cut
                seqs.append(ids)
            self._cache.update(zip(todo, self.score_ids(seqs, batch_size, progress)))
        return [self._cache[k] for k in zip(questions, answers)]

    def check_pooling(self, questions: Sequence[str], answers: Sequence[str]) -> dict:
        seqs = [self.encode(q, a) for q, a in zip(questions, answers)]
        return check_pooling(self.model, self.tokenizer, seqs, self.encoder.eot_ids)


# --------------------------------------------------------------------------- the loss

def pair_loss(chosen_scores: Sequence[float], rejected_scores: Sequence[float], margins: Sequence[float]) -> float | None:
    """The training loss's pairwise part on scored pairs: ``mean(-logsigmoid(r_chosen - r_rejected - margin))``
    (no centering term). None for no pairs."""
    if not (len(chosen_scores) == len(rejected_scores) == len(margins)):
        raise ValueError("pair_loss needs as many chosen scores, rejected scores and margins")
    if not margins:
        return None
    return sum(_softplus(-(float(c) - float(r) - float(m)))
               for c, r, m in zip(chosen_scores, rejected_scores, margins)) / len(margins)


def constant_loss(margins: Sequence[float]) -> float | None:
    """The loss of the constant predictor ``r_chosen = r_rejected`` on pairs with these margins:
    ``mean(-logsigmoid(-margin)) = mean(log(1 + e^margin))`` (log 2 = 0.693 for margin 0; its centering term is 0).
    A reward model has learned something from the pairs only when its held-out loss is below this. None for no pairs."""
    return pair_loss([0.0] * len(margins), [0.0] * len(margins), margins)


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
