"""Stage reward_model: a LoRA reward model trained on people first, measured on held-out human pairs.

Training pairs: the validate stage's human pairs (``<human-pairs>/train.jsonl``) and people's annotation files on
the comparison sheets named in ``reward_model.sources``; judge-labelled pairs (the rubric judging the base/sft/
teacher answers on the rm split, and judge-* files on those sheets) only with ``reward_model.judge_labels: true``,
and then the metrics name each judge and its pair count. A dev split of the training questions
(``reward_model.val_fraction``) picks the epoch: up to ``reward_model.trainer.num_train_epochs``, stopping once the dev loss beats
the constant predictor's (``reward_model.until_beats_constant``) or after ``reward_model.early_stopping_patience``
epochs without a better dev loss; the best dev epoch is kept.

Held out: ``<human-pairs>/test.jsonl`` (people's labels, by question, never trained on): accuracy with Wilson and
question-level cluster-bootstrap intervals beside the longer-answer and rubric baselines on the same pairs, an
exact McNemar test against the longer-answer rule, the held-out loss against the constant predictor's, and the
``validation`` block every stage that uses the reward model checks (:mod:`sciexplain.rm_gate`).
"""
from pathlib import Path

import click

from sciexplain.cli import params_option, read_params, stage
from sciexplain.dist import is_main_process
from sciexplain.records import write_json, write_jsonl


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--human-pairs", "human_dir", default="data/human_pairs", show_default=True,
              help="train.jsonl (training) + test.jsonl (held out) from the validate stage")
@click.option("--compare", "compare_root", default="data/compare", show_default=True, help="<pair>/sheet.jsonl + key.jsonl")
@click.option("--pair", "declared_pairs", multiple=True,
              help="the comparisons whose sheets this stage may read (dvc.yaml declares their folders as deps); "
                   "default: every <compare>/<pair>/")
@click.option("--annotations", "annotations_root", default="data/annotations", show_default=True, help="human files <pair>/<name>.{csv,jsonl}")
@click.option("--judgments", "judgments_root", default="data/judgments", show_default=True,
              help="judge files <pair>/judge-<name>.jsonl (read only with reward_model.judge_labels)")
@click.option("--generations", "generations_root", default="data/generations", show_default=True,
              help="<model>/rm.jsonl (read only with reward_model.judge_labels)")
@click.option("--rm-split", "rm_split", default="data/prepared/rm.jsonl", show_default=True)
@click.option("--out", "out_dir", default="models/reward", show_default=True)
@click.option("--pairs-out", "pairs_dir", default="data/preferences", show_default=True, help="train.jsonl / dev.jsonl")
@click.option("--metrics", "metrics_path", default="metrics/reward_model.json", show_default=True)
@click.option("--live", "live_dir", default="metrics/reward_model", show_default=True, help="DVCLive curves")
@click.option("--scratch", "scratch_dir", default="scratch/reward", show_default=True, help="trainer scratch (not a DVC out)")
@params_option
@stage
def main(base_dir, human_dir, compare_root, declared_pairs, annotations_root, judgments_root, generations_root, rm_split, out_dir,
         pairs_dir, metrics_path, live_dir, scratch_dir, params_path):
    import time

    from sciexplain import models
    from sciexplain.models import load_tokenizer
    from sciexplain.reward import ChatEncoder
    from sciexplain.reward_data import assemble
    from sciexplain.reward_eval import evaluate_saved, summary_lines
    from sciexplain.reward_train import train_reward_model

    t_start = time.time()
    p = read_params(params_path, "reward_model")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    rm = p.reward_model
    enc = ChatEncoder(load_tokenizer(base_dir), rm.trainer.max_length)
    data = assemble(rm, enc, human_dir=human_dir, compare_root=compare_root, declared_pairs=declared_pairs,
                    annotations_root=annotations_root, judgments_root=judgments_root,
                    generations_root=generations_root, rm_split=rm_split)
    main_process = is_main_process()  # every rank builds the same pairs and trains; only the main one writes
    if main_process:
        write_jsonl(Path(pairs_dir) / "train.jsonl", data.train)
        write_jsonl(Path(pairs_dir) / "dev.jsonl", data.dev)
        click.echo(data.summary())
    res = train_reward_model(
        base_dir, data.train, out_dir, lora_r=rm.lora.r, lora_alpha=rm.lora.alpha, lora_dropout=rm.lora.dropout,
        lora_layers=rm.lora.layers, trainer=rm.trainer.config_kwargs(),
        center_rewards_coefficient=rm.center_rewards_coefficient, scratch_dir=scratch_dir, live_dir=live_dir,
        quantize_4bit=p.model.quantize_4bit, eval_pairs=data.dev or None,
        early_stopping_patience=rm.early_stopping_patience, until_beats_constant=rm.until_beats_constant)
    if not main_process:
        return
    metrics = evaluate_saved(base_dir, out_dir, data, rm, enc, quantize_4bit=p.model.quantize_4bit, train_result=res)
    metrics["stage_runtime_s"] = round(time.time() - t_start, 1)
    write_json(metrics_path, {**metrics, **models.run_facts("train")})
    for line, warning in summary_lines(metrics):
        click.echo(line, err=warning)


if __name__ == "__main__":
    main()
