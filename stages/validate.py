"""Stage validate: every judge of judge.panel and the baselines (longer answer, random) on held-out human pairs.

Human pairs come from ``validate.sources`` (Stack Exchange Posts.xml or JSONL/CSV pair files, see
:mod:`sciexplain.human_pairs`); questions in a prepared split are removed, the rest is split by question
into ``<out>/train.jsonl`` (for training on people) and ``<out>/test.jsonl`` (what the judges are scored on).
Metrics (:mod:`sciexplain.validation`): agreement with Wilson and cluster-bootstrap intervals, Cohen's kappa,
the share of decisive votes for the longer answer, ties, n, and an exact McNemar test of each judge against
the longer-answer rule, Holm-adjusted.
"""

import click

from sciexplain.cli import params_option, read_params, stage
from sciexplain.human_pairs import load_pairs, prepared_question_ids, split_pairs
from sciexplain.records import DataError, Drops, new_dir, write_json, write_jsonl
from sciexplain.judges import Panel
from sciexplain.validation import cap_pairs, validate


@click.command()
@click.option("--prepared", "prepared_dir", default="data/prepared", show_default=True,
              help="prepared splits: their questions never become human pairs")
@click.option("--base", "base_dir", default="models/base", show_default=True, help="model of local LLM judges")
@click.option("--prompt", "prompt_path", default="prompts/judge.md", show_default=True, help="LLM judge prompt template")
@click.option("--cache", "cache_dir", default="data/cache/judge", show_default=True, help="LLM reply caches")
@click.option("--out", "out_dir", default="data/human_pairs", show_default=True, help="train/test human pairs")
@click.option("--metrics", "metrics_path", default="metrics/validate.json", show_default=True)
@params_option
@stage
def main(prepared_dir, base_dir, prompt_path, cache_dir, out_dir, metrics_path, params_path):
    p = read_params(params_path, "validate")
    v = p.validate
    seed = v.seed
    defaults = {"min_score_gap": v.min_score_gap, "max_pairs_per_question": v.max_pairs_per_question,
                "margin_full_gap": v.margin_full_gap, "max_answer_chars": v.max_answer_chars}
    panel = Panel(p.judge.panel, base_dir=base_dir, cache_dir=cache_dir, prompt_path=prompt_path)

    drops = Drops()
    pairs = load_pairs([s.model_dump(exclude_unset=True) for s in v.sources], drops, defaults=defaults)
    train, test = split_pairs(pairs, v.test_fraction, seed, prepared_question_ids(prepared_dir), drops)
    if not test:
        raise DataError("params.yaml", None, "validate.sources", f"no human test pairs left ({len(pairs)} pairs read, "
                        f"{drops.counts['in_prepared_split']} share a question with a prepared split)")
    used = cap_pairs(test, v.max_pairs, seed)
    metrics = validate(used, panel, seed=seed, n_resamples=v.bootstrap)
    metrics["pairs"].update({"read": len(pairs), "train": len(train), "test": len(test),
                             "train_questions": len({r["id"] for r in train}), "test_questions": len({r["id"] for r in test}),
                             "dropped": dict(sorted(drops.counts.items()))})

    with new_dir(out_dir) as tmp:
        write_jsonl(tmp / "train.jsonl", train)
        write_jsonl(tmp / "test.jsonl", test)
    write_json(metrics_path, metrics)
    for name, m in metrics["judges"].items():
        ci = (m["agreement_cluster_ci_low"], m["agreement_cluster_ci_high"])
        mc = metrics["vs_longer"].get(name)
        click.echo(f"{name}: agreement {m['agreement']} (cluster CI {ci[0]}-{ci[1]}), kappa {m['kappa']}, "
                   f"{m['ties']} ties of {m['n']}, longer share {m['longer_share']}"
                   + (f", vs longer McNemar p {mc['p']} (Holm {mc['p_holm']})" if mc else ""))


if __name__ == "__main__":
    main()
