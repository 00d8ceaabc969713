"""Stage judge@<pair>: the automatic judge panel (judge.panel) on one blind sheet (``--pair``; without it, on every
sheet in data/compare).

Writes ``<out>/<pair>/judge-<name>.jsonl`` in the human annotation format (judges never see the key), every
row bound to the sheet item it judged (``item_hash``) and marked ``"annotator_type": "judge"`` (readers tell
judges from people by that field, not by the file name), and per-judge counts (unparseable replies, order disagreements, cache hits) to the metrics file.
LLM judge replies are cached in ``<cache>/<name>.jsonl``: a rerun never repeats a finished call.
"""
from pathlib import Path

import click

from sciexplain.annotation_store import write_annotations
from sciexplain.annotations import JUDGE
from sciexplain.sheets import read_sheet, sheet_hashes
from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import DataError, new_dir, write_json
from sciexplain.judges import Panel


@click.command()
@click.option("--pair", "only", multiple=True, help="the pair(s) to judge (default: every <compare>/<pair>/ sheet)")
@click.option("--compare", "compare_dir", default="data/compare", show_default=True, help="folder of <pair>/sheet.jsonl")
@click.option("--base", "base_dir", default="models/base", show_default=True, help="model of local LLM judges")
@click.option("--prompt", "prompt_path", default="prompts/judge.md", show_default=True, help="LLM judge prompt template")
@click.option("--cache", "cache_dir", default="data/cache/judge", show_default=True, help="LLM reply caches")
@click.option("--out", "out_dir", default="data/judgments", show_default=True)
@click.option("--metrics", "metrics_path", default="metrics/judge.json", show_default=True)
@params_option
@stage
def main(only, compare_dir, base_dir, prompt_path, cache_dir, out_dir, metrics_path, params_path):
    p = read_params(params_path, "judge")
    panel = Panel(p.judge.panel, base_dir=base_dir, cache_dir=cache_dir, prompt_path=prompt_path)
    sheets = ([Path(compare_dir) / pair / "sheet.jsonl" for pair in only] if only
              else sorted(d for d in Path(compare_dir).glob("*/sheet.jsonl")))
    missing = [s for s in sheets if not s.exists()]
    if missing:
        raise DataError(missing[0], None, None, "no sheet: run the compare stage of this pair first")
    if not sheets:
        raise DataError(compare_dir, None, None, "no <pair>/sheet.jsonl found: run the compare stage first")
    if not panel.names:
        click.echo("judge.panel is empty: no judgments written", err=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"judges": panel.names, "pairs": {}}
    for sheet_path in sheets:
        pair = sheet_path.parent.name
        sheet = read_sheet(sheet_path)
        result = panel.judge(sheet, label=pair)
        with new_dir(out / pair) as tmp:
            for name, annotations in result.items():
                write_annotations(tmp / f"judge-{name}.jsonl", annotations, sheet_hashes(sheet), JUDGE)
        # cache hits/misses go to the log only: the metrics of a rerun must not change
        cache = {n: f"{s.pop('hits')} cached, {s.pop('misses')} new" for n, s in result.stats.items() if "hits" in s}
        metrics["pairs"][pair] = result.stats
        click.echo(f"{pair}: {len(sheet)} items judged by {', '.join(panel.names) or 'nobody'}"
                   + (f"; LLM calls: {cache}" if cache else ""))
    write_json(metrics_path, metrics)


if __name__ == "__main__":
    main()
