"""LoRA SFT throughput (the sft stage's own ``train_sft``, TRL SFTTrainer) against the matmul peak.

FLOPs per trained token for LoRA: forward 2N + the backward pass through the frozen base for the activations'
gradients 2N (the base's weight gradients are not computed) = 4N, N = parameters. Padding waste: the share of
pad tokens in the batches, random order vs length-grouped.
"""
from __future__ import annotations

import glob
import random

from sciexplain.records import load_params, read_jsonl

from .common import flops_per_token, matmul_peak_gflops


def records(n: int) -> list[dict]:
    out = []
    for path in sorted(glob.glob("data/generations/teacher/sft.jsonl")):
        out += read_jsonl(path, allow_empty=True)
    out = [r for r in out if r.get("keep", True) and r.get("answer")]
    if not out:
        out = [{"id": f"b{i}", "question": f"Why does thing {i} happen?", "answer": "Because of a mechanism. " * (5 + i % 30)}
               for i in range(n)]
    return out[:n]


def pad_share(lengths: list[int], batch: int, grouped: bool, seed: int = 0) -> float:
    order = sorted(lengths) if grouped else random.Random(seed).sample(lengths, len(lengths))
    real = padded = 0
    for i in range(0, len(order), batch):
        b = order[i:i + batch]
        real += sum(b)
        padded += max(b) * len(b)
    return 1 - real / padded


def run(base_dir: str, n: int = 16, batch_size: int = 4, max_length: int = 448) -> dict:
    """The sft stage's training before (LoRA dropout 0.1, random order) and with params.yaml's ``sft`` (its
    defaults now), 1 epoch over ``n`` teacher answers; ``batch_size`` / ``max_length`` size the padding figures."""
    import tempfile

    import torch

    from sciexplain.models import load_causal_lm, load_tokenizer
    from sciexplain.sft import to_conversations, train_sft

    recs = records(n)
    tok = load_tokenizer(base_dir)
    lengths = [min(max_length, len(tok.apply_chat_template(c["prompt"] + c["completion"], tokenize=True,
                                                           return_dict=False)))
               for c in to_conversations(recs)]
    per_token = 2 * flops_per_token(load_causal_lm(base_dir))  # 4N
    peak = matmul_peak_gflops(threads=torch.get_num_threads())
    params = load_params("params.yaml")["sft"]
    stage = {k: params["trainer"][k] for k in ("per_device_train_batch_size", "max_length", "seed",
                                               "train_sampling_strategy") if k in params["trainer"]}
    contenders = {  # (lora, trainer settings): the sft stage's before this issue, and its defaults now (params.yaml)
        "LoRA dropout 0.1, random order (before)": ({**params["lora"], "dropout": 0.1},
                                                    {**stage, "train_sampling_strategy": "random"}),
        "params.yaml's sft (the default)": (params["lora"], stage),
    }
    rows = {}
    for name, (lora, trainer) in contenders.items():
        with tempfile.TemporaryDirectory() as scratch:
            m = train_sft(base_dir, recs, [], None, trainer={**trainer, "num_train_epochs": 1},
                          scratch_dir=scratch, lora=lora)
        tps = m["train_tokens_per_s"]
        rows[name] = {"tokens_per_s": round(tps, 1), "train_seconds": m["train_seconds"],
                      "train_tokens": m["train_tokens"], "share_of_peak": round(tps * per_token / (peak * 1e9), 3),
                      "lora_dropout": lora["dropout"], "order": trainer.get("train_sampling_strategy", "random")}
        print(f"  training, {name}: {tps:.1f} tokens/s = {rows[name]['share_of_peak']:.1%} of the {peak:.0f} GFLOP/s "
              "matmul peak", flush=True)
    first, default = rows.values()
    tps, share = default["tokens_per_s"], default["share_of_peak"]
    return {"examples": len(recs), "contenders": rows, "ratio_vs_before": round(tps / first["tokens_per_s"], 2),
            "tokens_per_s": tps, "flops_per_token": per_token, "matmul_peak_gflops": round(peak, 1),
            "share_of_peak": share, "target_share_of_peak": 0.6,
            "pad_share_random_order": round(pad_share(lengths, batch_size, False), 3),
            "pad_share_length_grouped": round(pad_share(lengths, batch_size, True), 3)}
