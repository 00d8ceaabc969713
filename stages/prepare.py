"""Stage prepare: question sources -> clean, dedupe, length-filter -> disjoint splits sft / rm / rs / eval."""
from collections import Counter
from pathlib import Path

import click
from tqdm import tqdm

from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import Drops, write_json, write_jsonl


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True, help="base model (its tokenizer counts tokens)")
@click.option("--out", "out_dir", default="data/prepared", show_default=True)
@click.option("--metrics", "metrics_path", default="metrics/prepare.json", show_default=True)
@params_option
@stage
def main(base_dir, out_dir, metrics_path, params_path):
    from sciexplain import sources, splits as splitting

    p = read_params(params_path, "prepare")
    drops = Drops()
    records, by_source = [], Counter()
    for spec in p.prepare.sources:
        recs = sources.load_source(spec.model_dump(), drops)
        by_source[spec.path] = len(recs)
        records.extend(recs)
    eval_file = p.prepare.eval_file
    eval_records = None
    if eval_file:
        eval_records = splitting.dedupe(sources.load_qa(eval_file, Drops(), answer_field=None, domain="eval"), Drops())

    from sciexplain.models import load_tokenizer  # torch: imported once every source has been read and checked

    tok = load_tokenizer(base_dir)
    n_tokens = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    records = splitting.dedupe(records, drops)
    records = splitting.filter_lengths(
        tqdm(records, desc="length filter", unit="q", mininterval=2), n_tokens, drops,
        p.prepare.min_question_tokens, p.prepare.max_question_tokens, p.prepare.max_answer_tokens)
    splits = splitting.split(records, p.prepare.splits.model_dump(), p.prepare.seed, eval_records)

    out = Path(out_dir)
    for name, recs in splits.items():
        write_jsonl(out / f"{name}.jsonl", recs)
    metrics = {
        "questions_kept": len(records),
        "by_source": dict(by_source),
        "by_domain": dict(sorted(Counter(r["domain"] for r in records).items())),
        "with_forum_answer": sum(1 for r in records if r.get("answer")),
        "drops": dict(sorted(drops.counts.items())),
        "splits": {name: len(recs) for name, recs in splits.items()},
        "split_with_forum_answer": {name: sum(1 for r in recs if r.get("answer")) for name, recs in splits.items()},
    }
    write_json(metrics_path, metrics)
    click.echo(f"prepared {metrics['splits']} from {len(records)} questions; drops {metrics['drops']}")


if __name__ == "__main__":
    main()
