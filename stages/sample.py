"""Stage sample: N answers per rs question from the SFT model (seeded per question and sample, cached).

The backend comes from params ``engine`` like the answer stages: local transformers (num_return_sequences),
vLLM (``n`` samples in one request), or an OpenAI-compatible server (one call per sample, each with its own seed).
"""
import click

from sciexplain.cli import generation_outputs, params_option, read_params, stage
from sciexplain.records import read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--adapter", default="models/sft", show_default=True)
@click.option("--model-name", default="sft", show_default=True, help="the sampled model's name (served name for openai)")
@click.option("--questions", default="data/prepared/rs.jsonl", show_default=True)
@generation_outputs("data/rs/samples.jsonl", "data/cache/sample.jsonl", "metrics/sample.json")
@params_option
@stage
def main(base_dir, adapter, model_name, questions, out_path, cache_path, metrics_path, params_path):
    from sciexplain.answering import answer_questions
    from sciexplain.backends import engine_backend
    from sciexplain.generation import SamplingParams

    from sciexplain import models
    p = read_params(params_path, "sample")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    n = p.sample.n
    sampling = SamplingParams(max_new_tokens=p.sample.max_new_tokens, temperature=p.sample.temperature,
                              top_p=p.sample.top_p, seed=p.sample.seed,
                              repetition_penalty=p.sample.repetition_penalty)
    backend = engine_backend(p, model_name, base_dir, adapter, batch_size=p.sample.batch_size)
    records, summary = answer_questions(backend, read_jsonl(questions), sampling, cache_path, model_name, n_samples=n,
                                        desc=f"sample x{n}")
    write_jsonl(out_path, records)
    write_json(metrics_path, {**summary, **models.run_facts("generate", p.engine.backend)})
    click.echo(f"sampled {summary['answers']} answers ({n} per question)")


if __name__ == "__main__":
    main()
