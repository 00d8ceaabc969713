"""Stage select: best-of-N winners for another SFT round (rs), best-vs-worst pairs for DPO, the best-of-n curve.

With sample / score / select apart, changing the threshold reruns select and what follows, never
generation or scoring. The rewards come from the reward model, so select checks its human-pair validation
first (:mod:`sciexplain.rm_gate`): it refuses unless the model cleared it or reward_model.allow_unvalidated is true.
"""
import click

from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--scored", default="data/rs/scored.jsonl", show_default=True)
@click.option("--reward-metrics", "reward_metrics", default="metrics/reward_model.json", show_default=True,
              help="the reward model's validation on held-out human pairs (the gate)")
@click.option("--selected", "selected_path", default="data/rs/selected.jsonl", show_default=True)
@click.option("--pairs", "pairs_path", default="data/rs/dpo_pairs.jsonl", show_default=True)
@click.option("--metrics", "metrics_path", default="metrics/select.json", show_default=True)
@params_option
@stage
def main(scored, reward_metrics, selected_path, pairs_path, metrics_path, params_path):
    from sciexplain.rm_gate import require_validated
    from sciexplain.selection import best_of_n_curve, select

    p = read_params(params_path, "select")
    gate = require_validated(reward_metrics, p.reward_model.allow_unvalidated, "select")
    recs = read_jsonl(scored, required=("id", "question", "reward"))
    out = select(recs, threshold=p.select.threshold, quantile=p.select.quantile,
                 min_gap=p.select.min_gap, require_finished=p.select.require_finished)
    write_jsonl(selected_path, out["selected"])
    write_jsonl(pairs_path, out["pairs"])
    curve = best_of_n_curve(recs)
    sel = out["selected"]
    write_json(metrics_path, {**out["counts"],
                              "mean_reward_selected": round(sum(r["reward"] for r in sel) / len(sel), 6) if sel else None,
                              "mean_reward_all": round(sum(r["reward"] for r in recs) / len(recs), 6),
                              "reward_model_cleared": gate["cleared"],
                              "best_of_n": curve})
    click.echo(f"selected {len(sel)} answers, {len(out['pairs'])} DPO pairs (threshold {out['counts']['threshold']})")


if __name__ == "__main__":
    main()
