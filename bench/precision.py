"""fp32 vs bf16, per kind of work, side by side on this machine: what ``model.compute_dtype: auto`` rests on.

Each kind of work runs twice on the same inputs, once with ``model.compute_dtype`` forced to ``float32`` and once to
``bfloat16`` (:func:`sciexplain.models.set_compute_dtype`), through the stages' own library functions:

* training (bf16 = autocast over fp32 master weights, TRL/accelerate's ``bf16=True`` on the CPU): a LoRA SFT epoch
  (``train_sft``), a reward-model epoch (``train_reward_model``), a DPO epoch (``train_dpo``); tokens/s and the
  train loss (the two losses should agree to within bf16 rounding);
* scoring: the reward model over real answers (``RewardScorer``, weights loaded in bf16); tokens/s and how far the
  bf16 rewards move (max |diff|, and the share of answer pairs whose order flips);
* generation: the local backend's decode loop at 64 rows (weights in bf16); tokens/s.

``auto`` picks bf16 for a kind of work only where this bench shows it faster on a CPU with native bf16
(:data:`sciexplain.models.CPU_BF16_WORK`); the table prints each ratio with the CPU it was measured on.
"""
from __future__ import annotations

import contextlib
import glob
import tempfile
import time

from sciexplain.records import load_params, read_jsonl

DTYPES = ("float32", "bfloat16")


@contextlib.contextmanager
def forced(dtype: str):
    from sciexplain.models import set_compute_dtype

    set_compute_dtype(dtype)
    try:
        yield
    finally:
        set_compute_dtype(None)


def _teacher_records(n: int) -> list[dict]:
    from .training import records

    return records(n)


def _pairs(n: int) -> list[dict]:
    """Preference pairs ({id, question, chosen, rejected}): the human train pairs where `dvc repro` made them."""
    out = []
    for path in sorted(glob.glob("data/human_pairs/train.jsonl")):
        out += read_jsonl(path, allow_empty=True)
    if not out:
        recs = _teacher_records(2 * n)
        out = [{"id": r["id"], "question": r["question"], "chosen": r["answer"], "rejected": r["answer"][: len(r["answer"]) // 2]}
               for r in recs]
    return [{"margin": 1.0, **p} for p in out[:n]]


def _train_sft(base_dir, n):
    from sciexplain.sft import train_sft

    params = load_params("params.yaml")["sft"]
    trainer = {k: v for k, v in params["trainer"].items() if k not in ("num_train_epochs",)}
    with tempfile.TemporaryDirectory() as scratch:
        m = train_sft(base_dir, _teacher_records(n), [], None, trainer={**trainer, "num_train_epochs": 1},
                      scratch_dir=scratch, lora=params["lora"])
    return {"tokens": m["train_tokens"], "seconds": m["train_seconds"], "loss": m.get("train_loss")}


def _train_reward(base_dir, n):
    from sciexplain.reward_train import train_reward_model

    p = load_params("params.yaml")["reward_model"]
    trainer = {**p["trainer"], "num_train_epochs": 1}
    lora = p.get("lora", {})
    from sciexplain.models import load_tokenizer
    from sciexplain.reward import chat_prompt

    tok = load_tokenizer(base_dir)
    pairs = [{**pr, "prompt": chat_prompt(tok, pr["question"])} for pr in _pairs(n)]
    with tempfile.TemporaryDirectory() as scratch:
        m = train_reward_model(base_dir, pairs, f"{scratch}/out", trainer=trainer, scratch_dir=f"{scratch}/s",
                               lora_r=lora.get("r", 16), lora_alpha=lora.get("alpha", 64),
                               lora_dropout=lora.get("dropout", 0.0), lora_layers=lora.get("layers"))
    return {"tokens": m["tokens"], "seconds": m["runtime_s"], "loss": m.get("train_loss")}


def _train_dpo(base_dir, n):
    from sciexplain.dpo import train_dpo

    p = load_params("params.yaml")["dpo"]
    with tempfile.TemporaryDirectory() as scratch:
        m = train_dpo(base_dir, _pairs(n), [], None, lora=load_params("params.yaml")["sft"]["lora"], beta=p["beta"],
                      loss_type=p["loss_type"], trainer={**p["trainer"], "num_train_epochs": 1}, scratch_dir=scratch)
    return {"tokens": m["train_tokens"], "seconds": m["train_seconds"], "loss": m.get("train_loss")}


def _score(base_dir, reward_dir, n):
    from sciexplain.reward import RewardScorer

    from .scoring import answers

    scorer = RewardScorer(base_dir, reward_dir)
    seqs = [scorer.encode(q, a) for q, a in answers(n)]
    scorer.score_ids(seqs[:2], batch_size=2)  # warm-up
    t0 = time.perf_counter()
    scores = scorer.score_ids(seqs, batch_size=8)
    return {"tokens": sum(len(s) for s in seqs), "seconds": round(time.perf_counter() - t0, 2), "scores": scores}


def _generate(base_dir, n):
    from sciexplain.models import load_causal_lm, load_tokenizer

    from .generation import backend_run, questions

    tok = load_tokenizer(base_dir, padding_side="left")
    model = load_causal_lm(base_dir)
    backend_run(model, tok, questions(2), 1, 8, 2, stop=False)  # warm-up
    t0 = time.perf_counter()
    tokens = backend_run(model, tok, questions(n), 4, 128, 64, stop=False)
    return {"tokens": tokens, "seconds": round(time.perf_counter() - t0, 2)}


def _flips(a: list[float], b: list[float]) -> float:
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    if not pairs:
        return 0.0
    return sum((a[i] - a[j]) * (b[i] - b[j]) < 0 for i, j in pairs) / len(pairs)


def run(base_dir: str, reward_dir: str | None, quick: bool = False) -> dict:
    from sciexplain.machine import facts
    from sciexplain.models import compute_dtype

    n_train, n_score, n_gen = (4, 8, 2) if quick else (16, 48, 16)
    work = {
        "training: LoRA SFT epoch": lambda: _train_sft(base_dir, n_train),
        "training: reward model epoch": lambda: _train_reward(base_dir, n_train),
        "training: DPO epoch": lambda: _train_dpo(base_dir, max(2, n_train // 2)),
        "generation: backend loop, 64 rows": lambda: _generate(base_dir, n_gen),
    }
    if reward_dir:
        work["scoring: reward model, batches of 8"] = lambda: _score(base_dir, reward_dir, n_score)
    rows = {}
    for name, fn in work.items():
        row = {}
        for dt in DTYPES:
            with forced(dt):
                kind = "train" if name.startswith("training") else name.split(":")[0].replace("generation", "generate").replace("scoring", "score")
                used = str(compute_dtype(kind)).replace("torch.", "")
                r = fn()
            r["tokens_per_s"] = round(r["tokens"] / max(r["seconds"], 1e-9), 1)
            r["dtype_used"] = used
            row[dt] = r
            print(f"  precision, {name}, {dt}: {r['tokens_per_s']} tokens/s"
                  + (f", loss {r['loss']:.4f}" if isinstance(r.get("loss"), float) else ""), flush=True)
        row["bf16_speedup"] = round(row["bfloat16"]["tokens_per_s"] / max(row["float32"]["tokens_per_s"], 1e-9), 2)
        if "scores" in row["float32"]:
            a, b = row["float32"].pop("scores"), row["bfloat16"].pop("scores")
            row["max_abs_reward_diff"] = round(max(abs(x - y) for x, y in zip(a, b)), 4)
            row["pair_order_flips"] = round(_flips(a, b), 4)
        rows[name] = row
    return {"machine": facts(), "contenders": rows}
