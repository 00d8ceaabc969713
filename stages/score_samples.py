"""Stage score: the reward model scores every candidate answer (batched), once it has cleared its human-pair
validation (or reward_model.allow_unvalidated says to use it anyway, :mod:`sciexplain.rm_gate`)."""
import click

from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import DataError, read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--reward", "reward_dir", default="models/reward", show_default=True)
@click.option("--reward-metrics", "reward_metrics", default="metrics/reward_model.json", show_default=True,
              help="the reward model's validation on held-out human pairs (the gate)")
@click.option("--samples", default="data/rs/samples.jsonl", show_default=True)
@click.option("--out", "out_path", default="data/rs/scored.jsonl", show_default=True)
@click.option("--metrics", "metrics_path", default="metrics/score_samples.json", show_default=True)
@params_option
@stage
def main(base_dir, reward_dir, reward_metrics, samples, out_path, metrics_path, params_path):
    from sciexplain.reward import RewardScorer
    from sciexplain.rm_gate import require_validated
    from sciexplain.stats import reward_summary

    from sciexplain import models
    p = read_params(params_path, "score_samples")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    require_validated(reward_metrics, p.reward_model.allow_unvalidated, "score_samples")
    recs = read_jsonl(samples, required=("id", "question"), allow_empty=False)
    for n, r in enumerate(recs, 1):
        if not isinstance(r.get("answer"), str):
            raise DataError(samples, n, "answer", "missing or not a string")
    scorer = RewardScorer(base_dir, reward_dir, quantize_4bit=p.model.quantize_4bit)
    rewards = scorer.score([r["question"] for r in recs], [r["answer"] for r in recs], batch_size=p.score.batch_size)
    write_jsonl(out_path, [{**r, "reward": round(float(s), 6)} for r, s in zip(recs, rewards)])
    write_json(metrics_path, {"scored": len(recs), "reward": reward_summary(rewards), **models.run_facts("score")})
    click.echo(f"scored {len(recs)} candidates")


if __name__ == "__main__":
    main()
