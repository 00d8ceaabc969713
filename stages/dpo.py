"""Stage dpo: DPO (TRL) from the SFT adapter on best-vs-worst answer pairs (+ optional extra pairs).

Pairs: ``--pairs`` (written by stage ``select``: {id, question, chosen, rejected, reward_chosen, reward_rejected})
plus, optionally, ``--extra-pairs`` / ``dpo.extra_pairs`` (any {question, chosen, rejected[, id]} JSONL, e.g. human
or judge preferences; list that file in the stage's deps when you set it). Train/val split by question id.
Outputs: the policy adapter (models/dpo), metrics (metrics/dpo.json), DVCLive curves (metrics/dpo).
"""
from pathlib import Path

import click

from sciexplain.cli import params_option, read_params, stage, trainer_outputs
from sciexplain.dist import is_main_process
from sciexplain.records import DataError, read_jsonl, stable_id, write_json

FIELDS = ("question", "chosen", "rejected")


def load_pairs(pairs_path, extra_path=None) -> tuple[list[dict], dict]:
    """The pairs from ``select`` and the extra ones (id = stable_id(question) where missing); counts."""
    pairs = read_jsonl(pairs_path, required=("id",) + FIELDS, allow_empty=True)
    extra = []
    if extra_path:
        for rec in read_jsonl(extra_path, required=FIELDS, allow_empty=True):
            extra.append({**rec, "id": rec.get("id") or stable_id(rec["question"])})
    counts = {"pairs_select": len(pairs), "pairs_extra": len(extra)}
    recs = [{k: r[k] for k in ("id",) + FIELDS} for r in pairs + extra]
    if len(recs) < 2:
        more = f" and {len(extra)} extra" if extra_path else ""
        raise DataError(pairs_path, None, None,
                        f"select produced {len(pairs)} pair{'s' if len(pairs) != 1 else ''}{more}; DPO needs at least 2: "
                        "lower select.min_gap or raise sample.n")
    return recs, counts


def split_pairs(pairs: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by question id (all pairs of a question go to the same side), deterministically."""
    from sciexplain.sft import split_train_val

    ids = sorted({p["id"] for p in pairs})
    _, val = split_train_val([{"id": i} for i in ids], val_fraction, seed)
    val_ids = {r["id"] for r in val}
    return [p for p in pairs if p["id"] not in val_ids], [p for p in pairs if p["id"] in val_ids]


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--pairs", "pairs_path", default="data/rs/dpo_pairs.jsonl", show_default=True)
@click.option("--extra-pairs", "extra_opt", default=None, help="extra {question, chosen, rejected} JSONL (default: dpo.extra_pairs)")
@click.option("--init-adapter", default="models/sft", show_default=True, help="the SFT adapter (policy start and reference)")
@trainer_outputs("dpo")
@params_option
@stage
def main(base_dir, pairs_path, extra_opt, init_adapter, out_dir, metrics_path, live_dir, scratch, params_path):
    from sciexplain.dpo import train_dpo

    from sciexplain import models
    p = read_params(params_path, "dpo")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    extra = extra_opt or p.dpo.extra_pairs
    pairs, counts = load_pairs(pairs_path, extra)
    trainer = p.dpo.trainer.config_kwargs()  # trl.DPOConfig settings; its seed also splits train/val
    train, val = split_pairs(pairs, p.dpo.val_fraction, trainer["seed"])
    hyper = {"beta": p.dpo.beta, "loss_type": p.dpo.loss_type, "trainer": trainer,
             "quantize_4bit": p.model.quantize_4bit}
    out = Path(out_dir)
    # every rank trains and takes part in the save (sciexplain.dist.save_adapter); only the main process writes
    metrics = train_dpo(base_dir, train, val, out, init_adapter=init_adapter, scratch_dir=scratch, live_dir=live_dir,
                        **hyper)
    if not is_main_process():
        return
    metrics.update(counts)
    metrics["extra_pairs"] = str(extra) if extra else None
    write_json(metrics_path, {**metrics, **models.run_facts("policy")})
    click.echo(f"dpo: {len(train)} train / {len(val)} val pairs; eval reward accuracy "
               f"{metrics.get('eval_rewards_accuracies')} margin {metrics.get('eval_rewards_margins')} -> {out}")


if __name__ == "__main__":
    main()
