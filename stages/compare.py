"""Stage compare: for each pair "x_vs_y" of compare.pairs, a blind A/B sheet of the two models' eval answers.

Writes ``<out>/<pair>/sheet.jsonl`` (what annotators and judges see; each item with the ``item_hash`` of its
question and answers in their A/B order, which every annotation row must carry to count), ``key.jsonl``
(which model is A and B, kept apart) and ``sheet.csv`` (the sheet for spreadsheet annotators, with the hash
in its last column). Items are the questions
of the prepared split, in its order (item_id = question id), with sample 0 of each model's answers, and
``finished_a`` / ``finished_b`` where the generation records say whether each answer stopped on its own
(the judge panel never lets an unfinished answer beat a finished one, see sciexplain/judges.py).
"""
import shutil
import tempfile
from pathlib import Path

import click

from sciexplain.annotations import build_sheet, write_sheet_csv
from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.io import DataError, read_jsonl, replace_dir, write_jsonl


def parse_pair(pair) -> tuple[str, str]:
    """``"base_vs_sft"`` -> ``("base", "sft")``; DataError for anything else."""
    parts = pair.split("_vs_") if isinstance(pair, str) else []
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1] or any("/" in p or p.startswith(".") for p in parts):
        raise DataError("params.yaml", None, "compare.pairs", f"bad pair {pair!r}: write two different model names as 'x_vs_y'")
    return parts[0], parts[1]


def load_answers(path: Path, model: str) -> dict[str, dict]:
    """``{id: record}`` of the sample-0 answers in one generation file (checked)."""
    answers = {}
    for n, rec in enumerate(read_jsonl(path, required=("id", "model")), 1):
        where = f"record {n} (id {rec['id']})"
        if rec["model"] != model:
            raise DataError(path, where, "model", f"expected {model!r}, got {rec['model']!r}")
        if not isinstance(rec.get("answer"), str):
            raise DataError(path, where, "answer", "missing or not a string")
        sample = rec.get("sample", 0)
        if not isinstance(sample, int):
            raise DataError(path, where, "sample", f"must be an integer, got {sample!r}")
        if sample != 0:
            continue
        if rec["id"] in answers:
            raise DataError(path, where, "id", "a second sample-0 answer for this question")
        answers[rec["id"]] = rec
    return answers


@click.command()
@click.option("--generations", "gen_dir", default="data/generations", show_default=True,
              help="folder of <model>/<split>.jsonl answers")
@click.option("--prepared", "prepared_dir", default="data/prepared", show_default=True, help="folder of <split>.jsonl questions")
@click.option("--split", default="eval", show_default=True)
@click.option("--out", "out_dir", default="data/compare", show_default=True)
@params_option
@stage
def main(gen_dir, prepared_dir, split, out_dir, params_path):
    p = read_params(params_path)
    pairs = get(p, "compare.pairs")
    seed = get(p, "compare.seed")
    if not isinstance(pairs, list) or not pairs:
        raise DataError(params_path, None, "compare.pairs", "must be a non-empty list like [base_vs_sft]")
    if len(set(pairs)) != len(pairs):
        raise DataError(params_path, None, "compare.pairs", "lists a pair twice")
    models = {pair: parse_pair(pair) for pair in pairs}

    q_path = Path(prepared_dir) / f"{split}.jsonl"
    questions = read_jsonl(q_path, required=("id", "question"))
    answers = {}
    for m in sorted({m for pair in models.values() for m in pair}):
        path = Path(gen_dir) / m / f"{split}.jsonl"
        answers[m] = (path, load_answers(path, m))
        for q in questions:
            if q["id"] not in answers[m][1]:
                raise DataError(path, None, "id", f"no sample-0 answer for question {q['id']} of {q_path}")

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for pair, (m1, m2) in models.items():
            a1, a2 = answers[m1][1], answers[m2][1]
            sheet, key = build_sheet(
                ({"item_id": q["id"], "question": q["question"], "answer_1": a1[q["id"]]["answer"],
                  "answer_2": a2[q["id"]]["answer"], "model_1": m1, "model_2": m2,
                  "finished_1": a1[q["id"]].get("finished"), "finished_2": a2[q["id"]].get("finished")}
                 for q in questions), seed=seed)
            write_jsonl(tmp / pair / "sheet.jsonl", sheet)
            write_jsonl(tmp / pair / "key.jsonl", key)
            write_sheet_csv(sheet, tmp / pair / "sheet.csv")
            n_a = sum(k["a_model"] == m1 for k in key)
            click.echo(f"{pair}: {len(sheet)} items ({m1} shown as A on {n_a}, {m2} on {len(key) - n_a})")
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
