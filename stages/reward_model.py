"""Stage reward_model: preference pairs (annotations + rubric-judged rm-split answers) -> LoRA reward model
-> held-out accuracy, agreement with the annotators' majority, baselines."""
from pathlib import Path

import click

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.dist import is_main_process
from sciexplain.io import DataError, write_json, write_jsonl


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--compare", "compare_root", default="data/compare", show_default=True, help="<pair>/sheet.jsonl + key.jsonl")
@click.option("--annotations", "annotations_root", default="data/annotations", show_default=True, help="human files <pair>/<name>.{csv,jsonl}")
@click.option("--judgments", "judgments_root", default="data/judgments", show_default=True, help="judge files <pair>/judge-<name>.jsonl")
@click.option("--generations", "generations_root", default="data/generations", show_default=True, help="<model>/rm.jsonl")
@click.option("--rm-split", "rm_split", default="data/prepared/rm.jsonl", show_default=True)
@click.option("--out", "out_dir", default="models/reward", show_default=True)
@click.option("--pairs-out", "pairs_dir", default="data/preferences", show_default=True, help="train.jsonl / val.jsonl")
@click.option("--metrics", "metrics_path", default="metrics/reward_model.json", show_default=True)
@click.option("--live", "live_dir", default="metrics/reward_model", show_default=True, help="DVCLive curves")
@click.option("--scratch", "scratch_dir", default="scratch/reward", show_default=True, help="trainer scratch (not a DVC out)")
@params_option
@stage
def main(base_dir, compare_root, annotations_root, judgments_root, generations_root, rm_split, out_dir, pairs_dir,
         metrics_path, live_dir, scratch_dir, params_path):
    from sciexplain import preferences as prefs
    from sciexplain.io import read_jsonl
    from sciexplain.models import load_tokenizer
    from sciexplain.reward import RewardScorer, chat_prompt, majority_agreement, pairwise_eval
    from sciexplain.reward_train import train_reward_model
    from sciexplain.rubric import RubricJudge

    p = read_params(params_path)
    unsure = get(p, "reward_model.unsure")
    seed = int(get(p, "reward_model.seed"))
    judge = RubricJudge.from_config(get(p, "reward_model.rubric") or {})
    tok = load_tokenizer(base_dir)
    prompt_fn = lambda q: chat_prompt(tok, q)  # noqa: E731

    # every compared pair with annotations (for the majority agreement); the sources also give training pairs
    compare = Path(compare_root)
    roots = (annotations_root, judgments_root)
    pair_data = {}
    for d in sorted(compare.iterdir()) if compare.is_dir() else []:
        if (d / "sheet.jsonl").exists():
            data = prefs.read_pair_annotations(d.name, compare, roots)
            if data["annotations"]:
                pair_data[d.name] = data
    ann_pairs = []
    for pair in get(p, "reward_model.sources") or []:
        if pair not in pair_data:
            raise DataError(compare / str(pair), None, "reward_model.sources", "no sheet.jsonl with annotation files for this pair")
        ann_pairs += prefs.annotation_pairs(pair, pair_data[pair], prompt_fn, unsure, get(p, "reward_model.annotators"))

    questions = read_jsonl(rm_split, required=("id", "question"))
    gens = {m: prefs.read_generations(Path(generations_root) / m / "rm.jsonl") for m in get(p, "reward_model.rm_models")}
    rm_pairs, rm_counts = prefs.judge_pairs(questions, gens, judge, prompt_fn, unsure)

    pairs, n_dupes = prefs.dedupe_pairs(ann_pairs + rm_pairs)
    train, val = prefs.split_pairs(pairs, get(p, "reward_model.val_fraction"), seed)
    train, n_capped = prefs.cap_pairs(train, get(p, "reward_model.max_train_pairs"), seed)
    main_process = is_main_process()  # every rank builds the same pairs and trains; only the main one writes
    if main_process:
        write_jsonl(Path(pairs_dir) / "train.jsonl", train)
        write_jsonl(Path(pairs_dir) / "val.jsonl", val)
        click.echo(f"pairs: {len(ann_pairs)} from annotations, {len(rm_pairs)} from the rm split; "
                   f"{n_dupes} duplicates; train {len(train)} (capped {n_capped}), val {len(val)}")

    max_length = int(get(p, "reward_model.max_length"))
    res = train_reward_model(
        base_dir, train, out_dir,
        lora_r=get(p, "reward_model.lora.r"), lora_alpha=get(p, "reward_model.lora.alpha"),
        lora_dropout=get(p, "reward_model.lora.dropout"), lora_layers=get(p, "reward_model.lora.layers"),
        learning_rate=get(p, "reward_model.learning_rate"), epochs=get(p, "reward_model.epochs"),
        batch_size=get(p, "reward_model.batch_size"), max_length=max_length,
        center_rewards_coefficient=get(p, "reward_model.center_rewards_coefficient"), seed=seed,
        scratch_dir=scratch_dir, live_dir=live_dir, quantize_4bit=get(p, "model.quantize_4bit"))
    if not main_process:
        return

    # evaluate what was saved (the main process only)
    scorer = RewardScorer(base_dir, out_dir, quantize_4bit=get(p, "model.quantize_4bit"))
    bs = int(get(p, "reward_model.score_batch_size"))
    probe = (val or train)[:8]
    pooling = scorer.check_pooling([x["question"] for x in probe] * 2, [x["chosen"] for x in probe] + [x["rejected"] for x in probe])
    if pooling["max_abs_diff"] > 1e-3 or not pooling["pools_end_of_turn"]:
        raise RuntimeError(f"reward model pools the wrong token: {pooling}")
    qs = [x["question"] for x in val]
    c = scorer.score(qs, [x["chosen"] for x in val], bs, progress=True)
    r = scorer.score(qs, [x["rejected"] for x in val], bs, progress=True)
    ev = pairwise_eval(val, c, r, judge)
    train_ids = {x["id"] for x in train}
    majority = majority_agreement(scorer, pair_data, train_ids, judge, bs)

    metrics = {
        "pairs": {
            "train": len(train), "val": len(val), "from_annotations": len(ann_pairs), "from_rm_judge": len(rm_pairs),
            "duplicates_removed": n_dupes, "capped": n_capped, "rm_judge": rm_counts, "unsure": unsure,
            "train_questions": len(train_ids), "val_questions": len({x["id"] for x in val}),
        },
        "max_length": max_length,
        "truncated": res["truncated_pairs"], "truncated_sequences": res["truncated_sequences"],
        "eval_truncated_sequences": scorer.truncated, "dropped": res["dropped"],
        "heldout": ev["heldout"], "by_strength": ev["by_strength"], "by_source": ev["by_source"],
        "baselines": ev["baselines"], "rewards": ev["rewards"],
        "majority_agreement": majority,
        "train": {k: res[k] for k in ("train_loss", "runtime_s", "tokens_per_s", "tokens", "steps", "processes",
                                      "trainable_params", "total_params")},
        "pooling_check": pooling,
    }
    write_json(metrics_path, metrics)
    h = ev["heldout"]
    click.echo(f"reward model: held-out accuracy {h['accuracy']} (n={h['n']}, 95% CI {h['ci95_low']}-{h['ci95_high']}); "
               f"majority agreement {majority['all']['accuracy']} (held-out {majority['heldout']['accuracy']}); "
               f"truncated {res['truncated_pairs']}, dropped {res['dropped']}")


if __name__ == "__main__":
    main()
