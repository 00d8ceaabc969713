"""Run a DVC experiment with a params overlay (e.g. ``configs/study.yaml``) on top of params.yaml.

    python -m sciexplain.overlay configs/study.yaml                  # print the `dvc exp run -S ...` it stands for
    python -m sciexplain.overlay configs/study.yaml --run -n study   # run that experiment (extra args go to dvc)

The overlay is a partial params.yaml. Each leaf becomes one ``-S key=value`` (mappings are walked key by key;
lists and the free-form mappings in :data:`FREE_FORM` are set whole), so params.yaml and its comments stay as
they are and the experiment records exactly what changed. A key that params.yaml does not have is refused
with one line naming it, so a typo never becomes a silent no-op; inside a ``trainer`` mapping (:data:`OPEN`, TRL
config settings) it is added with ``+key=value``, and the params schema checks its name against the TRL config.
"""
from __future__ import annotations

import shlex
import subprocess
import sys

import click

from .records import DataError, load_params

FREE_FORM = ("engine.served_names", "engine.weights", "vllm", "judge.panel", "reward_model.rubric",
             "prepare.sources")
# TRL config pass-through mappings: walked key by key like the rest, and a setting params.yaml does not list yet is
# added (Hydra's ``+key=value``); its name is checked against the TRL config by the params schema, not here
OPEN = ("sft.trainer", "rs.trainer", "reward_model.trainer", "dpo.trainer", "grpo.trainer")


def flatten(base: dict, overlay: dict, where: str = "", source: str = "overlay") -> list[tuple[str, object]]:
    """``[(dotted key, new value)]`` for every leaf of ``overlay`` that differs from ``base``."""
    out = []
    for key, new in overlay.items():
        dotted = f"{where}.{key}" if where else str(key)
        if not isinstance(base, dict) or key not in base:
            if where in OPEN and isinstance(base, dict):
                out.append((f"+{dotted}", new))
                continue
            if where not in FREE_FORM:
                raise DataError(source, None, dotted, "not a key of params.yaml (a typo?)")
        old = base.get(key) if isinstance(base, dict) else None
        if isinstance(new, dict) and isinstance(old, dict) and dotted not in FREE_FORM:
            out += flatten(old, new, dotted, source)
        elif old != new:
            out.append((dotted, new))
    return out


def set_flags(changes: list[tuple[str, object]]) -> list[str]:
    """``["-S", "key=value", ...]`` with each value as one-line YAML (what ``dvc exp run -S`` parses)."""
    import yaml

    flags = []
    for key, value in changes:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
        if text.endswith("\n...") or text.endswith("..."):
            text = text.rsplit("...", 1)[0].strip()
        flags += ["-S", f"{key}={text}"]
    return flags


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("overlay_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("dvc_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--params", "params_path", default="params.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--run", is_flag=True, help="run `dvc exp run` with the overlay (else only print the command)")
def main(overlay_path, dvc_args, params_path, run):
    try:
        overlay = load_params(overlay_path)
        if not isinstance(overlay, dict):
            raise DataError(overlay_path, None, None, "an overlay must be a mapping of params")
        changes = flatten(load_params(params_path), overlay, source=overlay_path)
    except DataError as e:
        raise click.ClickException(str(e)) from None
    cmd = ["dvc", "exp", "run", *set_flags(changes), *dvc_args]
    if not run:
        click.echo(shlex.join(cmd))
        return
    click.echo(f"{len(changes)} param(s) from {overlay_path}", err=True)
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
