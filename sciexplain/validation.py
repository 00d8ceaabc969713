"""Judges checked against people: every judge of the panel and two baselines on held-out human pairs.

Each test pair becomes one blind sheet item (:func:`sciexplain.sheets.build_sheet`, ``item_id`` = the
pair id): the human-preferred answer is shown as A or B by a seeded draw per item (``validate.seed``), not in
both orders -- LLM judges already ask both orders themselves (:class:`sciexplain.judges.LLMJudge`), and the
rubric scores each answer on its own. Predictors:

* every judge of ``judge.panel`` (:class:`sciexplain.judges.Panel`: the rubric, LLM judges);
* ``longer``: the answer with more words (a tie when equal);
* ``random``: A or B from an RNG seeded by (seed, item id);
* anything else that can pick a side -- e.g. the reward model: :func:`choices_from_scores` turns
  ``{item_id: (score_a, score_b)}`` into choices; pass them to :func:`validate` as ``extra``.

Per predictor (:func:`score_predictor`): ``n`` items, ``decisive`` votes, ``ties``, ``correct`` (decisive
votes for the human-preferred answer), ``agreement`` = correct / decisive with a Wilson interval (pairs as
independent) and a question-level cluster bootstrap interval (pairs of one question resampled together),
``agreement_all`` = correct / n (a tie counts as not agreeing), ``coverage`` = decisive / n, Cohen's kappa
against the human side over all n (categories A, B, tie), and ``longer_share`` = the share of its decisive
votes, on pairs of unequal length, that went to the longer answer. A judge is ``validated`` when its
cluster interval's lower end is above 0.5.

Every judge (and every ``extra`` predictor) is compared with the longer-answer rule on the same items by
an exact McNemar test (right = a decisive vote for the human-preferred answer; a tie is not right), and
the p-values are Holm-adjusted across those judges.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Mapping, Sequence

from .sheets import build_sheet
from .panel import Panel
from .splits import hash_order
from .stats import TIE, round_p, round_rate, call_side, wilson_interval
from .stats import cluster_bootstrap_ci, cohen_kappa, holm, mcnemar_exact

BASELINES = ("longer", "random")


def make_sheet(pairs: Sequence[Mapping], seed: int) -> tuple[list[dict], dict[str, str], dict[str, str]]:
    """(sheet, human side per item, question id per item) for the pairs; ``item_id`` is the pair id."""
    sheet, key = build_sheet(({"item_id": p["pair_id"], "question": p["question"], "answer_1": p["chosen"],
                               "answer_2": p["rejected"], "model_1": "chosen", "model_2": "rejected"} for p in pairs), seed)
    human = {k["item_id"]: "A" if k["a_model"] == "chosen" else "B" for k in key}
    questions = {p["pair_id"]: p["id"] for p in pairs}
    return sheet, human, questions


def _words(text: str) -> int:
    return len(text.split())


def longer_side(item: Mapping) -> str:
    """"A" or "B" (more words), or ``TIE`` when both have the same number of words."""
    a, b = _words(item["answer_a"]), _words(item["answer_b"])
    return TIE if a == b else ("A" if a > b else "B")


def longer_choices(sheet: Sequence[Mapping]) -> dict[str, str]:
    return {it["item_id"]: longer_side(it) for it in sheet}


def random_choices(sheet: Sequence[Mapping], seed: int) -> dict[str, str]:
    return {it["item_id"]: "A" if random.Random(f"validate-random:{seed}:{it['item_id']}").random() < 0.5 else "B"
            for it in sheet}


def choices_from_annotations(annotations: Mapping) -> dict[str, str]:
    """``{item_id: Annotation}`` (a judge's output) -> ``{item_id: "A" | "B" | "tie"}``."""
    return {item: call_side((ann.choice or None, ann.strength), f"item {item!r}") for item, ann in annotations.items()}


def choices_from_scores(scores: Mapping[str, tuple[float, float]], tie_tolerance: float = 0.0) -> dict[str, str]:
    """The hook for score-based predictors (the reward model as a judge): ``{item_id: (score_a, score_b)}``
    -> the higher-scored side, a tie when ``|a - b| <= tie_tolerance``. Score the sheet's ``answer_a`` /
    ``answer_b`` of each item (from :func:`make_sheet`) and pass the result to :func:`validate` as ``extra``."""
    out = {}
    for item, (a, b) in scores.items():
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"item {item!r}: scores must be finite, got {(a, b)!r}")
        out[item] = TIE if abs(a - b) <= tie_tolerance else ("A" if a > b else "B")
    return out


def score_predictor(choices: Mapping[str, str], human: Mapping[str, str], questions: Mapping[str, str],
                    longer: Mapping[str, str], *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """The agreement figures of one predictor (see the module docstring). Items missing from ``choices``
    are an error: every predictor must answer every item."""
    missing = set(human) - set(choices)
    if missing:
        raise ValueError(f"predictor has no choice for {len(missing)} item(s), e.g. {sorted(missing)[0]!r}")
    items = sorted(human)
    decisive = [i for i in items if choices[i] != TIE]
    correct = [i for i in decisive if choices[i] == human[i]]
    hits, totals = defaultdict(int), defaultdict(int)
    for i in decisive:
        totals[questions[i]] += 1
        hits[questions[i]] += choices[i] == human[i]
    n, d, k = len(items), len(decisive), len(correct)
    lo, hi = wilson_interval(k, d)
    clo, chi = cluster_bootstrap_ci(hits, totals, n_resamples, seed)
    uneven = [i for i in decisive if longer[i] != TIE]
    return {
        "n": n, "questions": len({questions[i] for i in items}), "decisive": d, "ties": n - d, "correct": k,
        "agreement": round_rate(k / d) if d else None, "agreement_ci_low": round_rate(lo), "agreement_ci_high": round_rate(hi),
        "agreement_cluster_ci_low": round_rate(clo), "agreement_cluster_ci_high": round_rate(chi),
        "agreement_all": round_rate(k / n) if n else None, "coverage": round_rate(d / n) if n else None,
        "kappa": round_rate(cohen_kappa([choices[i] for i in items], [human[i] for i in items])),
        "longer_share": round_rate(sum(choices[i] == longer[i] for i in uneven) / len(uneven)) if uneven else None,
        "validated": clo is not None and clo > 0.5,
    }


def cap_pairs(pairs: Sequence[Mapping], max_pairs: int | None, seed: int) -> list[Mapping]:
    """At most ``max_pairs`` pairs (None/0: all), chosen by a seeded hash of the pair id; input order kept."""
    if not max_pairs or len(pairs) <= max_pairs:
        return list(pairs)
    keep = {p["pair_id"] for p in hash_order(pairs, seed, key=lambda p: p["pair_id"], salt="validate-cap")[: int(max_pairs)]}
    return [p for p in pairs if p["pair_id"] in keep]


def validate(pairs: Sequence[Mapping], panel: Panel | None, *, seed: int = 0, n_resamples: int = 2000,
             extra: Mapping[str, Mapping[str, str]] | None = None, sheet_data=None) -> dict:
    """Score every panel judge, the baselines and ``extra`` predictors on ``pairs``; the metrics dict.

    ``sheet_data`` = :func:`make_sheet`'s result when the caller already built it (to score ``extra``)."""
    if not pairs:
        raise ValueError("no human test pairs to validate on")
    sheet, human, questions = sheet_data or make_sheet(pairs, seed)
    longer = longer_choices(sheet)
    predictors: dict[str, dict[str, str]] = {}
    panel_stats: dict = {}
    if panel is not None and panel.names:
        result = panel.judge(sheet, label="human pairs")
        for name, anns in result.items():
            predictors[name] = choices_from_annotations(anns)
            panel_stats[name] = {k: v for k, v in result.stats.get(name, {}).items() if k not in ("hits", "misses")}
    for name in extra or {}:
        if name in predictors or name in BASELINES:
            raise ValueError(f"predictor name {name!r} is taken")
        predictors[name] = dict(extra[name])
    judged = list(predictors)
    predictors["longer"] = longer
    predictors["random"] = random_choices(sheet, seed)

    scores = {name: score_predictor(ch, human, questions, longer, n_resamples=n_resamples, seed=seed)
              for name, ch in predictors.items()}
    for name, st in panel_stats.items():
        scores[name]["panel"] = st
    items = sorted(human)
    longer_right = [longer[i] == human[i] for i in items]
    tests = {}
    for name in judged:
        t = mcnemar_exact([predictors[name][i] == human[i] for i in items], longer_right)
        tests[name] = {"judge_only_right": t["only_1"], "longer_only_right": t["only_2"],
                       "discordant": t["discordant"], "p": round_p(t["p"])}
    adjusted = holm({name: t["p"] for name, t in tests.items()})
    for name in tests:
        tests[name]["p_holm"] = round_p(adjusted[name])
    uneven = [i for i in items if longer[i] != TIE]
    return {
        "pairs": {"n": len(items), "questions": len(set(questions.values())),
                  "human_prefers_longer": round_rate(sum(human[i] == longer[i] for i in uneven) / len(uneven)) if uneven else None,
                  "equal_length": len(items) - len(uneven)},
        "judges": scores,
        "vs_longer": tests,
        # how it was measured, as codes (the module docstring and docs/statistics.md say it in words): one seeded
        # A/B order per pair (LLM judges ask both orders themselves); agreement over decisive votes, ties apart;
        # Wilson and question-level cluster-bootstrap 95% intervals; validated when the cluster CI's low end > 0.5;
        # exact McNemar against the longer-answer rule, Holm-adjusted across judges
        "method": {"order": "seeded_ab", "agreement": "decisive_votes", "ci": "wilson+cluster_bootstrap_95",
                   "validated": "cluster_ci_low>0.5", "vs_longer": "mcnemar_exact+holm",
                   "bootstrap_resamples": int(n_resamples)},
    }
