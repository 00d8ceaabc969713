"""Stage sft (and rs): LoRA SFT with TRL on teacher answers (or forum answers, or selected best-of-N answers).

``--data teacher``: data/generations/teacher/sft.jsonl (kept answers) — the study's revised round;
``--data forum``: the forum answers that ``prepare`` kept — the study's first round;
``--data <file.jsonl>``: any {id, question, answer} file, e.g. the rejection-sampling winners (stage rs),
with ``--init-adapter`` to continue from the SFT adapter.
"""
from pathlib import Path

import click

from sciexplain.cli import params_option, read_params, stage, trainer_outputs
from sciexplain.dist import is_main_process
from sciexplain.records import DataError, read_jsonl, write_json


def load_targets(data: str, prepared: Path, teacher: Path) -> list[dict]:
    if data == "teacher":
        recs = [r for r in read_jsonl(teacher) if r.get("keep", True) and r.get("answer")]
    elif data == "forum":
        recs = [r for r in read_jsonl(prepared) if r.get("answer")]
        if not recs:
            raise DataError(prepared, None, "answer", "sft.data=forum needs forum answers: add a stackexchange or qa "
                            "source with answers to prepare.sources")
    else:
        recs = [r for r in read_jsonl(data, required=("id", "question", "answer"), allow_empty=True)]
    if len(recs) < 2:
        raise DataError(data, None, "answer", f"only {len(recs)} training examples; for the rs round loosen "
                        "select.threshold / select.quantile or raise sample.n")
    return recs


@click.command()
@click.option("--section", default="sft", show_default=True, help="params section (sft or rs)")
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--data", "data_opt", default=None, help="teacher | forum | a JSONL file (default: <section>.data)")
@click.option("--prepared", default="data/prepared/sft.jsonl", show_default=True)
@click.option("--teacher", default="data/generations/teacher/sft.jsonl", show_default=True)
@click.option("--init-adapter", default=None, help="continue training this adapter")
@trainer_outputs("sft")
@params_option
@stage
def main(section, base_dir, data_opt, prepared, teacher, init_adapter, out_dir, metrics_path, live_dir, scratch, params_path):
    from sciexplain.sft import split_train_val, train_sft

    from sciexplain import models
    p = read_params(params_path, section)
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    cfg = getattr(p, section)  # p.sft or p.rs
    data = data_opt or cfg.data
    recs = load_targets(data, Path(prepared), Path(teacher))
    trainer = cfg.trainer.config_kwargs()  # trl.SFTConfig settings; its seed also splits train/val
    train, val = split_train_val(recs, cfg.val_fraction, trainer["seed"])
    out = Path(out_dir)
    lora = None if init_adapter else {  # continuing an adapter keeps its LoRA shape
        "r": cfg.lora.r, "alpha": cfg.lora.alpha,
        "dropout": cfg.lora.dropout, "target_modules": cfg.lora.target_modules}
    # every rank trains and takes part in the save; the adapter is written to a scratch folder and swapped into
    # place by the main process once all ranks have saved (sciexplain.dist.save_adapter)
    metrics = train_sft(base_dir, train, val, out, init_adapter=init_adapter, lora=lora, trainer=trainer, section=section,
                        quantize_4bit=p.model.quantize_4bit, scratch_dir=scratch, live_dir=live_dir)
    if not is_main_process():
        return
    metrics["data"] = data
    write_json(metrics_path, {**metrics, **models.run_facts("train")})
    click.echo(f"{section}: eval loss {metrics.get('eval_loss')} (base {metrics.get('eval_loss_base')}) -> {out}")


if __name__ == "__main__":
    main()
