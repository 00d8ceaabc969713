"""Un-blind and summarise one pairwise comparison: the key, judge and human annotation files -> metrics, with a
verdict on the headline number.

Shared by the ``winrate`` stage (the compare sheets) and the ``evaluate`` stage (every model vs base).

Humans and judges are never pooled into one vote:

* ``humans``: :func:`summarize_pair` over the human files only (item winner = the humans'
  majority); agreement among them as raw pairwise agreement, Fleiss' kappa (items everyone rated) and
  Krippendorff's alpha (every item rated by two or more, for annotators who rated different subsets).
* ``judges``: one summary per judge, each on its own, with the judge's human agreement from
  ``metrics/validate.json`` (its question-level cluster bootstrap CI) and its own verdict beside it.
* the **headline** (``win_rate``, ``verdict``) comes from the humans whenever a human file rated anything;
  otherwise from one judge -- the one whose human-agreement interval has the highest lower end in
  ``validate.json`` (ties: the first name), so a judge never changes a human headline.

The verdict (:func:`sciexplain.verdicts.comparison_verdict`) is on the *subject* against the *opponent*:
for ``<x>_vs_<y>`` the subject is ``x``, except that ``base`` is always the opponent (``base_vs_sft`` is a
verdict on sft). It carries ``n``, the decisive votes, the smallest win rate the sign test would detect
at this n (80% power, alpha 0.05) and one of "better" / "worse" / "cannot tell at this n" / "judge not
validated"; human verdicts need no validation. :func:`adjust_family` Holm-adjusts the headline p-values of
the comparisons one stage run makes and turns a "better"/"worse" whose adjusted p is above alpha into
"cannot tell at this n".
"""
from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .annotations import HUMAN, JUDGE, read_annotation_dir, warn_stderr
from .records import DataError
from .stats import (TIE, binom_p, detectable_win_rate, fleiss_kappa, holm, krippendorff_alpha, majority_vote, round_p,
                    round_rate, call_side, wilson_interval)
from .strengths import DECISIVE_STRENGTHS, STRENGTH_MARGIN, STRENGTHS, UNSURE  # noqa: F401
from .verdicts import SUBJECT_BETTER, CANNOT_TELL, NOT_VALIDATED, SUBJECT_WORSE, comparison_verdict

BASELINE = "base"
HUMANS = "humans"


def annotator_summary(ratings: dict, key: dict, models: tuple[str, str], kind: str) -> dict:
    """One annotator on their own: n rated, ties, wins and win rate per model."""
    wins = {m: 0 for m in models}
    ties = 0
    for item, ann in ratings.items():
        side = call_side((ann.choice or None, ann.strength), f"item {item!r}")
        if side == TIE:
            ties += 1
        else:
            wins[key[item]["a_model" if side == "A" else "b_model"]] += 1
    n = len(ratings)
    return {"kind": kind, "n": n, "ties": ties, "wins": wins,
            "win_rate": {m: round(w / n, 4) if n else None for m, w in wins.items()}}


def agreement_with_humans(judge: dict, humans: dict[str, dict], key: dict) -> dict:
    """Share of items where a judge's label equals the humans' majority (items with a decisive majority),
    with its Wilson 95% interval; a judge's Unsure counts as a disagreement."""
    hits = n = 0
    for item, ann in judge.items():
        votes = [(h[item].choice or None, h[item].strength) for h in humans.values() if item in h]
        if not votes:
            continue
        major = majority_vote(votes)
        if major == TIE:
            continue
        n += 1
        hits += call_side((ann.choice or None, ann.strength)) == major  # A/B order is the same for both
    lo, hi = wilson_interval(hits, n)
    return {"agreement": round(hits / n, 4) if n else None, "n": n, "ci95_low": round_rate(lo), "ci95_high": round_rate(hi)}


# --------------------------------------------------------------------------- verdicts

def subject_of(pair: str, models: tuple[str, str]) -> tuple[str, str]:
    """(subject, opponent): the first model of ``<x>_vs_<y>``, except that ``base`` is always the opponent."""
    a, b = models
    return (b, a) if a == BASELINE and b != BASELINE else (a, b)


def judge_validation(name: str, validation: Mapping | None) -> dict | None:
    """The human agreement of judge ``judge-<name>`` (or ``<name>``) in ``metrics/validate.json``, or None.

    ``{agreement, ci_low, ci_high, n, validated}``; the interval is the question-level cluster bootstrap one."""
    judges = (validation or {}).get("judges") or {}
    short = name[len("judge-"):] if name.startswith("judge-") else name
    entry = judges.get(short) or judges.get(name)
    if not isinstance(entry, Mapping):
        return None
    return {"agreement": entry.get("agreement"), "ci_low": entry.get("agreement_cluster_ci_low"),
            "ci_high": entry.get("agreement_cluster_ci_high"), "n": entry.get("n"),
            "validated": bool(entry.get("validated"))}


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def verdict_sentence(v: Mapping) -> str:
    """The verdict in plain words: who decided, the votes, n, p, and the smallest win rate this n detects. Metrics
    files hold the verdict's numbers and codes only; reports and logs say it with this sentence."""
    s, o, src = v["subject"], v["opponent"], source_label(v)
    votes = f"{s} won {v['wins']} of {v['decisive']} decisive votes ({_pct(v['win_rate'])}; {v['ties']} ties, n = {v['n']})"
    det = v.get("detectable_win_rate")
    power = (f"at this n a true win rate of {_pct(det)} or more (or {_pct(1 - det)} or less) is detected with 80% "
             f"power" if det is not None else "at this n no win rate can be detected with 80% power")
    p = v.get("p_holm", v.get("p"))
    holm_m = v.get("holm_family_size") or 0
    p_txt = "no test" if p is None else f"p = {p:.3g}" + (f" (Holm, {holm_m} tests)" if holm_m > 1 else "")
    if v["verdict"] == SUBJECT_BETTER:
        text = f"{s} is better than {o}, by {src}: {votes}, {p_txt}; {power}."
    elif v["verdict"] == SUBJECT_WORSE:
        text = f"{s} is worse than {o}, by {src}: {votes}, {p_txt}; {power}."
    elif v["verdict"] == CANNOT_TELL:
        text = f"cannot tell whether {s} or {o} is better, by {src}: {votes}, {p_txt}; {power}."
    else:
        ha = v.get("human_agreement") or {}
        if ha.get("agreement") is None:
            why = "it has no human-agreement figure in metrics/validate.json"
        else:
            why = (f"its agreement with human preferences is {_pct(ha['agreement'])} (95% CI {_pct(ha.get('ci_low'))}–"
                   f"{_pct(ha.get('ci_high'))}), an interval that does not clear 50%")
        text = (f"{src} is not validated, so its comparison of {s} with {o} is no evidence: {why}. "
                f"It reports {votes}, {p_txt}; {power}.")
    return text[0].upper() + text[1:]


def verdict_for(summary: Mapping, subject: str, opponent: str, source: str, human_agreement: Mapping | None,
                human: bool) -> dict:
    """:func:`comparison_verdict` of one summary (subject's wins vs opponent's wins) + who decided."""
    models, ties = summary["models"], summary["ties"]["count"]
    ci = None if not human_agreement else (human_agreement.get("ci_low"), human_agreement.get("ci_high"))
    v = comparison_verdict(models[subject]["wins"], models[opponent]["wins"], ties, ci, human=human)
    v.update(subject=subject, opponent=opponent, source=source, human=human,
             human_agreement=None if human else human_agreement)
    return v


def source_label(v: Mapping) -> str:
    """Who decided a verdict, in words: ``the human annotators``, ``the judge rubric``."""
    src = v["source"]
    return "the human annotators" if v.get("human") else f"the judge {src[len('judge-'):] if src.startswith('judge-') else src}"


def _headline_judge(judges: Mapping[str, Mapping]) -> str:
    """The judge whose human-agreement interval has the highest lower end (ties and no data: first name)."""
    def low(name):
        ha = judges[name].get("human_agreement") or {}
        x = ha.get("ci_low")
        return x if isinstance(x, (int, float)) and math.isfinite(x) else -1.0
    return sorted(judges, key=lambda n: (-low(n), n))[0]


def summarize(pair: str, sheet: list[dict], key: dict, judges: dict, humans: dict,
              validation: Mapping | None = None) -> dict:
    """The metrics of one pair (see the module docstring). ``validation`` = ``metrics/validate.json``."""
    key_models = sorted({key[i][f] for i in key for f in ("a_model", "b_model")})
    models = tuple(pair.split("_vs_", 1)) if "_vs_" in pair else tuple(key_models)
    if sorted(models) != key_models:
        raise DataError(f"{pair}/key.jsonl", None, "a_model", f"the key names {key_models}, the pair {list(models)}")
    subject, opponent = subject_of(pair, models)
    lengths = {r["item_id"]: {"A": len(r["answer_a"]), "B": len(r["answer_b"])} for r in sheet}
    as_verdicts = lambda group: {name: {i: (a.choice or None, a.strength) for i, a in anns.items()}  # noqa: E731
                                 for name, anns in group.items() if anns}

    human_votes = as_verdicts(humans)
    human_summary = summarize_pair(human_votes, key, lengths) if human_votes else None
    if human_summary is not None:
        human_summary["verdict"] = verdict_for(human_summary, subject, opponent, HUMANS, None, human=True)

    judge_summaries = {}
    for name, votes in as_verdicts(judges).items():
        js = summarize_pair({name: votes}, key, lengths)
        js["human_agreement"] = judge_validation(name, validation)
        js["verdict"] = verdict_for(js, subject, opponent, name, js["human_agreement"], human=False)
        judge_summaries[name] = js

    if human_summary is not None:
        source, head = HUMANS, human_summary
    elif judge_summaries:
        source = _headline_judge(judge_summaries)
        head = judge_summaries[source]
    else:
        source, head = None, None
    return {
        "pair": pair,
        "n_sheet_items": len(sheet),
        "subject": subject,
        "opponent": opponent,
        "human_annotators": sorted(humans),
        "judge_annotators": sorted(judges),
        "headline_source": source,
        "win_rate": {m: head["models"][m]["win_rate"] for m in models} if head else None,
        "verdict": dict(head["verdict"]) if head else None,
        "annotators": {**{n: annotator_summary(a, key, models, "judge") for n, a in judges.items()},
                       **{n: annotator_summary(a, key, models, "human") for n, a in humans.items()}},
        "judge_vs_humans": {n: agreement_with_humans(a, humans, key) for n, a in judges.items()} if human_votes else None,
        "humans": human_summary,
        "judges": judge_summaries,
    }


def headline_summary(metrics: Mapping) -> dict | None:
    """The summarize_pair block the headline comes from (the humans', or the headline judge's)."""
    src = metrics.get("headline_source")
    if src is None:
        return None
    return metrics["humans"] if src == HUMANS else metrics["judges"][src]


def adjust_family(metrics: Mapping[str, dict], family: str, alpha: float = 0.05) -> dict:
    """Holm-adjust the headline verdicts of several comparisons (``{pair: summarize(...)}``) in place.

    Each headline verdict gets ``p_holm``; a "better"/"worse" whose adjusted p is above ``alpha`` becomes
    "cannot tell at this n" (``unadjusted_verdict`` keeps what it was). Verdicts of a judge beside a human
    headline are not part of the family and stay unadjusted. Returns the family's description."""
    raw = {pair: (m.get("verdict") or {}).get("p") for pair, m in metrics.items()}
    adjusted = holm(raw)
    size = sum(p is not None for p in raw.values())
    for pair, m in metrics.items():
        v = m.get("verdict")
        if not v:
            continue
        v["p_holm"] = round_p(adjusted[pair])
        v["holm_family_size"] = size
        v["unadjusted_verdict"] = v["verdict"]
        if v["verdict"] in (SUBJECT_BETTER, SUBJECT_WORSE) and (v["p_holm"] is None or v["p_holm"] > alpha):
            v["verdict"] = CANNOT_TELL
    tested = [p for p, x in raw.items() if x is not None]
    return {"family": family, "method": "holm", "alpha": alpha, "m": len(tested), "members": sorted(tested),
            "adjusted": len(tested) > 1}


def power_at(n: int, alpha: float = 0.05, power: float = 0.8) -> dict:
    """What ``n`` items buy: the smallest true win rate (among decisive votes) detected with ``power``."""
    det = detectable_win_rate(n, alpha, power) if n > 0 else None
    return {"n": int(n), "alpha": alpha, "power": power, "detectable_win_rate": round_rate(det),
            "detectable_difference": round_rate(det - 0.5) if det is not None else None}


class Groups(NamedTuple):
    """The annotation files of one comparison, split by annotator type (never by file name)."""
    judges: dict  # {annotator: {item_id: Annotation}}, current rows only
    humans: dict
    stale_rows: dict  # {file path: rows made on another version of the sheet}, every file read (0 when none)


def read_groups(pair: str, hashes: Mapping[str, str], judgments_dir, annotations_dir, sheet_path=None,
                warn: Callable[[str], None] | None = warn_stderr) -> Groups:
    """The files of ``<judgments>/<pair>/`` and ``<annotations>/<pair>/`` checked against the sheet (``hashes`` =
    :func:`sciexplain.sheets.sheet_hashes`). A file is a judge's when its rows say ``"annotator_type":
    "judge"`` (rows without the field: judge in the judgments folder, human in the annotations folder). Only rows
    whose hash matches the current sheet count; stale rows are counted per file in ``stale_rows`` and warned
    about (``warn``), as is every file a reader skips (see :func:`sciexplain.annotations.read_annotation_dir`)."""
    groups = {JUDGE: {}, HUMAN: {}}
    stale: dict[str, int] = {}
    for default, root in ((JUDGE, judgments_dir), (HUMAN, annotations_dir)):
        folder = Path(root) / pair if root is not None else None
        if folder is None or not folder.is_dir():
            continue
        for name, f in read_annotation_dir(folder, hashes, default, sheet_path, warn).items():
            if name in groups[JUDGE] or name in groups[HUMAN]:
                raise DataError(f.path, None, None, f"annotator {name!r} also has a file in {judgments_dir}/{pair}: "
                                "rename this file")
            groups[f.annotator_type][name] = f.annotations
            stale[str(f.path)] = len(f.stale)
            if f.stale and warn:
                warn(f"{f.path}: {len(f.stale)} of {len(f.stale) + len(f.annotations)} rows were made on another version "
                     f"of the sheet (other answers or A/B order) and are not counted; see README, 'Stale annotations'")
    return Groups(groups[JUDGE], groups[HUMAN], dict(sorted(stale.items())))


__all__ = ["SUBJECT_BETTER", "SUBJECT_WORSE", "CANNOT_TELL", "NOT_VALIDATED", "summarize_pair", "adjust_family", "headline_summary", "power_at",
           "Groups", "read_groups", "summarize", "subject_of", "judge_validation", "verdict_sentence"]


# --------------------------------------------------------------------------- one pair's summary (humans or a judge)

def _models_of(key: Mapping, item_ids: Iterable[str]) -> tuple[str, str]:
    """The two model names the key uses for these items, sorted; DataError for a bad key."""
    names: set[str] = set()
    for item in item_ids:
        entry = key.get(item)
        if entry is None:
            raise DataError(None, f"item {item!r}", None, "rated item is missing from the key")
        for field in ("a_model", "b_model"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise DataError(None, f"key item {item!r}", field, "missing or empty")
        if entry["a_model"] == entry["b_model"]:
            raise DataError(None, f"key item {item!r}", None, f"a_model and b_model are both {entry['a_model']!r}")
        names.update((entry["a_model"], entry["b_model"]))
    if len(names) != 2:
        raise DataError(None, None, "key", f"a pair summary needs exactly 2 models, the key names {sorted(names)}")
    return tuple(sorted(names))  # type: ignore[return-value]


def _to_model(side: str, entry: Mapping) -> str:
    """Map ``"A"``/``"B"``/``"tie"`` to a model name (or ``"tie"``) through one item's key entry."""
    return entry["a_model"] if side == "A" else entry["b_model"] if side == "B" else TIE


def summarize_pair(annotations: Mapping[str, Mapping[str, Sequence]], key: Mapping[str, Mapping],
                   lengths: Mapping[str, Mapping] | None = None) -> dict:
    """Summarise a blind A/B comparison of two models, in model space (A/B order undone).

    Items are every item id rated by at least one annotator; each must be in ``key``, and the
    key must name exactly two models over them. An item's winner is :func:`majority_vote` over
    the annotators who rated it, mapped to a model name through the key.

    Returns (model names sorted; ``None`` wherever a number is undefined)::

        n_items, n_decisive (= n_items - ties), n_annotators, annotators (sorted)
        models: {name: {wins, win_rate = wins / n_items,
                        win_rate_decisive = wins / n_decisive,
                        ci95_low, ci95_high   (Wilson 95% interval of win_rate_decisive),
                        p_value               (two-sided binomial test, wins of n_decisive vs 0.5)}}
        ties: {count, rate = count / n_items}
        strength: {name: {"Significantly better": c, "Better": c, "Slightly better": c}}
        agreement: {pairwise, n_pairs, fleiss_kappa, kappa_items, krippendorff_alpha, alpha_items,
                    alpha_ratings, leave_one_out, leave_one_out_mean}
        length_preference: {annotator: {prefers_longer, n}}   or None without ``lengths``

    Definitions:

    * ``strength[m]``: over the items model ``m`` won, the strengths of the votes that agree
      with the majority (votes for ``m``); votes on ties and votes against the winner are not
      counted. Each bar of the stacked graph is one model; its height is its agreeing votes.
    * An annotator's *label* on an item is the model they preferred, or ``"tie"`` for Unsure.
    * ``pairwise``: over every item and every pair of annotators who both rated it, the share
      of pairs with the same label (``n_pairs`` pairs in all).
    * ``fleiss_kappa``: :func:`fleiss_kappa` over categories (model 1, model 2, tie) on the
      ``kappa_items`` items every annotator rated (None when no item was rated by all).
    * ``krippendorff_alpha``: :func:`krippendorff_alpha` (nominal, same categories) over every item
      rated by at least two annotators (``alpha_items`` items, ``alpha_ratings`` ratings in them):
      the agreement figure for annotators who rated different subsets (an assignment with overlap).
    * ``leave_one_out[a] = {agreement, n}``: for each item ``a`` rated, the majority vote of the
      *other* annotators who rated it; items nobody else rated, and items where the others'
      majority is a tie, are skipped. ``agreement`` is the share of the remaining ``n`` items
      where ``a``'s label equals that majority (an Unsure from ``a`` counts as disagreement).
      ``leave_one_out_mean`` is the unweighted mean over annotators with ``n > 0``.
    * ``length_preference[a] = {prefers_longer, n}``: among ``a``'s decisive votes on items whose
      two answers differ in length, the share that chose the longer answer. ``lengths`` must
      cover every rated item (DataError otherwise).

    With a single annotator all agreement numbers are ``None`` (``leave_one_out`` entries have
    ``n = 0``). Raises :class:`DataError` for bad verdicts, items missing from the key, or no
    rated items.
    """
    annotators = sorted(annotations)
    items = sorted({item for a in annotators for item in annotations[a]})
    if not items:
        raise DataError(None, None, "annotations", "no rated items")
    m1, m2 = _models_of(key, items)
    models = (m1, m2)

    # side[a][item] in {"A", "B", "tie"}; label = the same in model space
    side = {a: {item: call_side(v, f"annotator {a!r}, item {item!r}") for item, v in annotations[a].items()}
            for a in annotators}
    label = {a: {item: _to_model(s, key[item]) for item, s in side[a].items()} for a in annotators}
    raters = {item: [a for a in annotators if item in annotations[a]] for item in items}

    winner = {item: _to_model(majority_vote([annotations[a][item] for a in raters[item]]), key[item])
              for item in items}
    n_items = len(items)
    wins = Counter(winner.values())
    n_ties = wins[TIE]
    n_decisive = n_items - n_ties

    model_stats = {}
    for m in models:
        lo, hi = wilson_interval(wins[m], n_decisive)
        model_stats[m] = {
            "wins": wins[m],
            "win_rate": round_rate(wins[m] / n_items),
            "win_rate_decisive": round_rate(wins[m] / n_decisive) if n_decisive else None,
            "ci95_low": round_rate(lo),
            "ci95_high": round_rate(hi),
            "p_value": round_p(binom_p(wins[m], n_decisive)),
        }

    strength = {m: {s: 0 for s in DECISIVE_STRENGTHS} for m in models}
    for item, w in winner.items():
        if w == TIE:
            continue
        for a in raters[item]:
            if label[a][item] == w:
                strength[w][annotations[a][item][1]] += 1

    # raw pairwise agreement
    agree = pairs = 0
    for item in items:
        for a, b in combinations(raters[item], 2):
            pairs += 1
            agree += label[a][item] == label[b][item]

    # Fleiss' kappa on the items every annotator rated
    kappa, full_items = None, [item for item in items if len(raters[item]) == len(annotators)]
    if len(annotators) >= 2 and full_items:
        cats = (m1, m2, TIE)
        table = [[sum(label[a][item] == c for a in annotators) for c in cats] for item in full_items]
        kappa = round_rate(fleiss_kappa(table))

    # Krippendorff's alpha on every item with >= 2 ratings (annotators may have rated different subsets)
    alpha = krippendorff_alpha(label, details=True)

    # leave-one-out: each annotator against the majority of the others
    loo = {}
    for a in annotators:
        hits = n = 0
        for item in annotations[a]:
            others = [annotations[b][item] for b in raters[item] if b != a]
            if not others:
                continue
            others_major = _to_model(majority_vote(others), key[item])
            if others_major == TIE:
                continue
            n += 1
            hits += label[a][item] == others_major
        loo[a] = {"agreement": round_rate(hits / n) if n else None, "n": n}
    loo_values = [v["agreement"] for v in loo.values() if v["agreement"] is not None]

    length_pref = None
    if lengths is not None:
        length_pref = {}
        for a in annotators:
            longer = n = 0
            for item, s in side[a].items():
                if item not in lengths:
                    raise DataError(None, f"item {item!r}", "lengths", "rated item has no answer lengths")
                try:
                    la, lb = int(lengths[item]["A"]), int(lengths[item]["B"])
                except (KeyError, TypeError, ValueError):
                    raise DataError(None, f"item {item!r}", "lengths", "needs integer 'A' and 'B' lengths") from None
                if s == TIE or la == lb:
                    continue
                n += 1
                longer += s == ("A" if la > lb else "B")
            length_pref[a] = {"prefers_longer": round_rate(longer / n) if n else None, "n": n}

    return {
        "n_items": n_items,
        "n_decisive": n_decisive,
        "n_annotators": len(annotators),
        "annotators": annotators,
        "models": model_stats,
        "ties": {"count": n_ties, "rate": round_rate(n_ties / n_items)},
        "strength": strength,
        "agreement": {
            "pairwise": round_rate(agree / pairs) if pairs else None,
            "n_pairs": pairs,
            "fleiss_kappa": kappa,
            "kappa_items": len(full_items) if kappa is not None else 0,
            "krippendorff_alpha": round_rate(alpha["alpha"]),
            "alpha_items": alpha["n_items"],
            "alpha_ratings": alpha["n_ratings"],
            "leave_one_out": loo,
            "leave_one_out_mean": round_rate(float(np.mean(loo_values))) if loo_values else None,
        },
        "length_preference": length_pref,
    }
