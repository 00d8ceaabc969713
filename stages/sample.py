"""Stage sample: N answers per rs question from the SFT model (num_return_sequences, seeded, cached)."""
import click

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.io import read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--adapter", default="models/sft", show_default=True)
@click.option("--questions", default="data/prepared/rs.jsonl", show_default=True)
@click.option("--out", "out_path", default="data/rs/samples.jsonl", show_default=True)
@click.option("--cache", "cache_path", default="data/cache/sample.jsonl", show_default=True)
@click.option("--metrics", "metrics_path", default="metrics/sample.json", show_default=True)
@params_option
@stage
def main(base_dir, adapter, questions, out_path, cache_path, metrics_path, params_path):
    from sciexplain.answering import answer_questions
    from sciexplain.generation import SamplingParams
    from sciexplain.local_backend import LocalBackend

    p = read_params(params_path)
    n = get(p, "sample.n")
    sampling = SamplingParams(max_new_tokens=get(p, "sample.max_new_tokens"), temperature=get(p, "sample.temperature"),
                              top_p=get(p, "sample.top_p"), seed=get(p, "sample.seed"))
    backend = LocalBackend(base_dir, adapter=adapter, quantize_4bit=get(p, "model.quantize_4bit"),
                           batch_size=get(p, "sample.batch_size"))
    records, summary = answer_questions(backend, read_jsonl(questions), sampling, cache_path, "sft", n_samples=n,
                                        desc=f"sample x{n}")
    write_jsonl(out_path, records)
    write_json(metrics_path, summary)
    click.echo(f"sampled {summary['answers']} answers ({n} per question)")


if __name__ == "__main__":
    main()
