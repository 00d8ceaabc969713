"""What the report stage makes of the other stages' outputs: reward statistics, every comparison's win rates as one
Holm family, the strength bars' data, each figure's plot data and PNGs, and the report's context.

:func:`make_report` is the whole stage's work (``stages/report.py`` is its command line); nothing here loads a model.
The teacher's name comes from the teacher stage's own metrics (``metrics/teacher.json``: ``model``), so the report
and the metrics never disagree about what answered.
"""
from __future__ import annotations

from pathlib import Path

from typing import Mapping

from .comparisons import verdict_sentence
from .records import DataError, first_answers, read_json, read_jsonl, write_json
from .stats import DECISIVE_STRENGTHS, round_p, paired_wilcoxon, reward_summary
from .teacher_check import sentence as teacher_sentence
from .stats import holm
from .verdicts import NOT_VALIDATED

PLOT_COLUMNS = ("bar", "pair", "who", "model", "strength", "votes")
FAMILY = "compare.pairs"  # the family of headline sign tests: every comparison of compare.pairs


def strength_rows(pair: str, metrics: dict) -> list[tuple]:
    """Long-format rows (bar, pair, who, model, strength, votes) for the stacked strength bars of one pair."""
    rows = []
    groups = ([("humans", metrics["humans"])] if metrics["humans"] else []) + list(metrics["judges"].items())
    for who, summary in groups:
        for model, counts in summary["strength"].items():
            rows.extend((f"{pair} {model} ({who})", pair, who, model, s, counts[s]) for s in DECISIVE_STRENGTHS)
    return rows


def base_label(m) -> str | None:
    """``embedded:SmolLM2-135M-Instruct.Q4_1.gguf``, ``hub:meta-llama/Llama-2-7b-chat-hf`` from metrics/base_model.json."""
    return f"{m['source']}:{m['model']}" if m and m.get("model") else (m or {}).get("source")


def make_report(p, *, scores_dir, comparisons_dir, prepared, generations, annotations, metrics_dir, plots_dir,
                strengths_path, report_dir) -> tuple[dict, dict]:
    """Write every output of the report stage from the typed params ``p``; returns ``(reward statistics per model,
    win-rate metrics per pair)``."""
    from . import plots
    from .annotations import check_pair_folders
    from .comparisons import adjust_family, headline_summary, power_at
    from .report import render_report

    metrics_dir = Path(metrics_dir)

    def optional_json(path):
        return read_json(path) if Path(path).exists() else None

    def need(path, stage_name):
        if not Path(path).exists():
            raise DataError(path, None, None, f"missing: run the {stage_name} stage first")
        return read_json(path)

    models = list(p.evaluate.models)
    pairs = list(p.compare.pairs)
    questions = read_jsonl(prepared)
    limit = p.evaluate.max_questions
    questions = questions[:limit] if limit else questions
    ids = [q["id"] for q in questions]

    # reward statistics, over kept answers only
    scored = {m: need(Path(scores_dir) / f"{m}.json", f"score_eval@{m}") for m in models}
    rewards = {m: scored[m]["rewards"] for m in models}
    dropped = {m: scored[m]["dropped"] for m in models}
    reward_stats = reward_statistics(rewards, "base", n_resamples=p.evaluate.bootstrap_resamples)
    for m in models:
        reward_stats[m]["dropped_by_filter"] = dropped[m]["n"]
    write_json(metrics_dir / "eval_rewards.json", reward_stats)

    # win rates: every pair's own metrics, the headline tests Holm-adjusted as one family
    check_pair_folders(annotations, pairs)
    winrates = {pair: need(Path(comparisons_dir) / f"{pair}.json", f"winrate@{pair}") for pair in pairs}
    family = adjust_family(winrates, FAMILY)
    power = power_at(len(ids))
    for m in winrates.values():
        m["multiple_testing"] = family
    write_json(metrics_dir / "eval_winrates.json", winrates)
    headlines = {k.replace("_vs_", " vs "): headline_summary(v) for k, v in winrates.items() if headline_summary(v)}
    plots.write_csv(strengths_path, PLOT_COLUMNS,
                    [row for pair, m in winrates.items() for row in strength_rows(pair, m)])

    # plots: each figure's data written once (dvc.yaml plots it), the report's PNGs drawn from those files
    pdir = Path(plots_dir)
    best_of_n = (optional_json(metrics_dir / "select.json") or {}).get("best_of_n", [])
    plots.write_plot_data(pdir / "data", rewards=rewards, winrates=headlines, best_of_n=best_of_n)
    plots.figures_from_data(pdir / "data", pdir, models=models)
    plots.training_curves({s: metrics_dir / s for s in ("sft", "reward_model", "rs", "dpo")}, pdir / "training.png")

    # report
    answers = {}
    for m in models:
        recs = first_answers(Path(generations) / m / "eval.jsonl")
        answers[m] = {i: recs[i] for i in ids if i in recs and recs[i].get("keep") is not False}
    rdir = Path(report_dir)
    rel = lambda name: str(Path("..") / pdir / name)  # noqa: E731
    rm_metrics = optional_json(metrics_dir / "reward_model.json") or {}
    validation_path = metrics_dir / "validate.json"
    best = max((m for m in models if m not in ("base", "teacher") and reward_stats[m]["mean"] is not None),
               key=lambda m: reward_stats[m]["mean"], default=None)
    teacher = optional_json(metrics_dir / "teacher.json") or {}
    warnings = [teacher_warning(teacher or None), reward_model_warning(rm_metrics)]
    if not validation_path.exists():
        warnings.append(f"Warning: no judge validation ({validation_path} missing): every judged verdict reads "
                        "'judge not validated'.")
    context = {
        "opening": opening(winrates, family, power, dropped, warnings),
        "judges_beside": {k.replace("_vs_", " vs "): v for k, v in winrates.items()},
        "params": p.as_dict("base_model", "prepare", "teacher", "sft", "reward_model", "sample", "select", "rs", "dpo",
                            "compare", "evaluate"),
        "sources": {"base": base_label(optional_json(metrics_dir / "base_model.json")),
                    "teacher": teacher.get("model"),  # the teacher stage's own label of what answered
                    **{m: f"models/{m} (LoRA adapter)" for m in models if m not in ("base", "teacher")}},
        "reward_stats": reward_stats,
        "winrates": headlines,
        "reward_model": {**rm_metrics.get("heldout", {}), "baselines": rm_metrics.get("baselines", {}),
                         "agreement with annotators' majority": (rm_metrics.get("majority_agreement") or {}).get("all", {}).get("accuracy"),
                         "train pairs": rm_metrics.get("pairs", {}).get("train")},
        "best_model": best,
        "examples": [{"id": i, "question": questions[ids.index(i)]["question"],
                      "answers": {m: answers[m][i]["answer"] if i in answers[m]
                                  else f"(dropped by its own filter: {dropped[m]['reasons']})" for m in models}}
                     for i in ids[: p.evaluate.examples]],
        "plots": {"Reward per model": rel("ridge.png"), "Win rates": rel("winrates.png"),
                  "Best-of-n": rel("best_of_n.png"), "Training curves": rel("training.png")},
    }
    render_report(context, rdir / "report.md", rdir / "report.html")
    write_json(metrics_dir / "headline.json",
               headline(winrates, reward_stats, rm_metrics, optional_json(validation_path)))
    return reward_stats, winrates


# --------------------------------------------------------------------------- the report's context

def headline(winrates: Mapping[str, Mapping], reward_stats: Mapping[str, Mapping], rm: Mapping | None,
             validation: Mapping | None) -> dict:
    """metrics/headline.json: the numbers a person diffs between experiments, short keys, codes not sentences.

    Per comparison: the subject's win rate among decisive votes with its Wilson 95% interval, the verdict (a code:
    better, worse, cannot tell at this n, judge not validated, or no votes), the instrument that decided it (``by``:
    humans or a judge), n, the Holm-adjusted p, the deciding judge's agreement with people on held-out human pairs
    (``judge_agree``; None when people decided) and the annotators' Krippendorff alpha (``alpha``; None with fewer
    than two people). Per model the reward mean, median and std; each judge's and each trivial rule's agreement
    with people (validate stage); the reward model's held-out accuracy beside the longer-answer rule."""
    out: dict = {}
    for pair, m in winrates.items():
        v = m.get("verdict")
        if not v:
            out[pair] = {"verdict": "no votes"}
            continue
        src = m["headline_source"]
        s = m["humans"] if src == "humans" else m["judges"][src]
        ci = s["models"][v["subject"]]
        alpha = ((m.get("humans") or {}).get("agreement") or {}).get("krippendorff_alpha")
        out[pair] = {"win_rate": v["win_rate"], "ci_low": ci.get("ci95_low"), "ci_high": ci.get("ci95_high"),
                     "verdict": v["verdict"], "by": src, "n": v["n"], "p": v.get("p_holm", v.get("p")),
                     "judge_agree": (v.get("human_agreement") or {}).get("agreement"), "alpha": alpha}
    out["reward"] = {model: {k: s.get(k) for k in ("mean", "median", "std")} for model, s in reward_stats.items()}
    if validation:
        out["agree"] = {name: j.get("agreement") for name, j in validation.get("judges", {}).items()}
    if rm and rm.get("heldout"):
        out["rm"] = {"accuracy": rm["heldout"].get("accuracy"),
                     "longer": (rm.get("baselines", {}).get("longer_answer") or {}).get("accuracy"),
                     "cleared": (rm.get("validation") or {}).get("cleared")}
    return out


def reward_statistics(rewards: Mapping[str, Mapping[str, float]], baseline: str = "base", n_resamples: int = 2000) -> dict:
    """reward_summary per model + a paired Wilcoxon signed-rank test against the baseline on the questions
    both answered (``rewards = {model: {question_id: reward}}``); the Wilcoxon p-values are Holm-adjusted
    across the models (``wilcoxon.p_holm``)."""
    out = {}
    for m, values in rewards.items():
        entry = reward_summary(list(values.values()), n_resamples=n_resamples)
        if m != baseline and baseline in rewards:
            common = [i for i in values if i in rewards[baseline]]
            entry["wilcoxon"] = (paired_wilcoxon([values[i] for i in common], [rewards[baseline][i] for i in common])
                                 if common else None)
        else:
            entry["wilcoxon"] = None
        out[m] = entry
    adjusted = holm({m: e["wilcoxon"]["p_value"] for m, e in out.items() if e["wilcoxon"]})
    for m, p in adjusted.items():
        out[m]["wilcoxon"]["p_holm"] = round_p(p)
    return out


# --------------------------------------------------------------------------- the report's opening

def _truthy(d: Mapping, *path):
    for k in path:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def teacher_warning(teacher_check: Mapping | None) -> str | None:
    """A warning when the teacher-vs-student check (``metrics/teacher.json``'s ``vs_student`` block, written by
    :mod:`sciexplain.teacher_check`; ``teacher_vs_student`` or a bare block also read) does not say the teacher
    is better than its student: a verdict other than "better", ``teacher_better`` false, or no comparison at
    all (verdict None). No block (or no file): no warning."""
    if not isinstance(teacher_check, Mapping):
        return None
    block = teacher_check.get("vs_student", teacher_check.get("teacher_vs_student"))
    if block is None and ("verdict" in teacher_check or "teacher_better" in teacher_check):
        block = teacher_check
    if not isinstance(block, Mapping):
        return None
    verdict = block.get("verdict")
    if isinstance(verdict, Mapping):
        verdict = verdict.get("verdict")
    if verdict == "better" or block.get("teacher_better") is True:
        return None
    rate = block.get("win_rate", block.get("teacher_win_rate"))
    if isinstance(rate, Mapping):
        rate = rate.get("teacher")
    rate_txt = f" (teacher win rate {100 * rate:.0f}% of decisive votes)" if isinstance(rate, (int, float)) else ""
    what = (f"the check says {verdict!r}" if verdict else "the check made no comparison")
    full = "decisive" in block and block.get("judge")  # a vs_student block of teacher_check (or not compared)
    why = f" {teacher_sentence(block)}" if full or "not_compared" in block else ""
    return (f"Warning: the teacher is not shown to write better than its student{rate_txt}; {what}. Training on "
            f"its answers (sft, rs) has no premise to stand on.{why}")


def reward_model_warning(rm: Mapping | None) -> str | None:
    """A warning when the reward model is used although it did not clear validation on human pairs.

    Recognised (any one): ``validation.cleared`` / ``human_validation.cleared`` / ``validated`` false with
    ``allow_unvalidated`` (or ``used_unvalidated``) true; or ``used_unvalidated: true`` alone. No flag, no warning."""
    if not isinstance(rm, Mapping):
        return None
    cleared = None
    for path in (("validation", "cleared"), ("human_validation", "cleared"), ("validated",), ("validation_cleared",)):
        v = _truthy(rm, *path)
        if isinstance(v, bool):
            cleared = v
            break
    used_anyway = any(_truthy(rm, *p) is True for p in (("allow_unvalidated",), ("used_unvalidated",),
                                                        ("validation", "allow_unvalidated"),
                                                        ("human_validation", "allow_unvalidated")))
    if cleared is False or (cleared is None and _truthy(rm, "used_unvalidated") is True):
        acc = _truthy(rm, "validation", "accuracy") or _truthy(rm, "human_validation", "accuracy")
        acc_txt = f" (held-out human-pair accuracy {100 * acc:.0f}%)" if isinstance(acc, (int, float)) else ""
        how = " and a param allowed it to be used anyway" if used_anyway else ""
        return (f"Warning: the reward model did not clear validation on human pairs{acc_txt}{how}: the reward "
                "statistics, rejection sampling and DPO pairs rest on a predictor people do not back.")
    return None


def opening(winrates: Mapping[str, Mapping], family: Mapping, power: Mapping, dropped: Mapping[str, Mapping],
            warnings: list[str]) -> dict:
    """The report's first section: warnings, one verdict per comparison in plain words, what the eval
    split's n can detect, which tests were adjusted, what the filters dropped."""
    verdicts = []
    for pair, m in winrates.items():
        v = m.get("verdict")
        if not v:
            continue
        beside = [f"{name}: {j['verdict']['verdict']}" for name, j in (m.get("judges") or {}).items()
                  if m.get("headline_source") != name]
        verdicts.append({"comparison": pair.replace("_vs_", " vs "), "verdict": v["verdict"], "sentence": verdict_sentence(v),
                         "source": m.get("headline_source"), "n": v["n"],
                         "detectable_win_rate": v.get("detectable_win_rate"), "beside": beside})
    n_not_validated = sum(v["verdict"] == NOT_VALIDATED for v in verdicts)
    return {"warnings": [w for w in warnings if w], "verdicts": verdicts, "multiple_testing": family, "power": power,
            "dropped": {m: d for m, d in dropped.items() if d.get("n")}, "not_validated": n_not_validated}
