"""The reward model measured against people: held-out human pairs, beside the longer-answer and rubric baselines,
and agreement with the annotators' majority on the compare sheets (:func:`majority_agreement`).

The held-out pairs are the validate stage's ``data/human_pairs/test.jsonl`` (split by question, disjoint from
every training pair's question), labelled by people (votes, or a pair file) -- never by a judge the reward model
is compared with. The pairs become the same blind sheet the validate stage builds
(:func:`sciexplain.validation.make_sheet`); the reward model picks the higher-scored answer
(:func:`sciexplain.validation.choices_from_scores`) and :func:`sciexplain.validation.validate` scores it beside
the rubric judge and the longer-answer and random rules on the same items: accuracy (agreement) over decisive
picks with a Wilson interval and a question-level cluster-bootstrap interval, Cohen's kappa, the share of picks
for the longer answer, and an exact McNemar test of each (reward model, rubric) against the longer-answer rule,
Holm-adjusted over those two.

Losses on the same pairs: the reward model's ``mean(-logsigmoid(r_c - r_r - margin))`` and the constant
predictor's (``r_c = r_r``, :func:`sciexplain.reward.constant_loss`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .panel import Panel
from .records import stable_id
from .reward import RewardScorer, round4, constant_loss, pair_loss
from .stats import TIE, majority_vote, wilson_interval
from .validation import choices_from_scores, make_sheet, validate

NAME = "reward_model"


def _as_accuracy(m: Mapping) -> dict:
    """A predictor's validation figures in the report's accuracy format (``n`` = decisive picks)."""
    return {"n": m["decisive"], "correct": m["correct"], "accuracy": m["agreement"],
            "ci95_low": m["agreement_ci_low"], "ci95_high": m["agreement_ci_high"],
            "cluster_ci95_low": m["agreement_cluster_ci_low"], "cluster_ci95_high": m["agreement_cluster_ci_high"],
            "pairs": m["n"], "ties": m["ties"], "questions": m["questions"], "kappa": m["kappa"],
            "longer_share": m["longer_share"]}


def heldout_eval(pairs: Sequence[Mapping], scorer: RewardScorer, *, rubric_params: Mapping | None = None,
                 seed: int = 0, n_resamples: int = 2000, batch_size: int = 8) -> dict:
    """The reward model on held-out human pairs (records of :mod:`sciexplain.human_pairs`, ``margin`` may be
    None = 0). Returns::

        {heldout: {n, correct, accuracy, ci95_low, ci95_high (Wilson), cluster_ci95_low, cluster_ci95_high,
                   pairs, ties, questions, kappa, longer_share},
         baselines: {longer_answer: {...same}, rubric_judge: {...}, random: {...}},
         vs_longer: {reward_model: {model_only_right, longer_only_right, discordant, p, p_holm}, rubric: {...}},
         loss: {heldout, constant, beats_constant, pairs},
         rewards: {chosen_mean, rejected_mean, difference_mean},
         human_prefers_longer}
    """
    pairs = list(pairs)
    sheet, human, questions = make_sheet(pairs, seed)
    qs = [it["question"] for it in sheet]
    sa = scorer.score(qs, [it["answer_a"] for it in sheet], batch_size, progress=True)
    sb = scorer.score(qs, [it["answer_b"] for it in sheet], batch_size, progress=True)
    scores = {it["item_id"]: (a, b) for it, a, b in zip(sheet, sa, sb)}
    panel = Panel([{"name": "rubric", "type": "rubric", "params": dict(rubric_params or {})}], progress=False)
    v = validate(pairs, panel, seed=seed, n_resamples=n_resamples, extra={NAME: choices_from_scores(scores)},
                 sheet_data=(sheet, human, questions))

    margin = {p["pair_id"]: float(p.get("margin") or 0.0) for p in pairs}
    items = sorted(human)
    chosen = [scores[i][0] if human[i] == "A" else scores[i][1] for i in items]
    rejected = [scores[i][1] if human[i] == "A" else scores[i][0] for i in items]
    margins = [margin[i] for i in items]
    loss, const = pair_loss(chosen, rejected, margins), constant_loss(margins)
    mc = v["vs_longer"]
    renamed = {NAME: "model_only_right", "rubric": "rubric_only_right"}
    return {
        "heldout": _as_accuracy(v["judges"][NAME]),
        "baselines": {"longer_answer": _as_accuracy(v["judges"]["longer"]),
                      "rubric_judge": _as_accuracy(v["judges"]["rubric"]),
                      "random": _as_accuracy(v["judges"]["random"])},
        "vs_longer": {name: {renamed[name]: t["judge_only_right"], "longer_only_right": t["longer_only_right"],
                             "discordant": t["discordant"], "p": t["p"], "p_holm": t["p_holm"]}
                      for name, t in mc.items()},
        "loss": {"heldout": round4(loss), "constant": round4(const), "beats_constant": bool(loss < const),
                 "pairs": len(items)},
        "rewards": {"chosen_mean": round4(sum(chosen) / len(chosen)), "rejected_mean": round4(sum(rejected) / len(rejected)),
                    "difference_mean": round4(sum(c - r for c, r in zip(chosen, rejected)) / len(chosen))},
        "human_prefers_longer": v["pairs"]["human_prefers_longer"],
    }


def _acc(hits: Sequence[bool]) -> dict:
    k, n = int(sum(hits)), len(hits)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": round4(k / n) if n else None, "ci95_low": round4(lo), "ci95_high": round4(hi)}


def _pick(sa: float, sb: float) -> str:
    return "A" if sa > sb else "B" if sb > sa else TIE


def majority_agreement(scorer: RewardScorer, pair_data: Mapping[str, Mapping], train_question_ids: set,
                       judge=None, batch_size: int = 8) -> dict:
    """Agreement of the reward model's pick (the higher-scored answer) with the annotators' majority.

    ``pair_data``: ``{pair: read_pair_annotations(...)}``. For each item rated by at least one
    annotator, the majority over the annotation files given (:func:`sciexplain.stats.majority_vote`; the
    reward_model stage passes people's files only, never a judge's); agreement is over decisive items
    (majority not a tie).
    ``heldout`` restricts to items whose question is in no training pair. Baselines on the same
    items: the longer answer, and the rubric judge alone (an Unsure counts as disagreement).
    """
    items = []  # (pair, item_id, question, a, b, majority)
    for pair in sorted(pair_data):
        d = pair_data[pair]
        for item_id, rec in d["sheet"].items():
            verdicts = [(anns[item_id].choice, anns[item_id].strength)
                        for _, anns in sorted(d["annotations"].items()) if item_id in anns]
            if not verdicts:
                continue
            items.append((pair, item_id, rec["question"], rec["answer_a"], rec["answer_b"], majority_vote(verdicts)))
    dec = [it for it in items if it[5] != TIE]
    qs = [it[2] for it in dec]
    sa = scorer.score(qs, [it[3] for it in dec], batch_size) if dec else []
    sb = scorer.score(qs, [it[4] for it in dec], batch_size) if dec else []
    agree = [_pick(x, y) == it[5] for x, y, it in zip(sa, sb, dec)]
    held = [stable_id(it[2]) not in train_question_ids for it in dec]
    longer = [_pick(len(it[3]), len(it[4])) == it[5] for it in dec]
    out = {
        "n_items": len(items), "n_decisive": len(dec),
        "all": _acc(agree),
        "heldout": _acc([a for a, h in zip(agree, held) if h]),
        "baselines": {"longer_answer": _acc(longer)},
        "by_pair": {p: _acc([a for a, it in zip(agree, dec) if it[0] == p]) for p in sorted(pair_data)},
    }
    if judge is not None:
        out["baselines"]["rubric_judge"] = _acc([(judge.judge_pair(it[2], it[3], it[4])[0] or TIE) == it[5]
                                                 for it in dec])
    return out


def evaluate_saved(base_dir, reward_dir, data, rm, enc, *, quantize_4bit, train_result: Mapping) -> dict:
    """The saved reward model checked and measured: its pooling (padding must not move a score; it pools the end of
    turn), held-out accuracy on the human test pairs beside the trivial rules (longer answer, random) and the
    rubric, agreement with people's majority on the annotated comparisons, and its gate
    (:func:`sciexplain.rm_gate.validation_block`). ``data``: :class:`sciexplain.reward_data.RewardData`; ``rm``:
    the typed ``reward_model`` params; ``train_result``: what :func:`sciexplain.reward_train.train_reward_model`
    returned. Returns the metrics of metrics/reward_model.json (without the run facts)."""
    from .records import DataError
    from .rm_gate import validation_block

    scorer = RewardScorer(base_dir, reward_dir, quantize_4bit=quantize_4bit)
    bs, seed, train, dev = rm.score_batch_size, rm.trainer.seed, data.train, data.dev
    probe = train[:8]
    pooling = scorer.check_pooling([x["question"] for x in probe] * 2,
                                   [x["chosen"] for x in probe] + [x["rejected"] for x in probe])
    if pooling["max_abs_diff"] > 1e-3 or not pooling["pools_end_of_turn"]:
        raise RuntimeError(f"reward model's pooling is wrong: {pooling}")
    test_fit = [r for r in data.test if enc.fits(enc.prompt(r["question"]))]
    if not test_fit:
        raise DataError(data.test_path, None, "reward_model.trainer.max_length",
                        f"no held-out pair's question fits max_length {rm.trainer.max_length}")
    rubric = rm.rubric.model_dump(exclude_unset=True) if rm.rubric is not None else {}
    ev = heldout_eval(test_fit, scorer, rubric_params=rubric, seed=seed, n_resamples=rm.bootstrap, batch_size=bs)
    humans_only = {k: {**d, "annotations": {n: a for n, a in d["annotations"].items() if n not in d["judges"]}}
                   for k, d in data.pair_data.items()}
    humans_only = {k: d for k, d in humans_only.items() if d["annotations"]}
    majority = majority_agreement(scorer, humans_only, {x["id"] for x in train + dev}, None, bs)
    h = ev["heldout"]
    validation = validation_block(h["accuracy"], h["cluster_ci95_low"], h["cluster_ci95_high"], n=h["n"],
                                  questions=h["questions"], allow_unvalidated=rm.allow_unvalidated)
    judges = sorted({x["judge"] for x in train + dev if x.get("judge")})
    c = data.counts
    return {
        "validation": validation,
        "used_unvalidated": bool(rm.allow_unvalidated and not validation["cleared"]),
        "learned": bool(ev["loss"]["beats_constant"]),
        "heldout": h,
        "baselines": ev["baselines"],
        "vs_longer": ev["vs_longer"],
        "loss": {**ev["loss"], "dev": train_result["dev"]},
        "human_prefers_longer": ev["human_prefers_longer"],
        "judge_labels": {"used": bool(rm.judge_labels and judges), "allowed": rm.judge_labels, "judges": judges,
                         "train_pairs_by_label": c["by_label"], "rm_split": data.rm_counts},
        "pairs": {
            "train": len(train), "dev": len(dev), "test": len(test_fit), "test_prompt_too_long": len(data.test) - len(test_fit),
            **{k: c[k] for k in ("from_human_pairs", "human_pairs_null_margin", "from_annotations", "from_rm_judge",
                                 "duplicates_removed", "on_test_questions_removed", "prompt_too_long", "capped")},
            "unsure": rm.unsure, "train_questions": len({x["id"] for x in train}),
            "dev_questions": len({x["id"] for x in dev}), "test_questions": h["questions"],
            "stale_annotation_rows": {f: n for d in data.pair_data.values() for f, n in d["stale_rows"].items()},
        },
        "max_length": rm.trainer.max_length,
        "truncated": train_result["truncated_pairs"], "truncated_sequences": train_result["truncated_sequences"],
        "eval_truncated_sequences": scorer.truncated, "dropped": train_result["dropped"],
        "rewards": ev["rewards"],
        "majority_agreement": majority,
        "train": {k: train_result[k] for k in ("train_loss", "runtime_s", "tokens_per_s", "tokens", "steps", "processes",
                                               "trainable_params", "total_params")},
        "pooling_check": pooling,
    }


def summary_lines(m: Mapping) -> list[tuple[str, bool]]:
    """What the stage prints: ``(line, is_warning)``."""
    from .rm_gate import PARAM, message

    h, ev_loss = m["heldout"], m["loss"]
    lg, rb, mc = m["baselines"]["longer_answer"], m["baselines"]["rubric_judge"], m["vs_longer"]["reward_model"]
    out = [(f"reward model: held-out accuracy on human pairs {h['accuracy']} (n={h['n']}, {h['questions']} questions; "
            f"Wilson {h['ci95_low']}-{h['ci95_high']}, cluster {h['cluster_ci95_low']}-{h['cluster_ci95_high']}); "
            f"longer answer {lg['accuracy']}, rubric {rb['accuracy']}; McNemar vs longer p {mc['p']}; "
            f"held-out loss {ev_loss['heldout']} vs constant {ev_loss['constant']}", False)]
    if not ev_loss["beats_constant"]:
        out.append((f"warning: the reward model's held-out loss {ev_loss['heldout']} does not beat the constant "
                    f"predictor's {ev_loss['constant']}: it has not learned the human preferences", True))
    if not m["validation"]["cleared"]:
        out.append((f"warning: {message(m['validation'])}: stages that use it refuse unless {PARAM}: true "
                    f"(now {str(m['validation'].get('allow_unvalidated', False)).lower()})", True))
    return out
