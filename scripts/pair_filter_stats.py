"""How confounded are Stack Exchange vote pairs by trivial rules, under different pair filters?

Run:  .venv/bin/python scripts/pair_filter_stats.py [DATA_DIR] > pair_filter_stats.md
      (DATA_DIR: a folder of <site>/Posts.xml dumps; default ../shared/data beside the project)

An analysis for issue 22 (which filters make human vote pairs less confounded), not a pipeline stage. Reads each
<DATA_DIR>/*/Posts.xml (read-only), builds every within-question answer pair with different
scores (the project's parser: sciexplain.sources.iter_post_rows + sciexplain.markup.html_to_text, same drops:
unsafe HTML, empty text, identical texts, duplicated post ids), then applies filter settings and reports how
often trivial rules agree with the vote (chosen = higher score).
"""
from __future__ import annotations

import math
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sciexplain.markup import UnsafeHTML, html_to_text  # noqa: E402
from sciexplain.sources import iter_post_rows  # noqa: E402

DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"


# ----------------------------------------------------------------------------- loading
def load_answers(path: Path):
    """{question_id: [answer dict]} and the set of accepted answer ids, with the project's drop rules."""
    rows: dict[int, list] = {}
    for row, pid, kind in iter_post_rows(path):
        if kind in (1, 2):
            rows.setdefault(pid, []).append((dict(row), kind))
    dup = {p for p, c in rows.items() if len(c) > 1}
    questions = {p: c[0][0] for p, c in rows.items() if p not in dup and c[0][1] == 1}
    accepted = {int(q["AcceptedAnswerId"]) for q in questions.values() if q.get("AcceptedAnswerId")}
    answers: dict[int, list[dict]] = {}
    for pid, copies in sorted(rows.items()):
        if pid in dup or copies[0][1] != 2:
            continue
        a = copies[0][0]
        parent = int(a["ParentId"])
        if parent not in questions or not (questions[parent].get("Title") or "").strip():
            continue
        try:
            text = html_to_text(a.get("Body") or "")
        except UnsafeHTML:
            continue
        if not text:
            continue
        d = a.get("CreationDate")
        try:
            date = datetime.fromisoformat(d) if d else None
        except ValueError:
            date = None
        answers.setdefault(parent, []).append({
            "id": pid, "score": int(a["Score"]), "text": text, "chars": len(text), "words": len(text.split()),
            "date": date, "accepted": pid in accepted})
    return answers


def all_pairs(answers, site):
    """Every pair of answers of one question with different scores and different texts: (hi, lo) dicts."""
    out = []
    for qid, cands in sorted(answers.items()):
        for i, a in enumerate(cands):
            for b in cands[i + 1:]:
                if a["score"] == b["score"] or a["text"] == b["text"]:
                    continue
                hi, lo = (a, b) if a["score"] > b["score"] else (b, a)
                later = None if hi["date"] is None or lo["date"] is None else hi["date"] > lo["date"]
                out.append({"site": site, "qid": qid, "hi": hi, "lo": lo, "gap": hi["score"] - lo["score"],
                            "later": later})
    return out


# ----------------------------------------------------------------------------- filters
def select(pairs, *, min_gap=2, max_per_q=3, winner_later=False, min_ratio=None, min_loser=None,
           min_both=None, no_accepted=False, max_len_ratio=None, balance_time=False,
           order="project"):
    """Filter pairs, then cap per question.

    min_gap       hi.score - lo.score >= min_gap
    winner_later  hi.CreationDate > lo.CreationDate (strictly; pairs with a missing date dropped)
    min_ratio     hi.score >= min_ratio * lo.score (and lo.score >= min_loser when given; with lo.score <= 0
                  min_loser must be given, else a negative loser makes any winner pass)
    min_loser     lo.score >= min_loser
    min_both      hi.score >= min_both and lo.score >= min_both
    no_accepted   neither answer is the question's accepted answer
    balance_time  per site, keep every winner-posted-later pair and as many winner-posted-earlier pairs
                  (or the reverse, whichever is fewer), the kept ones chosen by sha256 of the post ids
                  (deterministic pseudo-random); undated pairs dropped. Applied before the cap.
    max_len_ratio longer/shorter text length in characters < max_len_ratio (length-matched pairs)
    max_per_q     at most this many pairs per question (None = no cap), taken in the project's order
                  (order='project': winner-posted-later first, then unknown dates, then the rest; within each
                  the larger gap first, then post ids -- exactly sciexplain.human_pairs) or order='gap'
                  (larger gap first, then post ids; no timing preference)
    """
    kept = []
    for p in pairs:
        hi, lo = p["hi"], p["lo"]
        if p["gap"] < min_gap:
            continue
        if winner_later and p["later"] is not True:
            continue
        if min_loser is not None and lo["score"] < min_loser:
            continue
        if min_ratio is not None and hi["score"] < min_ratio * lo["score"]:
            continue
        if min_both is not None and (lo["score"] < min_both or hi["score"] < min_both):
            continue
        if no_accepted and (hi["accepted"] or lo["accepted"]):
            continue
        if max_len_ratio is not None and max(hi["chars"], lo["chars"]) >= max_len_ratio * min(hi["chars"], lo["chars"]):
            continue
        kept.append(p)
    if balance_time:
        import hashlib
        bal = []
        for site in sorted({p["site"] for p in kept}):
            h = lambda p: hashlib.sha256(f"{p['hi']['id']}-{p['lo']['id']}".encode()).hexdigest()
            lat = sorted((p for p in kept if p["site"] == site and p["later"] is True), key=h)
            ear = sorted((p for p in kept if p["site"] == site and p["later"] is False), key=h)
            k = min(len(lat), len(ear))
            bal += lat[:k] + ear[:k]
        kept = bal
    if max_per_q is None:
        return kept
    by_q: dict[tuple, list] = {}
    for p in kept:
        by_q.setdefault((p["site"], p["qid"]), []).append(p)
    out = []
    for key in sorted(by_q):
        ps = by_q[key]
        if order == "project":
            ps.sort(key=lambda p: (0 if p["later"] else 1 if p["later"] is None else 2, -p["gap"], p["hi"]["id"],
                                   p["lo"]["id"]))
        else:
            ps.sort(key=lambda p: (-p["gap"], p["hi"]["id"], p["lo"]["id"]))
        out.extend(ps[:max_per_q])
    return out


SETTINGS = [
    ("all", "every pair with different scores (gap>=1), no cap", dict(min_gap=1, max_per_q=None)),
    ("baseline", "project today: gap>=2, <=3/question (later-winner pairs first)", dict()),
    ("base-nocap", "gap>=2, no cap", dict(max_per_q=None)),
    ("base-cap1", "gap>=2, <=1/question", dict(max_per_q=1)),
    ("base-cap5", "gap>=2, <=5/question", dict(max_per_q=5)),
    ("base-gaporder", "gap>=2, <=3/question, cap order by gap only", dict(order="gap")),
    ("later", "winner posted later, gap>=2, <=3/q", dict(winner_later=True)),
    ("later-gap1", "winner posted later, gap>=1, no cap", dict(winner_later=True, min_gap=1, max_per_q=None)),
    ("later-cap1", "winner posted later, gap>=2, <=1/q", dict(winner_later=True, max_per_q=1)),
    ("ratio2-l1", "hi>=2*lo, lo>=1 (gap>=1), <=3/q", dict(min_gap=1, min_ratio=2, min_loser=1)),
    ("ratio2-l0", "hi>=2*lo, lo>=0, gap>=2, <=3/q", dict(min_ratio=2, min_loser=0)),
    ("both>=1", "both scores>=1, gap>=2, <=3/q", dict(min_both=1)),
    ("noacc", "no accepted answer in pair, gap>=2, <=3/q", dict(no_accepted=True)),
    ("later+noacc", "winner later + no accepted, gap>=2, <=3/q", dict(winner_later=True, no_accepted=True)),
    ("later+noacc-g1", "winner later + no accepted, gap>=1, no cap",
     dict(winner_later=True, no_accepted=True, min_gap=1, max_per_q=None)),
    ("later+ratio2-l1", "winner later + hi>=2*lo, lo>=1, <=3/q",
     dict(winner_later=True, min_gap=1, min_ratio=2, min_loser=1)),
    ("later+both>=1", "winner later + both>=1, gap>=2, <=3/q", dict(winner_later=True, min_both=1)),
    ("lenmatch", "length ratio < 1.5 (chars), gap>=2, <=3/q", dict(max_len_ratio=1.5)),
    ("lenmatch-g1", "length ratio < 1.5, gap>=1, no cap", dict(max_len_ratio=1.5, min_gap=1, max_per_q=None)),
    ("lenmatch+noacc", "length ratio < 1.5 + no accepted, gap>=2, <=3/q", dict(max_len_ratio=1.5, no_accepted=True)),
    ("lenmatch+noacc-g1", "length ratio < 1.5 + no accepted, gap>=1, no cap",
     dict(max_len_ratio=1.5, no_accepted=True, min_gap=1, max_per_q=None)),
    ("lenmatch2+noacc", "length ratio < 2 + no accepted, gap>=2, <=3/q", dict(max_len_ratio=2, no_accepted=True)),
    ("lenmatch+later", "length ratio < 1.5 + winner later, gap>=1, no cap",
     dict(max_len_ratio=1.5, winner_later=True, min_gap=1, max_per_q=None)),
    ("timebal-g1", "time-balanced (as many winner-earlier as winner-later pairs), gap>=1, no cap",
     dict(balance_time=True, min_gap=1, max_per_q=None)),
    ("lenmatch+timebal-g1", "length ratio < 1.5 + time-balanced, gap>=1, no cap",
     dict(max_len_ratio=1.5, balance_time=True, min_gap=1, max_per_q=None)),
    ("lenmatch+noacc+timebal-g1", "length ratio < 1.5 + no accepted + time-balanced, gap>=1, no cap",
     dict(max_len_ratio=1.5, no_accepted=True, balance_time=True, min_gap=1, max_per_q=None)),
    ("lenmatch+noacc+timebal-g2", "length ratio < 1.5 + no accepted + time-balanced, gap>=2, no cap",
     dict(max_len_ratio=1.5, no_accepted=True, balance_time=True, max_per_q=None)),
    ("lenmatch+noacc+timebal-g1-cap3", "as above, gap>=1, then <=3/q in gap order (cap after balancing)",
     dict(max_len_ratio=1.5, no_accepted=True, balance_time=True, min_gap=1, order="gap")),
]


# ----------------------------------------------------------------------------- rules
def rule_counts(pairs, key, prefer):
    """(agree, disagree, tie) of the rule 'prefer the answer with the larger/smaller key'."""
    ag = dis = tie = 0
    for p in pairs:
        a, b = p["hi"][key], p["lo"][key]
        if a is None or b is None or a == b:
            tie += 1
        elif (a > b) == (prefer == "max"):
            ag += 1
        else:
            dis += 1
    return ag, dis, tie


def fmt(ag, dis, tie):
    n = ag + dis
    if n == 0:
        return "–"
    r = ag / n
    half = 1.96 * math.sqrt(r * (1 - r) / n) if 0 < r < 1 else 0.0
    s = f"{r:.2f}±{half:.2f}"
    return s + (f" (t{tie})" if tie else "")


def accepted_counts(pairs):
    ag = dis = 0
    for p in pairs:
        if p["hi"]["accepted"]:
            ag += 1
        elif p["lo"]["accepted"]:
            dis += 1
    return ag, dis


def table(pairs_by_site, title):
    lines = [f"### {title}", "",
             "| setting | pairs | questions | longer (chars) | longer (words) | earlier posted | acc. pairs | accepted wins |",
             "|---|---:|---:|---|---|---|---:|---|"]
    for name, _desc, kw in SETTINGS:
        sel = select(pairs_by_site, **kw)
        nq = len({(p["site"], p["qid"]) for p in sel})
        ag, dis = accepted_counts(sel)
        acc = fmt(ag, dis, 0) if ag + dis else "–"
        lines.append(f"| {name} | {len(sel)} | {nq} | {fmt(*rule_counts(sel, 'chars', 'max'))} | "
                     f"{fmt(*rule_counts(sel, 'words', 'max'))} | {fmt(*rule_counts(sel, 'date', 'min'))} | "
                     f"{ag + dis} | {acc} |")
    return lines


def length_detail(pairs, title):
    """Length effect inside 'winner posted later' pairs, by how different the lengths are."""
    lines = [f"#### {title}: length inside winner-posted-later pairs (gap>=1, no cap)", "",
             "| subset | pairs | winner longer (chars) |", "|---|---:|---|"]
    base = select(pairs, winner_later=True, min_gap=1, max_per_q=None)
    subsets = [
        ("all later-winner pairs", base),
        ("  excluding accepted", [p for p in base if not (p["hi"]["accepted"] or p["lo"]["accepted"])]),
        ("  length ratio < 1.5", [p for p in base if max(p["hi"]["chars"], p["lo"]["chars"]) < 1.5 * min(p["hi"]["chars"], p["lo"]["chars"])]),
        ("  length ratio >= 1.5", [p for p in base if max(p["hi"]["chars"], p["lo"]["chars"]) >= 1.5 * min(p["hi"]["chars"], p["lo"]["chars"])]),
        ("  length ratio >= 3", [p for p in base if max(p["hi"]["chars"], p["lo"]["chars"]) >= 3 * min(p["hi"]["chars"], p["lo"]["chars"])]),
        ("  gap >= 3", [p for p in base if p["gap"] >= 3]),
        ("  loser score <= 0", [p for p in base if p["lo"]["score"] <= 0]),
        ("  loser score >= 1", [p for p in base if p["lo"]["score"] >= 1]),
        ("(contrast) winner posted EARLIER, gap>=1", [p for p in select(pairs, min_gap=1, max_per_q=None) if p["later"] is False]),
    ]
    for name, ps in subsets:
        lines.append(f"| {name} | {len(ps)} | {fmt(*rule_counts(ps, 'chars', 'max'))} |")
    return lines


def main():
    files = sorted(DATA.glob("*/Posts.xml"))
    per_site = {}
    for f in files:
        site = f.parent.name.replace("stackexchange-", "")
        per_site[site] = all_pairs(load_answers(f), site)
    out = ["# Trivial-rule agreement with votes under pair filters (Stack Exchange dumps)", "",
           "Generated by `scripts/pair_filter_stats.py` (read-only on the dumps).",
           "",
           "Cells: fraction of pairs where the rule picks the higher-voted answer, ±95% normal half-width, over pairs",
           "where the rule decides; `(tN)` = N pairs where the rule ties (equal length / same timestamp), excluded from",
           "the fraction. `acc. pairs` = pairs with the accepted answer on either side; `accepted wins` = share of those",
           "where the accepted answer is the higher-voted one. 0.50 = the rule carries no signal.", "",
           "Text = `sciexplain.markup.html_to_text(Body)` (HTML stripped); words = whitespace split. Pairs: same question,",
           "different scores, different texts; unsafe-HTML / empty answers and duplicated post ids dropped as in",
           "`sciexplain.human_pairs.stackexchange_pairs`.", "", "## Filter settings", "",
           "| setting | definition |", "|---|---|"]
    for name, desc, kw in SETTINGS:
        out.append(f"| {name} | {desc} — `select({', '.join(f'{k}={v!r}' for k, v in kw.items())})` |")
    out += ["", "Common definitions: gap = hi.Score − lo.Score; 'winner posted later' = hi.CreationDate > lo.CreationDate",
            "(strict); ratio = hi.Score >= 2·lo.Score; cap 'N/q' keeps the first N pairs of a question in the project's",
            "order (later-winner pairs first, then larger gap, then post ids) unless stated.", ""]
    out += ["## Results", ""]
    for site, pairs in per_site.items():
        out += table(pairs, site) + [""]
    pooled = [p for ps in per_site.values() for p in ps]
    out += table(pooled, "pooled (" + " + ".join(per_site) + ")") + [""]
    out += ["## Does length still predict once timing is removed?", "",
            "Note: 'longer-rule agreement restricted to pairs where the shorter answer won' is 0 by construction;",
            "below instead: inside winner-posted-later pairs, how often the winner is longer, split by how different",
            "the lengths are, with the winner-posted-earlier pairs as contrast.", ""]
    for site, pairs in list(per_site.items()) + [("pooled", pooled)]:
        out += length_detail(pairs, site) + [""]
    # sanity check against the project's own parser (baseline setting)
    try:
        from sciexplain.human_pairs import stackexchange_pairs
        from sciexplain.records import Drops
        out += ["## Cross-check with sciexplain.human_pairs.stackexchange_pairs (defaults)", ""]
        for f in files:
            site = f.parent.name.replace("stackexchange-", "")
            proj = stackexchange_pairs(f, Drops())
            mine = select(per_site[site])
            same = {(p["chosen_post_id"], p["rejected_post_id"]) for p in proj} == \
                   {(p["hi"]["id"], p["lo"]["id"]) for p in mine}
            out.append(f"- {site}: project {len(proj)} pairs, this script {len(mine)}; identical pair sets: {same}")
        out.append("")
    except Exception as e:  # pragma: no cover
        out += [f"(cross-check skipped: {type(e).__name__}: {e})", ""]
    out += ["## Licence / attribution (from each SOURCE.md)", "",
            "- ai (Dec 2016 dump, via bigdata-vandy/stack-ex test fixture): CC BY-SA 3.0; attribution = post link",
            "  https://ai.stackexchange.com/q/<Id> and the OwnerUserId authors; the repo's MIT licence covers its code only.",
            "- quantumcomputing (Sept 2018, via Jean-Low/StackERedes): CC BY-SA 3.0 for posts before 2018-05-02, CC BY-SA",
            "  4.0 after (no per-post ContentLicense attribute); attribution = https://quantumcomputing.stackexchange.com/q/<Id>",
            "  + OwnerUserId authors (display names in Users.xml); 'anything derived from it and shipped must keep",
            "  attribution and the same licence'.",
            "- matheducators (Mar-May 2014, via jrfoster/spark-intro): CC BY-SA 3.0; attribution =",
            "  https://matheducators.stackexchange.com/q/<Id>; authors only as user id / profile URL",
            "  https://matheducators.stackexchange.com/users/<id> (no Users.xml, no display names).",
            "- So a shipped pair file must sit beside a notice: CC BY-SA (3.0; 4.0 for qc posts from 2018-05-02), the",
            "  site, per-pair question/answer URLs and author profile links (human_pairs already writes url, chosen_url,",
            "  rejected_url, chosen_author, rejected_author), a statement that texts were modified (HTML stripped), and",
            "  the derived file itself under CC BY-SA (share-alike).", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
