"""Stage evaluate: every model answers the same eval questions; reward statistics, win rates with a verdict
(humans where their files exist, each judge beside them, never pooled), plots (DVC plot data + PNGs) and the
report, which opens with the verdicts. Answers a stage's own filter dropped (``keep: false``) are left out
and counted."""
from pathlib import Path

import click

from sciexplain.cli import get, params_option, read_params, stage
from sciexplain.io import DataError, read_json, read_jsonl, write_json, write_jsonl


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--reward", "reward_dir", default="models/reward", show_default=True)
@click.option("--prepared", default="data/prepared/eval.jsonl", show_default=True)
@click.option("--generations", default="data/generations", show_default=True)
@click.option("--annotations", default="data/annotations", show_default=True, help="human files: <annotations>/eval_<pair>/")
@click.option("--judge-prompt", default="prompts/judge.md", show_default=True)
@click.option("--cache-dir", default="data/cache/evaluate", show_default=True)
@click.option("--metrics-dir", default="metrics", show_default=True)
@click.option("--plots", "plots_dir", default="plots/eval", show_default=True)
@click.option("--report", "report_dir", default="reports", show_default=True)
@click.option("--sheets", "sheets_dir", default="data/eval_sheets", show_default=True,
              help="blind sheets of the eval comparisons, for human annotators")
@click.option("--select-metrics", default="metrics/select.json", show_default=True, help="the best-of-n curve")
@click.option("--validation", "validation_path", default="metrics/validate.json", show_default=True,
              help="every judge's human agreement (the validate stage)")
@click.option("--teacher-check", "teacher_check_path", default="metrics/teacher.json", show_default=True,
              help="the teacher-vs-student check (a teacher_vs_student block); no block or no file: no warning")
@click.option("--compare-summary", "compare_summary_path", default="metrics/winrate.json", show_default=True,
              help="the winrate stage's verdicts on the compare sheets, shown in the report's opening")
@params_option
@stage
def main(base_dir, reward_dir, prepared, generations, annotations, judge_prompt, cache_dir, metrics_dir, plots_dir,
         report_dir, sheets_dir, select_metrics, validation_path, teacher_check_path, compare_summary_path, params_path):
    from sciexplain import plots
    from sciexplain.annotations import check_pair_folders, sheet_hashes, write_sheet_csv
    from sciexplain.comparisons import adjust_family, headline_summary, power_at, read_groups
    from sciexplain.evaluation import (load_eval_answers, opening, pair_sheet, pair_winrate, reward_model_warning,
                                       reward_statistics, teacher_warning)
    from sciexplain.judges import run_panel
    from sciexplain.report import render_report
    from sciexplain.reward import RewardScorer
    from sciexplain.rm_gate import require_validated

    def optional_json(path):
        return read_json(path) if path and Path(path).exists() else None

    p = read_params(params_path)
    models = list(get(p, "evaluate.models"))
    questions = read_jsonl(prepared)
    limit = get(p, "evaluate.max_questions")
    questions = questions[:limit] if limit else questions
    ids = [q["id"] for q in questions]
    answers, dropped = load_eval_answers(generations, models, ids)
    validation = optional_json(validation_path)

    # reward statistics, over kept answers only -- from a reward model that cleared its human-pair validation
    require_validated(Path(metrics_dir) / "reward_model.json", get(p, "reward_model.allow_unvalidated"), "evaluate")
    scorer = RewardScorer(base_dir, reward_dir, quantize_4bit=get(p, "model.quantize_4bit"))
    rewards = {}
    for m in models:
        kept = [i for i in ids if i in answers[m]]
        recs = [answers[m][i] for i in kept]
        rewards[m] = dict(zip(kept, scorer.score([r["question"] for r in recs], [r["answer"] for r in recs],
                                                 batch_size=get(p, "score.batch_size"), progress=True)))
    reward_stats = reward_statistics(rewards, "base", n_resamples=get(p, "evaluate.bootstrap_resamples"))
    for m in models:
        reward_stats[m]["dropped_by_filter"] = dropped[m]["n"]
    write_json(Path(metrics_dir) / "eval_rewards.json", reward_stats)

    # win rates: humans where their files exist, each judge beside them
    winrates = {}
    check_pair_folders(annotations, get(p, "evaluate.pairs"), prefix="eval_")
    for pair in get(p, "evaluate.pairs"):
        sheet, key = pair_sheet(pair, answers, ids, get(p, "compare.seed"))
        sdir = Path(sheets_dir) / f"eval_{pair}"
        write_jsonl(sdir / "sheet.jsonl", sheet)
        write_jsonl(sdir / "key.jsonl", [{"item_id": i, **k} for i, k in key.items()])
        write_sheet_csv(sheet, sdir / "sheet.csv")
        panel = run_panel(sheet, get(p, "judge.panel"), base_dir=base_dir, cache_dir=Path(cache_dir) / pair,
                          prompt_path=judge_prompt, progress=False)
        judges = {f"judge-{name}": anns for name, anns in panel.items()}
        groups = read_groups(f"eval_{pair}", sheet_hashes(sheet), None, annotations, sdir / "sheet.jsonl")
        excluded = {m: sum(i not in answers[m] for i in ids) for m in pair.split("_vs_", 1)}
        both = sorted(set(judges) & set(groups.judges))
        if both:
            raise DataError(Path(annotations) / f"eval_{pair}", None, None,
                            f"a judge file {both[0]!r} here has the name of a judge of judge.panel: rename it")
        winrates[pair] = pair_winrate(pair, sheet, key, {**judges, **groups.judges}, groups.humans, validation, excluded)
        winrates[pair]["stale_rows"] = groups.stale_rows
    family = adjust_family(winrates, "evaluate: the headline sign test of every evaluate.pairs comparison")
    power = power_at(len(ids))
    for m in winrates.values():
        m["multiple_testing"] = family
        m["power_at_eval_n"] = power
    write_json(Path(metrics_dir) / "eval_winrates.json", winrates)
    headlines = {k.replace("_vs_", " vs "): headline_summary(v) for k, v in winrates.items() if headline_summary(v)}

    # plots: DVC plot data + PNGs
    pdir = Path(plots_dir)
    plots.write_plot_data(pdir / "data", rewards=rewards, winrates=headlines,
                          best_of_n=read_json(select_metrics).get("best_of_n", []))
    plots.ridge_plot({m: list(v.values()) for m, v in rewards.items()}, pdir / "ridge.png")
    plots.winrate_bars(headlines, pdir / "winrates.png")
    plots.best_of_n_curve(read_json(select_metrics).get("best_of_n", []), pdir / "best_of_n.png")
    plots.training_curves({s: Path(metrics_dir) / s for s in ("sft", "reward_model", "rs", "dpo")}, pdir / "training.png")

    # report
    rdir = Path(report_dir)
    rel = lambda name: str(Path("..") / pdir / name)  # noqa: E731
    rm_metrics = read_json(Path(metrics_dir) / "reward_model.json")
    compare_summary = optional_json(compare_summary_path) or {}
    best = max((m for m in models if m not in ("base", "teacher") and reward_stats[m]["mean"] is not None),
               key=lambda m: reward_stats[m]["mean"], default=None)
    warnings = [teacher_warning(optional_json(teacher_check_path)), reward_model_warning(rm_metrics)]
    if validation is None:
        warnings.append(f"Warning: no judge validation ({validation_path} missing): every judged verdict reads "
                        "'judge not validated'.")
    context = {
        "opening": opening(winrates, family, power, dropped, warnings),
        "compare_verdicts": compare_summary,
        "judges_beside": {k.replace("_vs_", " vs "): v for k, v in winrates.items()},
        "params": {k: p.get(k) for k in ("base_model", "prepare", "teacher", "sft", "reward_model", "sample", "select",
                                         "rs", "dpo", "evaluate")},
        "sources": {"base": read_json(Path(metrics_dir) / "base_model.json").get("source"),
                    "teacher": ("local:" + base_dir) if get(p, "teacher.backend") == "local"
                               else f"{get(p, 'teacher.backend')}:{get(p, 'teacher.model')}",
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
                     for i in ids[: get(p, "evaluate.examples")]],
        "plots": {"Reward per model": rel("ridge.png"), "Win rates": rel("winrates.png"),
                  "Best-of-n": rel("best_of_n.png"), "Training curves": rel("training.png")},
    }
    render_report(context, rdir / "report.md", rdir / "report.html")
    means = ", ".join(f"{m} {s['mean']:.3f}" for m, s in reward_stats.items() if s["mean"] is not None)
    for pair, m in winrates.items():
        click.echo(f"{pair}: {m['verdict']['sentence'] if m['verdict'] else 'no votes'}")
    click.echo(f"evaluate: mean reward {means}; report -> {rdir / 'report.md'}")


if __name__ == "__main__":
    main()
