"""Stage score_eval@<model>: the reward model scores one model's eval answers (sample 0, the first
``evaluate.max_questions`` questions when set).

Writes ``<out>`` = ``{"model", "questions", "rewards": {question id: reward}, "dropped": {n, reasons, ids}}``:
answers the model's own stage dropped (``keep: false``) are not scored, only counted. The reward model must
have cleared its human-pair validation (``reward_model.allow_unvalidated`` overrides). The statistics across
models (mean, median, bootstrap CI, Wilcoxon vs base, Holm) are the ``report`` stage's, from these files.
"""

import click

from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import read_jsonl, write_json


@click.command()
@click.option("--model", "model", required=True, help="the model whose eval answers are scored (base, sft, ..., teacher)")
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--reward", "reward_dir", default="models/reward", show_default=True)
@click.option("--reward-metrics", default="metrics/reward_model.json", show_default=True, help="its validation")
@click.option("--prepared", default="data/prepared/eval.jsonl", show_default=True)
@click.option("--generations", default="data/generations", show_default=True)
@click.option("--out", "out_path", required=True, help="e.g. data/eval_scores/sft.json")
@params_option
@stage
def main(model, base_dir, reward_dir, reward_metrics, prepared, generations, out_path, params_path):
    from sciexplain.evaluation import load_eval_answers
    from sciexplain.reward import RewardScorer
    from sciexplain.rm_gate import require_validated

    from sciexplain import models
    p = read_params(params_path, f"score_eval@{model}")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    questions = read_jsonl(prepared)
    limit = p.evaluate.max_questions
    ids = [q["id"] for q in (questions[:limit] if limit else questions)]
    answers, dropped = load_eval_answers(generations, [model], ids)
    require_validated(reward_metrics, p.reward_model.allow_unvalidated, "score_eval")
    scorer = RewardScorer(base_dir, reward_dir, quantize_4bit=p.model.quantize_4bit)
    kept = [i for i in ids if i in answers[model]]
    recs = [answers[model][i] for i in kept]
    scores = scorer.score([r["question"] for r in recs], [r["answer"] for r in recs],
                          batch_size=p.score.batch_size, progress=True)
    write_json(out_path, {"model": model, "questions": len(ids), "rewards": dict(zip(kept, scores)),
                          "dropped": dropped[model]})
    click.echo(f"{model}: {len(kept)} answers scored, {dropped[model]['n']} dropped by its own filter")


if __name__ == "__main__":
    main()
