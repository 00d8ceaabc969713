"""Stage base_model: materialise the base chat model + tokenizer as HF safetensors."""
import click

from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import new_dir, sha256_file, write_json


@click.command()
@click.option("--out", "out_dir", default="models/base", show_default=True, help="output model folder")
@click.option("--metrics", "metrics_path", default="metrics/base_model.json", show_default=True)
@params_option
@stage
def main(out_dir, metrics_path, params_path):
    from pathlib import Path

    from sciexplain.models import materialize_base

    p = read_params(params_path, "base_model")
    source = p.base_model.source
    # build into a temp folder beside the output, then swap it in: never half a model
    out = Path(out_dir)
    with new_dir(out) as tmp:
        info = materialize_base(source, tmp, revision=p.base_model.revision,
                                gguf_file=p.base_model.gguf_file)
        # where the weights came from, beside them (the metrics keep short codes: origin, model name, sizes)
        write_json(tmp / "provenance.json", {"source": info.pop("label"), "weights_sha256": {
            w.name: sha256_file(w) for w in sorted(tmp.glob("*.safetensors"))}})
    write_json(metrics_path, info)
    click.echo(f"base model {info['source']}:{info['model']}: {info['parameters']:,} parameters -> {out}")


if __name__ == "__main__":
    main()
