"""The final evaluation: every model's eval answers scored by the reward model, reward statistics vs base,
judged win rates (automatic panel + any human files), and the context of the report."""
from __future__ import annotations

from pathlib import Path

from .annotations import build_sheet
from .comparisons import summarize
from .io import DataError, read_jsonl
from .stats import paired_wilcoxon, reward_summary


def load_eval_answers(generations_dir, models: list[str], eval_ids: list[str]) -> dict[str, dict[str, dict]]:
    """``{model: {question_id: record}}`` for sample 0 of each model's eval answers, covering every eval id."""
    out = {}
    for m in models:
        path = Path(generations_dir) / m / "eval.jsonl"
        if not path.exists():
            raise DataError(path, None, None, f"no eval answers for model {m!r}: build it or drop it from evaluate.models")
        recs = {}
        for n, r in enumerate(read_jsonl(path, required=("id", "question")), 1):
            if not isinstance(r.get("answer"), str):
                raise DataError(path, n, "answer", "missing or not a string")
            if r.get("sample", 0) == 0:
                recs[r["id"]] = r  # an empty answer (e.g. a teacher reply with a plan but no answer) scores as empty
        missing = [i for i in eval_ids if i not in recs]
        if missing:
            raise DataError(path, None, "id", f"no answer for eval question {missing[0]!r} ({len(missing)} missing)")
        out[m] = {i: recs[i] for i in eval_ids}
    return out


def reward_statistics(rewards: dict[str, list[float]], baseline: str = "base", n_resamples: int = 2000) -> dict:
    """reward_summary per model + a paired Wilcoxon signed-rank test against the baseline (same questions)."""
    out = {}
    for m, values in rewards.items():
        entry = reward_summary(values, n_resamples=n_resamples)
        entry["wilcoxon"] = paired_wilcoxon(values, rewards[baseline]) if m != baseline and baseline in rewards else None
        out[m] = entry
    return out


def pair_sheet(pair: str, answers: dict[str, dict[str, dict]], eval_ids: list[str], seed: int):
    """The blind sheet + key of ``<x>_vs_<y>`` over the eval questions."""
    if "_vs_" not in str(pair):
        raise DataError("params.yaml", "evaluate.pairs", str(pair), "a pair is written <model>_vs_<model>")
    a, b = pair.split("_vs_", 1)
    for m in (a, b):
        if m not in answers:
            raise DataError("params.yaml", "evaluate.pairs", pair, f"model {m!r} is not in evaluate.models")
    items = [{"item_id": i, "question": answers[a][i]["question"], "answer_1": answers[a][i]["answer"],
              "answer_2": answers[b][i]["answer"], "model_1": a, "model_2": b} for i in eval_ids]
    sheet, key = build_sheet(items, seed)
    return sheet, {k["item_id"]: {"a_model": k["a_model"], "b_model": k["b_model"]} for k in key}


def pair_winrate(pair: str, sheet: list[dict], key: dict, judges: dict, humans: dict) -> dict:
    return summarize(pair, sheet, key, judges, humans)
