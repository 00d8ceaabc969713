"""Shared plumbing for the thin Click commands in stages/: params, clean errors, logging."""
from __future__ import annotations

import faulthandler
import functools
import logging
import os
import sys
import time

import click

from . import machine
from .records import UserError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

def stage(fn):
    """Wrap a stage's main: load params.yaml, log timing, turn user errors into one clean line (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        try:
            faulthandler.enable()  # a crash inside a native engine prints where it happened, not a bare -11
        except (AttributeError, ValueError, OSError):  # stderr without a file descriptor (click's test runner)
            pass
        t0 = time.time()
        try:
            result = fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from None
        finally:
            machine.DTYPE_SETTING["value"] = None  # a stage run in-process (tests) leaves no dtype behind
        logging.getLogger(fn.__module__).info("done in %.1f s", time.time() - t0)
        return result

    return wrapper


def params_option(fn):
    return click.option("--params", "params_path", default="params.yaml", show_default=True,
                        type=click.Path(dir_okay=False), help="params file")(fn)


def _options(fn, options):
    for option in reversed(options):
        fn = option(fn)
    return fn


def generation_outputs(out: str, cache: str, metrics: str, out_dest: str = "out_path"):
    """The outputs of a stage that generates text: ``--out`` (a DVC out), ``--cache`` (the append-only response cache,
    kept outside DVC outs so it survives reruns and resumes a killed run) and ``--metrics``."""
    options = (
        click.option("--out", out_dest, default=out, show_default=True),
        click.option("--cache", "cache_path", default=cache, show_default=True,
                     help="response cache (kept outside DVC outs so it survives reruns)"),
        click.option("--metrics", "metrics_path", default=metrics, show_default=True),
    )
    return lambda fn: _options(fn, options)


def trainer_outputs(name: str):
    """The four outputs of a training stage as options, defaults from its ``name``: ``--out models/<name>`` (the
    adapter), ``--metrics metrics/<name>.json``, ``--live metrics/<name>`` (DVCLive curves) and ``--scratch
    scratch/<name>`` (trainer checkpoints, not a DVC out)."""
    options = (
        click.option("--out", "out_dir", default=f"models/{name}", show_default=True),
        click.option("--metrics", "metrics_path", default=f"metrics/{name}.json", show_default=True),
        click.option("--live", "live_dir", default=f"metrics/{name}", show_default=True,
                     help="DVCLive folder (training curves)"),
        click.option("--scratch", default=f"scratch/{name}", show_default=True,
                     help="trainer scratch: checkpoints (not a DVC out)"),
    )

    return lambda fn: _options(fn, options)


def read_params(path: str, stage: str | list[str] | None = None):
    """The params file, checked against :mod:`sciexplain.params_schema` before the stage does any work, as typed
    read-only sections (``p.teacher.temperature``; defaults applied). ``stage``: the dvc.yaml stage name(s) the
    caller is (``teacher``, ``answer@base``, ``rs``): the sections it declares are checked; None (not a stage): the
    whole file. A bad value is one line naming the key (exit 1 under :func:`stage`)."""
    from . import params_schema

    return params_schema.load(path, stage)
