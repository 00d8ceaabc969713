"""Stage compare@<pair>: a blind A/B sheet of two models' eval answers, one comparison of the study.

``compare.pairs`` maps each comparison ``x_vs_y`` to its two models ``[x, y]`` (dvc.yaml reads the list to declare
``data/generations/x/eval.jsonl`` and ``.../y/eval.jsonl`` as the stage's deps). Writes ``<out>/<pair>/``:
``sheet.jsonl`` (what annotators and judges see; each item with the ``item_hash`` of its question and answers in
their A/B order, which every annotation row must carry to count), ``key.jsonl`` (which model is A and B, kept
apart), ``sheet.csv`` (the sheet for spreadsheet annotators, with the hash in its last column) and ``meta.json``
(how many eval questions, and how many each side's own filter dropped).

Items are the eval questions (the first ``evaluate.max_questions`` when set), in their order (item_id = question
id), with sample 0 of each model's answers; an answer its own stage dropped (``keep: false``, e.g. an empty teacher
answer) is no answer: its question is left out of this pair's sheet and counted. ``finished_a`` / ``finished_b``
say whether each answer stopped on its own (the judge panel never lets an unfinished answer beat a finished one).
The A/B order of an item is drawn from ``(compare.seed, item id)`` only. Without ``--pair`` every pair of
``compare.pairs`` is built (each into its own folder).
"""
from collections import Counter
from pathlib import Path

import click

from sciexplain.sheets import build_sheet, write_sheet_csv
from sciexplain.cli import params_option, read_params, stage
from sciexplain.records import DataError, first_answers, new_dir, read_jsonl, write_json, write_jsonl


def parse_pair(pair) -> tuple[str, str]:
    """``"base_vs_sft"`` -> ``("base", "sft")``; DataError for anything else."""
    parts = pair.split("_vs_") if isinstance(pair, str) else []
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1] or any("/" in p or p.startswith(".") for p in parts):
        raise DataError("params.yaml", None, "compare.pairs", f"bad pair {pair!r}: write two different model names as 'x_vs_y'")
    return parts[0], parts[1]


def pair_models(pairs, pair: str, where="params.yaml") -> tuple[str, str]:
    """The two models of ``pair`` in ``compare.pairs`` (``{x_vs_y: [x, y]}``); the name must spell the list."""
    if not isinstance(pairs, dict) or pair not in pairs:
        raise DataError(where, None, f"compare.pairs.{pair}", "no such pair in compare.pairs")
    models = tuple(parse_pair(pair))
    if list(pairs[pair] or []) != list(models):
        raise DataError(where, None, f"compare.pairs.{pair}", f"must list the pair's two models {list(models)}, "
                        f"got {pairs[pair]!r}")
    return models


def load_answers(path: Path, model: str) -> dict[str, dict]:
    """``{id: record}`` of the sample-0 answers in one generation file (checked)."""
    if not Path(path).exists():
        raise DataError(path, None, None, f"no eval answers for model {model!r}: add it to answer.models (or the "
                        "stage that writes them) or drop the pair")
    return first_answers(path, required=("id", "model"), model=model)


def kept_answers(path: Path, model: str, ids: list[str], q_path) -> tuple[dict, dict]:
    """(``{id: record}`` of the kept sample-0 answers to ``ids``, ``{n, reasons, ids}`` of those its filter dropped)."""
    answers = load_answers(path, model)
    for i in ids:
        if i not in answers:
            raise DataError(path, None, "id", f"no sample-0 answer for question {i} of {q_path}")
    gone = [i for i in ids if answers[i].get("keep") is False]
    dropped = {"n": len(gone), "ids": gone,
               "reasons": dict(sorted(Counter(str(answers[i].get("drop_reason")) for i in gone).items()))}
    return {i: answers[i] for i in ids if i not in set(gone)}, dropped


@click.command()
@click.option("--pair", "only", multiple=True, help="the pair(s) of compare.pairs to build (default: every pair)")
@click.option("--generations", "gen_dir", default="data/generations", show_default=True,
              help="folder of <model>/<split>.jsonl answers")
@click.option("--prepared", "prepared_dir", default="data/prepared", show_default=True, help="folder of <split>.jsonl questions")
@click.option("--split", default="eval", show_default=True)
@click.option("--out", "out_dir", default="data/compare", show_default=True, help="writes <out>/<pair>/")
@params_option
@stage
def main(only, gen_dir, prepared_dir, split, out_dir, params_path):
    p = read_params(params_path, "compare")
    pairs = p.compare.pairs
    models = {pair: pair_models(pairs, pair, params_path) for pair in (only or pairs)}
    seed = p.compare.seed
    limit = p.evaluate.max_questions

    q_path = Path(prepared_dir) / f"{split}.jsonl"
    questions = read_jsonl(q_path, required=("id", "question"))
    questions = questions[:limit] if limit else questions
    ids = [q["id"] for q in questions]
    text = {q["id"]: q["question"] for q in questions}
    answers = {m: kept_answers(Path(gen_dir) / m / f"{split}.jsonl", m, ids, q_path)
               for m in sorted({m for pair in models.values() for m in pair})}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for pair, (m1, m2) in models.items():
        a1, a2 = answers[m1][0], answers[m2][0]
        sheet, key = build_sheet(
            ({"item_id": i, "question": text[i], "answer_1": a1[i]["answer"],
              "answer_2": a2[i]["answer"], "model_1": m1, "model_2": m2,
              "finished_1": a1[i].get("finished"), "finished_2": a2[i].get("finished")}
             for i in ids if i in a1 and i in a2), seed=seed)
        with new_dir(out / pair) as tmp:
            write_jsonl(tmp / "sheet.jsonl", sheet)
            write_jsonl(tmp / "key.jsonl", key)
            write_sheet_csv(sheet, tmp / "sheet.csv")
            write_json(tmp / "meta.json", {"pair": pair, "models": [m1, m2], "split": split, "questions": len(ids),
                                           "items": len(sheet),
                                           "excluded_dropped_answers": {m: answers[m][1]["n"] for m in (m1, m2)}})
        n_a = sum(k["a_model"] == m1 for k in key)
        click.echo(f"{pair}: {len(sheet)} items ({m1} shown as A on {n_a}, {m2} on {len(key) - n_a})")


if __name__ == "__main__":
    main()
