"""Ask a built model for an explanation, or export it as a merged full model.

    python -m sciexplain.explain "Why is the sky blue?" --model sft
    echo "How do vaccines work?" | python -m sciexplain.explain --model rs
    python -m sciexplain.explain --model dpo --export-merged exports/dpo-merged

Models: base (models/base) or a LoRA adapter under models/<name> (sft, rs, dpo, grpo). The merge always
goes into the de-quantised fp32 base model, never into a 4-bit one (that collapses quality).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .records import UserError

MODELS = ("base", "sft", "rs", "dpo", "grpo")


def adapter_for(model: str, models_dir: str | Path = "models") -> Path | None:
    if model == "base":
        return None
    path = Path(models_dir) / model
    if not (path / "adapter_config.json").exists():
        raise UserError(f"{path} holds no LoRA adapter: build it first (dvc repro {model})")
    return path


def merge_export(base_dir, adapter, out_dir) -> Path:
    """Merge the adapter into the fp32 base (never 4-bit) and save a plain HF model + tokenizer."""
    from .records import atomic_path
    from .models import load_causal_lm, load_tokenizer

    model = load_causal_lm(base_dir, adapter=adapter, quantize_4bit=False, device="cpu")  # fp32 on the CPU, always
    if adapter is not None:
        model = model.merge_and_unload()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty: choose a new folder")
    with atomic_path(out) as tmp:
        tmp.unlink()
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base_dir).save_pretrained(tmp)
        if out.exists():
            out.rmdir()
    return out


@click.command()
@click.argument("question", required=False)
@click.option("--model", type=click.Choice(MODELS), default="sft", show_default=True)
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--models-dir", default="models", show_default=True)
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy")
@click.option("--seed", default=0, show_default=True)
@click.option("--export-merged", type=click.Path(file_okay=False), default=None,
              help="write the model merged into the fp32 base to this folder (no question needed)")
def main(question, model, base_dir, models_dir, max_new_tokens, temperature, seed, export_merged):
    """Print an explanation from a built model for QUESTION (or stdin)."""
    try:
        adapter = adapter_for(model, models_dir)
        if export_merged:
            out = merge_export(base_dir, adapter, export_merged)
            click.echo(f"merged {model} -> {out}")
            if not question:
                return
        if not question:
            if sys.stdin.isatty():
                raise click.UsageError("give a question as an argument or on stdin")
            question = sys.stdin.read().strip()
        if not question:
            raise click.UsageError("the question is empty")
        from .generation import GenRequest, SamplingParams
        from .local_backend import LocalBackend
        from .prompts import student_messages

        backend = LocalBackend(base_dir, adapter=adapter, batch_size=1)
        res = backend.generate([GenRequest.from_messages("q", student_messages(question))],
                               SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))[0]
        click.echo(res.text)
    except UserError as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()
