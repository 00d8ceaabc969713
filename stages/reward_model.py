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

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.dist import is_main_process
from sciexplain.records import DataError, write_json, write_jsonl


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
    from collections import Counter

    from sciexplain import preferences as prefs
    from sciexplain.records import read_jsonl
    from sciexplain.models import load_tokenizer
    from sciexplain.reward import ChatEncoder, RewardScorer
    from sciexplain.reward_eval import heldout_eval, majority_agreement
    from sciexplain.reward_train import train_reward_model
    from sciexplain.rm_gate import PARAM, validation_block
    from sciexplain.rubric import RubricJudge

    t_start = time.time()
    from sciexplain import models
    p = read_params(params_path)
    models.set_compute_dtype(get(p, "model.compute_dtype"))  # bf16 or fp32, by CPU and work
    unsure = get(p, "reward_model.unsure")
    prefs._check_unsure(unsure)
    trainer = get(p, "reward_model.trainer")  # trl.RewardConfig settings; its seed also splits, caps and resamples
    seed = int(trainer["seed"])
    judge_labels = get(p, "reward_model.judge_labels")
    allow = get(p, "reward_model.allow_unvalidated")
    for key, value in (("reward_model.judge_labels", judge_labels), (PARAM, allow)):
        if not isinstance(value, bool):
            raise DataError("params.yaml", None, key, f"must be true or false, got {value!r}")
    rubric_params = get(p, "reward_model.rubric") or {}
    max_length = int(trainer["max_length"])
    tok = load_tokenizer(base_dir)
    enc = ChatEncoder(tok, max_length)
    prompt_fn = enc.prompt

    # people first: the validate stage's human pairs (train) and people's files on the named comparison sheets
    human_dir = Path(human_dir)
    hp_train, hp_counts = prefs.human_pairs(read_jsonl(human_dir / "train.jsonl", required=("id", "question"),
                                                           allow_empty=True), prompt_fn)
    test = read_jsonl(human_dir / "test.jsonl", required=("id", "question", "pair_id"), allow_empty=False)
    compare = Path(compare_root)
    roots = (annotations_root, (judgments_root, "judge")) if judge_labels else (annotations_root,)
    pair_data = {}
    folders = [compare / pair for pair in declared_pairs] if declared_pairs else \
        (sorted(compare.iterdir()) if compare.is_dir() else [])
    for d in folders:
        if (d / "sheet.jsonl").exists():
            data = prefs.read_pair_annotations(d.name, compare, roots)
            if data["annotations"]:
                pair_data[d.name] = data
    ann_pairs = []
    for pair in get(p, "reward_model.sources") or []:
        if pair not in pair_data:
            why = ("no sheet.jsonl with annotation files for this pair" if not declared_pairs or pair in declared_pairs
                   else f"the stage reads only {', '.join(declared_pairs)} (--pair; a comparison of models trained "
                   "after the reward model cannot train it)")
            raise DataError(compare / str(pair), None, "reward_model.sources", why)
        ann_pairs += prefs.annotation_pairs(pair, pair_data[pair], prompt_fn, unsure,
                                            "all" if judge_labels else "humans")
    # judge-labelled pairs: only when asked for
    rm_pairs, rm_counts = [], None
    if judge_labels:
        questions = read_jsonl(rm_split, required=("id", "question"))
        gens = {m: prefs.read_generations(Path(generations_root) / m / "rm.jsonl") for m in get(p, "reward_model.rm_models")}
        rm_pairs, rm_counts = prefs.judge_pairs(questions, gens, RubricJudge.from_config(rubric_params), prompt_fn, unsure)

    pairs, n_dupes = prefs.dedupe_pairs(hp_train + ann_pairs + rm_pairs)
    pairs, n_test_q = prefs.drop_questions(pairs, {r["id"] for r in test})  # never train on a held-out question
    fitting = [x for x in pairs if enc.fits(x["prompt"])]
    n_long_prompt, pairs = len(pairs) - len(fitting), fitting
    train, dev = prefs.split_pairs(pairs, get(p, "reward_model.val_fraction"), seed)
    train, n_capped = prefs.cap_pairs(train, get(p, "reward_model.max_train_pairs"), seed)
    by_label = Counter(f"judge:{x['judge']}" if x.get("judge") else "human" for x in train)
    main_process = is_main_process()  # every rank builds the same pairs and trains; only the main one writes
    if main_process:
        write_jsonl(Path(pairs_dir) / "train.jsonl", train)
        write_jsonl(Path(pairs_dir) / "dev.jsonl", dev)
        click.echo(f"pairs: {len(hp_train)} human pairs, {len(ann_pairs)} from annotation files, {len(rm_pairs)} "
                   f"judge-labelled on the rm split; {n_dupes} duplicates, {n_test_q} on held-out questions and "
                   f"{n_long_prompt} with a prompt over max_length left out; train {len(train)} (capped {n_capped}), "
                   f"dev {len(dev)}, held-out human test {len(test)}")

    res = train_reward_model(
        base_dir, train, out_dir,
        lora_r=get(p, "reward_model.lora.r"), lora_alpha=get(p, "reward_model.lora.alpha"),
        lora_dropout=get(p, "reward_model.lora.dropout"), lora_layers=get(p, "reward_model.lora.layers"),
        trainer=trainer, center_rewards_coefficient=get(p, "reward_model.center_rewards_coefficient"),
        scratch_dir=scratch_dir, live_dir=live_dir, quantize_4bit=get(p, "model.quantize_4bit"),
        eval_pairs=dev or None, early_stopping_patience=get(p, "reward_model.early_stopping_patience"),
        until_beats_constant=get(p, "reward_model.until_beats_constant"))
    if not main_process:
        return

    # evaluate what was saved (the main process only)
    scorer = RewardScorer(base_dir, out_dir, quantize_4bit=get(p, "model.quantize_4bit"))
    bs = int(get(p, "reward_model.score_batch_size"))
    probe = train[:8]
    pooling = scorer.check_pooling([x["question"] for x in probe] * 2, [x["chosen"] for x in probe] + [x["rejected"] for x in probe])
    if pooling["max_abs_diff"] > 1e-3 or not pooling["pools_end_of_turn"]:
        raise RuntimeError(f"reward model's pooling is wrong: {pooling}")
    test_fit = [r for r in test if enc.fits(prompt_fn(r["question"]))]
    if not test_fit:
        raise DataError(human_dir / "test.jsonl", None, "reward_model.trainer.max_length",
                        f"no held-out pair's question fits max_length {max_length}")
    ev = heldout_eval(test_fit, scorer, rubric_params=rubric_params, seed=seed,
                      n_resamples=int(get(p, "reward_model.bootstrap")), batch_size=bs)
    humans_only = {k: {**d, "annotations": {n: a for n, a in d["annotations"].items() if n not in d["judges"]}}
                   for k, d in pair_data.items()}
    humans_only = {k: d for k, d in humans_only.items() if d["annotations"]}
    majority = majority_agreement(scorer, humans_only, {x["id"] for x in train + dev}, None, bs)

    h = ev["heldout"]
    validation = validation_block(h["accuracy"], h["cluster_ci95_low"], h["cluster_ci95_high"], n=h["n"],
                                  questions=h["questions"], allow_unvalidated=allow)
    judges = sorted({x["judge"] for x in train + dev if x.get("judge")})
    loss = {**ev["loss"], "dev": res["dev"]}
    metrics = {
        "validation": validation,
        "used_unvalidated": bool(allow and not validation["cleared"]),
        "learned": bool(ev["loss"]["beats_constant"]),
        "heldout": h,
        "baselines": ev["baselines"],
        "vs_longer": ev["vs_longer"],
        "loss": loss,
        "human_prefers_longer": ev["human_prefers_longer"],
        "judge_labels": {"used": bool(judge_labels and judges), "allowed": judge_labels, "judges": judges,
                         "train_pairs_by_label": dict(sorted(by_label.items())), "rm_split": rm_counts},
        "pairs": {
            "train": len(train), "dev": len(dev), "test": len(test_fit), "test_prompt_too_long": len(test) - len(test_fit),
            "from_human_pairs": len(hp_train), "human_pairs_null_margin": hp_counts["null_margin"],
            "from_annotations": len(ann_pairs), "from_rm_judge": len(rm_pairs), "duplicates_removed": n_dupes,
            "on_test_questions_removed": n_test_q, "prompt_too_long": n_long_prompt, "capped": n_capped,
            "unsure": unsure, "train_questions": len({x["id"] for x in train}), "dev_questions": len({x["id"] for x in dev}),
            "test_questions": h["questions"],
            "stale_annotation_rows": {f: n for d in pair_data.values() for f, n in d["stale_rows"].items()},
        },
        "max_length": max_length,
        "truncated": res["truncated_pairs"], "truncated_sequences": res["truncated_sequences"],
        "eval_truncated_sequences": scorer.truncated, "dropped": res["dropped"],
        "rewards": ev["rewards"],
        "majority_agreement": majority,
        "train": {k: res[k] for k in ("train_loss", "runtime_s", "tokens_per_s", "tokens", "steps", "processes",
                                      "trainable_params", "total_params")},
        "stage_runtime_s": round(time.time() - t_start, 1),
        "pooling_check": pooling,
    }
    write_json(metrics_path, {**metrics, **models.run_facts("train")})
    mc = ev["vs_longer"]["reward_model"]
    lg = ev["baselines"]["longer_answer"]
    rb = ev["baselines"]["rubric_judge"]
    click.echo(f"reward model: held-out accuracy on human pairs {h['accuracy']} (n={h['n']}, {h['questions']} questions; "
               f"Wilson {h['ci95_low']}-{h['ci95_high']}, cluster {h['cluster_ci95_low']}-{h['cluster_ci95_high']}); "
               f"longer answer {lg['accuracy']}, rubric {rb['accuracy']}; McNemar vs longer p {mc['p']}; "
               f"held-out loss {ev['loss']['heldout']} vs constant {ev['loss']['constant']}")
    if not ev["loss"]["beats_constant"]:
        click.echo(f"warning: the reward model's held-out loss {ev['loss']['heldout']} does not beat the constant "
                   f"predictor's {ev['loss']['constant']}: it has not learned the human preferences", err=True)
    if not validation["cleared"]:
        click.echo(f"warning: {validation['message']}: stages that use it refuse unless {PARAM}: true "
                   f"(now {str(allow).lower()})", err=True)


if __name__ == "__main__":
    main()
