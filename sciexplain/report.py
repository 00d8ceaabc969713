"""The study's report: one context dict in, a Markdown file (and optionally an HTML file) out.

The report is first built as a list of small blocks (heading, paragraph, table, code, quote, image,
side-by-side answers, each a dict with a ``kind``); two Jinja2 templates next to this module,
``templates/report.md.j2`` and ``templates/report.html.j2`` (the page's markup and CSS), turn the same
blocks into Markdown and into HTML, so the HTML needs no Markdown library and both files always say the
same thing.

Nothing taken from the context reaches either file unescaped: the HTML template is autoescaped (every
string through :func:`html.escape`); the Markdown one is not, and escapes explicitly with its filters --
table cells and quoted questions are backslash/entity-escaped, and model answers sit in fenced code blocks
whose fence is longer than any backtick run in the answer, so an answer holding ``<script>``, Markdown
links or a closing fence stays literal text.

Context schema (every top-level key is optional; a missing or empty section is omitted)::

    {
      "opening": evaluation.opening(...) = {  # the first section, before any table
          "warnings": [str],                #   each a line at the very top of the report (before the title)
          "verdicts": [{"comparison", "verdict", "sentence", "source", "n", "detectable_win_rate", "beside": [str]}],
          "multiple_testing": {"family", "m", "adjusted", ...},
          "power": {"n", "detectable_win_rate", "alpha", "power"},
          "dropped": {model: {"n", "reasons"}}},
      "judges_beside": {"sft vs base": comparisons.summarize(...) output, ...},   # each judge beside the headline
      "title": str,                         # default "Scientific explanations: study report"
      "baseline": str,                      # the reference model, default "base"
      "best_model": str,                    # the model shown next to the baseline in "Example answers";
                                            #   default: highest mean reward in reward_stats (not the baseline)
      "params":  {...},                     # selected params.yaml entries, dumped as YAML verbatim
      "sources": {model: str | {...}},      # where each model came from (hub id, revision, adapter path, sha...)
      "reward_stats": {model: {             # stats.reward_summary(...) plus the paired test vs the baseline
          "n", "mean", "median", "std", "min", "max", "ci95_low", "ci95_high",
          "wilcoxon": stats.paired_wilcoxon(model, baseline) | None   # {statistic, p_value, n, n_nonzero}
      }},
      "winrates": {"sft vs base": comparisons.summarize_pair(...) output (+ "verdict"), ...},   # the headline summaries
      "reward_model": {                     # held-out preference accuracy of the reward model
          "accuracy": float, "n": int,      # optional "ci95_low"/"ci95_high"
          "baselines": {name: float | {"accuracy": float, "n": int}},   # e.g. "longer answer", "random"
          ...other scalar metrics, listed as they are
      },
      "examples": [{"question": str, "id": str (optional), "answers": {model: text}}],
      "plots": {name: path relative to the report's folder, e.g. "../plots/ridge.png"},
    }
"""
from __future__ import annotations

import html
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote, urlsplit

from jinja2 import (
    Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, pass_eval_context, select_autoescape,
)
from markupsafe import Markup

from .comparisons import source_label
from .records import write_text

DEFAULT_TITLE = "Scientific explanations: study report"
STRENGTH_COLUMNS = ("Significantly better", "Better", "Slightly better")

# --------------------------------------------------------------------------- formatting

DASH = "—"


def _num(x: Any, digits: int = 4) -> str:
    if x is None or isinstance(x, bool):
        return DASH if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return DASH if not math.isfinite(x) else f"{x:.{digits}f}"


def _finite(x: Any) -> float | None:
    """``x`` as a finite float; None for anything else (not a number, NaN, infinite)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _pct(x: Any) -> str:
    x = _finite(x)
    return DASH if x is None else f"{100 * x:.1f}%"


def _p(x: Any) -> str:
    """A p-value: 4 significant digits, scientific below 1e-4 (never rounds to 0)."""
    x = _finite(x)
    if x is None:
        return DASH
    return f"{x:.3e}" if 0 < x < 1e-4 else f"{x:.4g}"


def _interval(lo: Any, hi: Any, fmt=_num) -> str:
    if lo is None or hi is None:
        return DASH
    return f"[{fmt(lo)}, {fmt(hi)}]"


# --------------------------------------------------------------------------- blocks

def _h(level: int, text: str):
    return {"kind": "h", "level": level, "text": text}


def _para(text: str):
    return {"kind": "p", "text": text}


def _table(headers: list[str], rows: list[list[str]]):
    return {"kind": "table", "headers": headers, "rows": rows}


def _code(text: str, lang: str = ""):
    return {"kind": "code", "lang": lang, "text": text}


def _image(alt: str, src: str):
    return {"kind": "img", "alt": alt, "src": src}


def _list(items: list[str]):
    return {"kind": "ul", "items": list(items)}


def _strong(text: str):
    return {"kind": "strong", "text": text}


def _answers(question: str, qid: str | None, answers: list[tuple[str, str]]):
    return {"kind": "answers", "question": question, "qid": qid, "answers": answers}


def _model_order(reward_stats: Mapping, baseline: str) -> list[str]:
    names = list(reward_stats)
    return ([baseline] if baseline in reward_stats else []) + [m for m in names if m != baseline]


def _wilcoxon_p(entry: Mapping) -> str:
    w = entry.get("wilcoxon")
    if isinstance(w, Mapping):
        return _p(w.get("p_value"))
    return _p(w) if w is not None else DASH


def _reward_section(ctx: Mapping, baseline: str) -> list:
    stats = ctx.get("reward_stats") or {}
    if not stats:
        return []
    rows = []
    for m in _model_order(stats, baseline):
        s = stats[m] or {}
        w = s.get("wilcoxon") if isinstance(s.get("wilcoxon"), Mapping) else {}
        rows.append([m, _num(s.get("n")), _num(s.get("mean")), _num(s.get("median")), _num(s.get("std")),
                     _num(s.get("min")), _num(s.get("max")), _interval(s.get("ci95_low"), s.get("ci95_high")),
                     DASH if m == baseline else _wilcoxon_p(s), DASH if m == baseline else _p(w.get("p_holm")),
                     _num(s.get("dropped_by_filter", 0))])
    return [_h(2, "Reward statistics"),
            _para(f"Reward-model scores per model on the evaluation questions; answers the model's own filter "
                  f"dropped are not scored (counted under 'dropped'). 95% CI: BCa bootstrap of the mean; p: two-sided "
                  f"Wilcoxon signed-rank test against {baseline} on the questions both answered, Holm-adjusted "
                  f"across the models compared with {baseline} (one family)."),
            _table(["model", "n", "mean", "median", "std", "min", "max", "95% CI (mean)",
                    f"Wilcoxon p vs {baseline}", "Holm p", "dropped"], rows)]


def _pair_order(name: str, summary: Mapping) -> list[str]:
    models = list(summary.get("models") or {})
    parts = [p.strip() for p in re.split(r"\s+vs\.?\s+", name)]
    if len(parts) == 2 and parts[0] != parts[1] and set(parts) == set(models):
        return parts
    return sorted(models)


def _winrate_section(ctx: Mapping) -> list:
    pairs = ctx.get("winrates") or {}
    if not pairs:
        return []
    rows, strength_rows = [], []
    for name, s in pairs.items():
        models = s.get("models") or {}
        ties = s.get("ties") or {}
        v = s.get("verdict") or {}
        who = (source_label(v) if v.get("source") else None) or ", ".join(map(str, s.get("annotators") or []))
        for m in _pair_order(name, s):
            ms = models.get(m) or {}
            rows.append([name, str(who), m, _num(s.get("n_items")), _num(ms.get("wins")), _pct(ms.get("win_rate")),
                         _num(ties.get("count")), _pct(ms.get("win_rate_decisive")),
                         _interval(ms.get("ci95_low"), ms.get("ci95_high"), _pct), _p(ms.get("p_value"))])
            st = (s.get("strength") or {}).get(m) or {}
            strength_rows.append([name, m] + [_num(st.get(c, 0)) for c in STRENGTH_COLUMNS])
    return [_h(2, "Win rates"),
            _para("Blind A/B comparison. The headline comes from the human annotators wherever human files exist "
                  "(item winner = their majority vote; Unsure = tie), otherwise from one judge, named; humans and "
                  "judges are never pooled into one vote (each judge is listed on its own below). Decisive win "
                  "rate = wins / (items - ties), with its Wilson 95% interval and the two-sided exact binomial "
                  "p-value against 0.5 (unadjusted; the verdicts above use the Holm-adjusted one)."),
            _table(["comparison", "decided by", "model", "items", "wins", "win rate", "ties", "decisive win rate",
                    "Wilson 95% CI", "binomial p"], rows),
            _h(3, "Preference strength"),
            _para("Votes that agree with the item's winner, by strength."),
            _table(["comparison", "model", *STRENGTH_COLUMNS], strength_rows)]


def _agreement_section(ctx: Mapping) -> list:
    every = {k: v for k, v in (ctx.get("winrates") or {}).items() if v.get("agreement")}
    pairs = {k: v for k, v in every.items() if (v.get("n_annotators") or 0) >= 2}
    lp_rows = [[name, str(ann), _num(v.get("prefers_longer")), _num(v.get("n"))]
               for name, s in every.items() for ann, v in (s.get("length_preference") or {}).items()]
    lp = [_para("Share of an annotator's decisive votes that chose the longer answer."),
          _table(["comparison", "annotator", "prefers longer", "votes"], lp_rows)] if lp_rows else []
    if not pairs:
        return [_h(2, "Length preference")] + lp if lp else []
    rows, loo_rows = [], []
    for name, s in pairs.items():
        a = s["agreement"]
        rows.append([name, _num(s.get("n_annotators")), _num(a.get("pairwise")), _num(a.get("n_pairs")),
                     _num(a.get("fleiss_kappa")), _num(a.get("kappa_items")), _num(a.get("krippendorff_alpha")),
                     _num(a.get("alpha_items")), _num(a.get("leave_one_out_mean"))])
        for ann, v in (a.get("leave_one_out") or {}).items():
            v = v or {}
            loo_rows.append([name, str(ann), _num(v.get("agreement")), _num(v.get("n"))])
    out = [_h(2, "Annotator agreement"),
           _para("Among the annotators behind each headline. Raw pairwise agreement over all annotator pairs per "
                 "item; Fleiss' kappa over (model 1, model 2, tie) on the items every annotator rated; "
                 "Krippendorff's alpha (nominal, same categories) on every item two or more annotators rated -- "
                 "the figure for annotators who rated different subsets; leave-one-out: each annotator against "
                 "the majority of the others (items where the others tie are skipped)."),
           _table(["comparison", "annotators", "pairwise", "pairs", "Fleiss' kappa", "kappa items",
                   "Krippendorff's alpha", "alpha items", "leave-one-out mean"], rows)]
    if loo_rows:
        out += [_h(3, "Leave-one-out agreement per annotator"),
                _table(["comparison", "annotator", "agreement", "items"], loo_rows)]
    if lp:
        out += [_h(3, "Length preference")] + lp
    return out


def _opening_warnings(ctx: Mapping) -> list:
    return [_strong(str(w)) for w in ((ctx.get("opening") or {}).get("warnings") or []) if w]


def _fmt_share(x: Any) -> str:
    try:
        return f"{100 * float(x):.0f}%"
    except (TypeError, ValueError):
        return DASH


def _opening_section(ctx: Mapping) -> list:
    """What the evidence supports, in plain words, before any table."""
    op = ctx.get("opening") or {}
    verdicts = op.get("verdicts") or []
    if not (verdicts or op.get("power")):
        return []
    out = [_h(2, "Verdicts")]
    if verdicts:
        items = []
        for v in verdicts:
            line = f"{v.get('comparison')}: {v.get('verdict')}. {v.get('sentence')}"
            if v.get("beside"):
                line += " Each judge on its own: " + "; ".join(map(str, v["beside"])) + "."
            items.append(line)
        out += [_para("Final evaluation (eval questions):"), _list(items)]
    notes = []
    power = op.get("power") or {}
    if power.get("n") is not None:
        det = power.get("detectable_win_rate")
        notes.append(f"Power: the eval split has {power['n']} questions; with every vote decisive, a comparison "
                     f"detects (80% power, two-sided exact sign test, alpha {power.get('alpha', 0.05)}) only a true "
                     f"win rate of {_fmt_share(det)} or more (or {_fmt_share(1 - det)} or less); smaller "
                     "differences read 'cannot tell at this n'." if det is not None else
                     f"Power: the eval split has {power['n']} questions, too few for any win rate to be detected "
                     "with 80% power.")
    fam = op.get("multiple_testing") or {}
    if fam:
        members = ", ".join(str(m).replace("_vs_", " vs ") for m in fam.get("members") or [])
        if fam.get("adjusted"):
            notes.append(f"Multiple tests: the {fam.get('m')} headline sign tests ({members}) are one family, "
                         "Holm-adjusted; a 'better' or 'worse' needs its adjusted p <= 0.05. Not adjusted: each "
                         "judge's own verdict beside a headline, and the Wilson intervals and binomial p-values "
                         "in the tables. The Wilcoxon reward tests vs the baseline are a second family, "
                         "Holm-adjusted among themselves.")
        else:
            notes.append("Multiple tests: a single headline test, nothing to adjust; the Wilcoxon reward tests vs "
                         "the baseline are Holm-adjusted among themselves.")
    dropped = op.get("dropped") or {}
    if dropped:
        parts = [f"{m}: {d.get('n')} ({', '.join(f'{k} {v}' for k, v in (d.get('reasons') or {}).items())})"
                 for m, d in dropped.items()]
        notes.append("Answers dropped by their own stage's filter are not scored and not compared: "
                     + "; ".join(parts) + ".")
    if op.get("not_validated"):
        notes.append("'judge not validated' means the deciding judge's agreement with human preferences "
                     "(metrics/validate.json, question-level bootstrap 95% CI) does not clear 50%: its win rates "
                     "are shown below but carry no evidence.")
    return out + [_para(n) for n in notes]


def _judges_beside_section(ctx: Mapping) -> list:
    pairs = ctx.get("judges_beside") or {}
    rows = []
    for name, m in pairs.items():
        subject = m.get("subject")
        groups = ([("humans", m.get("humans"))] if m.get("humans") else []) + list((m.get("judges") or {}).items())
        for who, s in groups:
            if not s:
                continue
            v = s.get("verdict") or {}
            ha = s.get("human_agreement") or {}
            agreement = ("human" if who == "humans" else
                         f"{_fmt_share(ha.get('agreement'))} {_interval(ha.get('ci_low'), ha.get('ci_high'), _pct)}"
                         if ha else "no validation data")
            rows.append([name, str(who) + (" (headline)" if who == m.get("headline_source") else ""),
                         _num(v.get("n")), _num(v.get("decisive")), f"{subject}: {_pct(v.get('win_rate'))}",
                         _pct(v.get("detectable_win_rate")), agreement, str(v.get("verdict", DASH))])
    if not rows:
        return []
    return [_h(2, "Humans and each judge, side by side"),
            _para("Every source of votes on its own (never pooled): n items, decisive votes, the subject's decisive "
                  "win rate, the smallest win rate detectable at that n (80% power, alpha 0.05), the judge's "
                  "agreement with human preferences (metrics/validate.json, question-level bootstrap 95% CI) and "
                  "its verdict (unadjusted)."),
            _table(["comparison", "votes from", "n", "decisive", "win rate", "detectable", "human agreement",
                    "verdict"], rows)]


def _reward_model_section(ctx: Mapping) -> list:
    rm = ctx.get("reward_model") or {}
    if not rm:
        return []
    rows = [["reward model", _num(rm.get("accuracy")), _num(rm.get("n")),
             _interval(rm.get("ci95_low"), rm.get("ci95_high"))]]
    for name, b in (rm.get("baselines") or {}).items():
        if isinstance(b, Mapping):
            rows.append([f"baseline: {name}", _num(b.get("accuracy")), _num(b.get("n")),
                         _interval(b.get("ci95_low"), b.get("ci95_high"))])
        else:
            rows.append([f"baseline: {name}", _num(b), DASH, DASH])
    out = [_h(2, "Reward model"),
           _para("Accuracy at predicting the preferred answer of held-out preference pairs."),
           _table(["predictor", "accuracy", "pairs", "95% CI"], rows)]
    known = {"accuracy", "n", "ci95_low", "ci95_high", "baselines"}
    extra = [[str(k), _num(v)] for k, v in rm.items()
             if k not in known and (v is None or isinstance(v, (int, float, str)))]
    if extra:
        out += [_table(["metric", "value"], extra)]
    return out


def _safe_src(src: str) -> str | None:
    """A relative (or http/https) image URL, percent-quoted; None for anything else (``javascript:``...)."""
    src = str(src)
    parts = urlsplit(src)
    if parts.scheme not in ("", "http", "https") or src.strip().lower().startswith(("javascript", "data")):
        return None
    return quote(src, safe="/:._-~%#?=&")


def _plots_section(ctx: Mapping) -> list:
    plots = ctx.get("plots") or {}
    if not plots:
        return []
    out = [_h(2, "Plots")]
    for name, src in plots.items():
        out += [_h(3, str(name)), _image(str(name), str(src))]
    return out


def _best_model(ctx: Mapping, baseline: str) -> str | None:
    if ctx.get("best_model"):
        return str(ctx["best_model"])
    stats = {m: s.get("mean") for m, s in (ctx.get("reward_stats") or {}).items() if m != baseline and s}
    stats = {m: v for m, v in stats.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return max(stats, key=lambda m: (stats[m], m)) if stats else None


def _examples_section(ctx: Mapping, baseline: str) -> list:
    examples = ctx.get("examples") or []
    if not examples:
        return []
    best = _best_model(ctx, baseline)
    out = [_h(2, "Example answers")]
    for ex in examples:
        answers = ex.get("answers") or {}
        if best is not None and baseline in answers and best in answers:
            shown = [(baseline, answers[baseline]), (best, answers[best])]
        else:
            shown = list(answers.items())
        out.append(_answers(str(ex.get("question", "")), ex.get("id"), [(str(m), str(t)) for m, t in shown]))
    return out


def _sources_section(ctx: Mapping) -> list:
    out = []
    sources = ctx.get("sources") or {}
    if sources:
        fields: list[str] = []
        for v in sources.values():
            for k in (v if isinstance(v, Mapping) else {"source": v}):
                if k not in fields:
                    fields.append(str(k))
        rows = [[m] + [str((v if isinstance(v, Mapping) else {"source": v}).get(f, DASH)) for f in fields]
                for m, v in sources.items()]
        out += [_h(2, "Model sources"), _table(["model", *fields], rows)]
    if ctx.get("params"):
        import yaml

        out += [_h(2, "Parameters"),
                _code(yaml.safe_dump(ctx["params"], sort_keys=False, allow_unicode=True, default_flow_style=False),
                      "yaml")]
    return out


def build_blocks(context: Mapping) -> list:
    """The report as a list of blocks, in order; a missing or empty section is left out."""
    baseline = str(context.get("baseline") or "base")
    blocks = _opening_warnings(context) + [_h(1, str(context.get("title") or DEFAULT_TITLE))]
    for section in (_opening_section(context), _reward_section(context, baseline), _winrate_section(context),
                    _judges_beside_section(context), _agreement_section(context),
                    _reward_model_section(context), _plots_section(context), _examples_section(context, baseline),
                    _sources_section(context)):
        blocks += section
    return blocks


# --------------------------------------------------------------------------- Markdown

# Inline punctuation that can start emphasis, code, links, tables or strikethrough. ``< > &`` become
# entities; line-start markers (``#``, ``-``, ``1.`` ...) are handled by :func:`_md_line`.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_MD_LINE_START = re.compile(r"^(\s*)([#+=-]|\d+[.)])")


def md_escape(text: str) -> str:
    """Inline Markdown text that renders literally: HTML entities for ``& < >``, backslashes before
    Markdown punctuation, newlines collapsed to spaces (safe inside a table cell)."""
    text = html.escape(str(text), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def _md_line(text: str) -> str:
    """:func:`md_escape` for text that starts a line: a leading block marker is escaped too."""
    return _MD_LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], md_escape(text),
                              count=1)


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_quote(text: str) -> str:
    lines = str(text).splitlines() or [""]
    return "\n".join("> " + _md_line(line) if line.strip() else ">" for line in lines)


def _md_code(text: str, lang: str = "") -> str:
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    fence = _fence(text)
    return f"{fence}{lang}\n{text.rstrip(chr(10))}\n{fence}"


# --------------------------------------------------------------------------- templates

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@pass_eval_context
def _finalize(eval_ctx, value: Any) -> Any:
    """Under autoescape (the HTML template) every expression is escaped by :func:`html.escape` (``&quot;``,
    ``&#x27;``) rather than markupsafe's numeric entities, so the page's bytes match the escaping this
    module always used; already-safe markup (a macro's output) passes through. Markdown: unchanged."""
    if not eval_ctx.autoescape or isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


@lru_cache(maxsize=1)
def _environment() -> Environment:
    """One environment for both templates: ``*.html.j2`` autoescaped, ``*.md.j2`` not (every Markdown string
    goes through an explicit filter instead: ``md``, ``md_line``, ``md_quote``, ``md_code``)."""
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
                      finalize=_finalize, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(md=md_escape, md_line=_md_line, md_quote=_md_quote, md_code=_md_code, safe_src=_safe_src)
    return env


def _render(template: str, **context: Any) -> str:
    try:
        return _environment().get_template(template).render(**context)
    except TemplateNotFound:
        raise FileNotFoundError(f"report template {TEMPLATES_DIR / template} is missing "
                                "(the sciexplain checkout is incomplete)") from None


def to_markdown(blocks: Iterable) -> str:
    return _render("report.md.j2", blocks=list(blocks))


def to_html(blocks: Iterable, title: str = DEFAULT_TITLE) -> str:
    return _render("report.html.j2", blocks=list(blocks), title=title)


# --------------------------------------------------------------------------- entry point

def render_report(context: Mapping, out_md, out_html=None) -> str:
    """Write the Markdown report to ``out_md`` (and the HTML one to ``out_html`` when given), atomically.

    See the module docstring for the ``context`` schema. Returns the Markdown text.
    """
    blocks = build_blocks(context)
    md = to_markdown(blocks)
    write_text(Path(out_md), md)
    if out_html is not None:
        write_text(Path(out_html), to_html(blocks, str(context.get("title") or DEFAULT_TITLE)))
    return md
