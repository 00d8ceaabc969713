"""Tests for sciexplain.plots (PNGs + DVC plot data) and sciexplain.report (Markdown/HTML report)."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sciexplain import plots, report
from sciexplain.comparisons import summarize_pair
from sciexplain.stats import STRENGTHS, paired_wilcoxon, reward_summary

ROOT = Path(__file__).resolve().parents[1]
SIG, BET, SLI, UNS = STRENGTHS
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RNG = np.random.default_rng(0)
REWARDS = {
    "base": RNG.normal(0.0, 1.0, 100).round(4).tolist(),
    "sft": RNG.normal(0.6, 0.7, 100).round(4).tolist(),
}


def _summary(n_items=10, wins1=6, wins2=3, s1=(3, 2, 1), s2=(0, 3, 0), m1="sft", m2="base"):
    """A hand-made summarize_pair-shaped dict (only the fields the plots read, plus the report's)."""
    ties = n_items - wins1 - wins2
    return {
        "n_items": n_items, "n_decisive": n_items - ties, "n_annotators": 1, "annotators": ["a"],
        "models": {m1: {"wins": wins1, "win_rate": wins1 / n_items}, m2: {"wins": wins2, "win_rate": wins2 / n_items}},
        "ties": {"count": ties, "rate": ties / n_items},
        "strength": {m1: dict(zip((SIG, BET, SLI), s1)), m2: dict(zip((SIG, BET, SLI), s2))},
    }


def _real_summary():
    """summarize_pair over 3 annotators and 6 items (sft is A on odd items, B on even ones)."""
    key = {f"i{i}": ({"a_model": "sft", "b_model": "base"} if i % 2 else {"a_model": "base", "b_model": "sft"})
           for i in range(6)}
    sft = {f"i{i}": ("A" if i % 2 else "B") for i in range(6)}
    base = {f"i{i}": ("B" if i % 2 else "A") for i in range(6)}
    ann = {
        "ann1": {"i0": (sft["i0"], SIG), "i1": (sft["i1"], BET), "i2": (sft["i2"], SLI),
                 "i3": (base["i3"], BET), "i4": (None, UNS), "i5": (sft["i5"], SIG)},
        "ann2": {"i0": (sft["i0"], BET), "i1": (sft["i1"], BET), "i2": (base["i2"], SLI),
                 "i3": (base["i3"], SIG), "i4": (None, UNS), "i5": (sft["i5"], SLI)},
        "ann3": {"i0": (sft["i0"], SIG), "i1": (base["i1"], SLI), "i2": (sft["i2"], BET),
                 "i3": (base["i3"], BET), "i4": (base["i4"], SLI), "i5": (None, UNS)},
    }
    return summarize_pair(ann, key)


def _check_png(path: Path, width: int, height: int, min_bytes: int = 5000) -> np.ndarray:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes, f"{path.name} is suspiciously small ({len(data)} bytes)"
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (height, width)
    assert img[..., :3].std() > 0.01, "image is blank"
    return img


# --------------------------------------------------------------------------- figures

def test_ridge_plot_png_and_deterministic(tmp_path):
    a, b = plots.ridge_plot(REWARDS, tmp_path / "a.png"), plots.ridge_plot(REWARDS, tmp_path / "sub" / "b.png")
    _check_png(a, 700, int(round((1.2 + 0.75 * 2) * plots.DPI)))
    assert a.read_bytes() == b.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    # different data, different picture
    shifted = {m: [v + 1.0 for v in vs] for m, vs in REWARDS.items()}
    shifted["sft"] = [v * 0.5 for v in shifted["sft"]]
    assert plots.ridge_plot(shifted, tmp_path / "c.png").read_bytes() != a.read_bytes()


def test_ridge_plot_bytes_same_in_a_fresh_process(tmp_path):
    here = plots.ridge_plot(REWARDS, tmp_path / "here.png")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from sciexplain import plots; "
            "plots.ridge_plot(json.loads(sys.argv[2]), sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(ROOT), json.dumps(REWARDS), str(tmp_path / "there.png")],
                   check=True, cwd=tmp_path)
    assert (tmp_path / "there.png").read_bytes() == here.read_bytes()


def test_ridge_plot_degenerate_inputs(tmp_path):
    rewards = {"one": [0.3], "flat": [1.0] * 5, "none": [], "ok": REWARDS["base"]}
    _check_png(plots.ridge_plot(rewards, tmp_path / "r.png"), 700, int(round((1.2 + 0.75 * 4) * plots.DPI)))
    # a dict per question works as well as a list
    plots.ridge_plot({"m": {"q1": 0.1, "q2": 0.5, "q3": 0.2}}, tmp_path / "m.png")
    with pytest.raises(ValueError, match="'bad'"):
        plots.ridge_plot({"bad": [0.1, float("nan")]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    # nothing at all: a "no data" figure, not a crash
    assert plots.ridge_plot({}, tmp_path / "empty.png").read_bytes()[:8] == PNG_SIGNATURE


def test_winrate_segments_split_wins_by_strength():
    rows = plots.winrate_segments("sft vs base", _summary())
    assert [(r["outcome"], r["strength"]) for r in rows] == [
        ("sft", SIG), ("sft", BET), ("sft", SLI), ("tie", UNS), ("base", SLI), ("base", BET), ("base", SIG)]
    # sft won 6/10 with agreeing votes 3:2:1 -> 0.3, 0.2, 0.1; tie 1/10; base won 3/10, all "Better"
    assert [r["fraction"] for r in rows] == pytest.approx([0.3, 0.2, 0.1, 0.1, 0.0, 0.3, 0.0])
    assert [r["side"] for r in rows] == ["first"] * 3 + ["tie"] + ["second"] * 3
    # the name decides which model is on the left
    flipped = plots.winrate_segments("base vs sft", _summary())
    assert [r["outcome"] for r in flipped] == ["base"] * 3 + ["tie"] + ["sft"] * 3
    assert [r["fraction"] for r in flipped] == pytest.approx([0.0, 0.3, 0.0, 0.1, 0.1, 0.2, 0.3])


def test_winrate_segments_on_real_summary():
    s = _real_summary()
    rows = plots.winrate_segments("sft vs base", s)
    assert sum(r["fraction"] for r in rows) == pytest.approx(1.0, abs=1e-5)
    for model in ("sft", "base"):
        assert sum(r["fraction"] for r in rows if r["outcome"] == model) == pytest.approx(
            s["models"][model]["wins"] / s["n_items"], abs=1e-5)
    assert sum(r["fraction"] for r in rows if r["outcome"] == "tie") == pytest.approx(s["ties"]["rate"], abs=1e-4)


def test_winrate_bars_png_and_deterministic(tmp_path):
    summaries = {"sft vs base": _real_summary(), "rs vs sft": _summary(m1="rs", m2="sft")}
    a = plots.winrate_bars(summaries, tmp_path / "a.png")
    b = plots.winrate_bars(summaries, tmp_path / "b.png")
    _check_png(a, 800, int(round((1.9 + 0.95 * 2) * plots.DPI)))
    assert a.read_bytes() == b.read_bytes()
    one = plots.winrate_bars({"sft vs base": _real_summary()}, tmp_path / "one.png")
    assert one.read_bytes() != a.read_bytes()


def test_winrate_inconsistent_summary_rejected():
    with pytest.raises(ValueError, match="no strength votes"):
        plots.winrate_segments("sft vs base", _summary(s1=(0, 0, 0)))


def test_best_of_n_curve(tmp_path):
    curve = [{"n": n, "mean_reward": float(np.log2(n)) / 4} for n in (16, 1, 4, 2, 8)]
    a = plots.best_of_n_curve(curve, tmp_path / "a.png")
    _check_png(a, 600, 400)
    assert plots.best_of_n_curve(list(reversed(curve)), tmp_path / "b.png").read_bytes() == a.read_bytes()
    with pytest.raises(ValueError, match="point 1"):
        plots.best_of_n_curve([{"n": 1, "mean_reward": 0.1}, {"n": "x", "mean_reward": 0.2}], tmp_path / "c.png")


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")


def test_training_curves_reads_dvclive_logs(tmp_path):
    live = tmp_path / "dvclive" / "sft" / "plots" / "metrics"
    _write_tsv(live / "train" / "loss.tsv", ["timestamp", "step", "loss"],
               [[1700000000000 + i, i, 2.0 / (i + 1)] for i in range(10)])
    _write_tsv(live / "eval" / "loss.tsv", ["step", "loss"], [[0, 2.5], [5, "nan"], [9, 0.4]])
    _write_tsv(live / "train" / "learning_rate.tsv", ["step", "learning_rate"], [[0, 1e-4], [1, 1e-4]])
    got = plots.training_curves({"sft": tmp_path / "dvclive" / "sft", "rm": tmp_path / "missing"},
                                tmp_path / "train.png")
    assert set(got) == {"sft", "rm"} and got["rm"] == {}
    assert set(got["sft"]) == {"train/loss", "eval/loss"}  # learning rate filtered out by pattern="loss"
    assert got["sft"]["train/loss"][3] == (3.0, pytest.approx(0.5))
    assert got["sft"]["eval/loss"] == [(0.0, 2.5), (9.0, 0.4)]  # the NaN row is skipped
    _check_png(tmp_path / "train.png", 800, 360)
    assert set(plots.read_dvclive_metrics(tmp_path / "dvclive" / "sft")) == {
        "train/loss", "eval/loss", "train/learning_rate"}
    assert plots.read_dvclive_metrics(tmp_path / "nowhere") == {}


def test_training_curves_with_real_dvclive(tmp_path):
    dvclive = pytest.importorskip("dvclive")
    with dvclive.Live(str(tmp_path / "live"), save_dvc_exp=False, report=None, dvcyaml=False) as live:
        for step in range(3):
            live.log_metric("train/loss", 1.0 - 0.25 * step)
            live.next_step()
    got = plots.training_curves({"dpo": tmp_path / "live"}, tmp_path / "t.png")
    assert got == {"dpo": {"train/loss": [(0.0, 1.0), (1.0, 0.75), (2.0, 0.5)]}}


# --------------------------------------------------------------------------- DVC plot data

def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_write_plot_data(tmp_path):
    out = plots.write_plot_data(
        tmp_path / "plots" / "data",
        rewards={"base": {"q1": 0.1, "q2": -0.5}, "sft": [0.7, 0.25]},
        winrates={"sft vs base": _summary()},
        best_of_n=[{"n": 4, "mean_reward": 0.5}, {"n": 1, "mean_reward": 0.125}],
    )
    assert set(out) == {"rewards", "winrates", "best_of_n"}
    assert _read_csv(out["rewards"]) == [
        {"model": "base", "question_id": "q1", "reward": "0.1"},
        {"model": "base", "question_id": "q2", "reward": "-0.5"},
        {"model": "sft", "question_id": "0", "reward": "0.7"},
        {"model": "sft", "question_id": "1", "reward": "0.25"},
    ]
    win = _read_csv(out["winrates"])
    assert list(win[0]) == ["comparison", "outcome", "strength", "fraction", "side", "segment", "rank", "n_items",
                            "win_rate", "win_rate_decisive", "ci95_low", "ci95_high", "p_value"]
    assert [(r["outcome"], r["strength"], float(r["fraction"])) for r in win] == [
        ("sft", SIG, 0.3), ("sft", BET, 0.2), ("sft", SLI, 0.1), ("tie", UNS, 0.1),
        ("base", SLI, 0.0), ("base", BET, 0.3), ("base", SIG, 0.0)]
    assert {r["comparison"] for r in win} == {"sft vs base"}
    assert _read_csv(out["best_of_n"]) == [{"n": "1", "mean_reward": "0.125"}, {"n": "4", "mean_reward": "0.5"}]


def test_figures_are_drawn_from_the_plot_data_files(tmp_path):
    """The report's PNGs come from the CSVs dvc plots renders: the same bytes as drawn from the data in memory."""
    summaries = {"sft vs base": _real_summary(), "rs vs sft": _summary(m1="rs", m2="sft")}
    curve = [{"n": 1, "mean_reward": 0.1}, {"n": 4, "mean_reward": 0.35}]
    plots.write_plot_data(tmp_path / "data", rewards=REWARDS, winrates=summaries, best_of_n=curve)
    got = plots.figures_from_data(tmp_path / "data", tmp_path / "png", models=["base", "sft", "dpo"])
    assert got["ridge"].read_bytes() == plots.ridge_plot({**REWARDS, "dpo": []}, tmp_path / "r.png").read_bytes()
    assert got["winrates"].read_bytes() == plots.winrate_bars(summaries, tmp_path / "w.png").read_bytes()
    assert got["best_of_n"].read_bytes() == plots.best_of_n_curve(curve, tmp_path / "b.png").read_bytes()
    (tmp_path / "data" / "best_of_n.csv").write_text("n,mean_reward\n2,x\n")
    with pytest.raises(ValueError, match=r"best_of_n.csv.*line 2.*mean_reward"):
        plots.figures_from_data(tmp_path / "data", tmp_path / "png")


def test_write_plot_data_skips_missing_sections(tmp_path):
    out = plots.write_plot_data(tmp_path, best_of_n=[{"n": 2, "mean_reward": 1.0}])
    assert set(out) == {"best_of_n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_of_n.csv"]
    with pytest.raises(ValueError, match="'sft'"):
        plots.write_plot_data(tmp_path, rewards={"sft": [0.1, float("inf")]})
    assert not (tmp_path / "rewards.csv").exists()


@pytest.mark.parametrize("template,csv_name,x,y", [
    ("plots_templates/winrate_stacked.json", "winrates.csv", "fraction", "comparison"),
    ("plots_templates/rewards_box.json", "rewards.csv", "reward", "model"),
])
def test_custom_dvc_templates_fill(tmp_path, template, csv_name, x, y):
    from dvc_render.vega import VegaRenderer

    out = plots.write_plot_data(tmp_path, rewards=REWARDS, winrates={"sft vs base": _real_summary()})
    rows = [dict(r, rev="workspace") for r in _read_csv(tmp_path / csv_name)]
    assert rows and any(p.name == csv_name for p in out.values())
    spec = VegaRenderer(rows, csv_name, template=str(ROOT / template), x=x, y=y,
                        title="t").get_filled_template()
    text = json.dumps(spec)
    assert "<DVC_METRIC" not in text
    assert spec["encoding"]["x"]["field"] == x and spec["encoding"]["y"]["field"] == y
    assert len(spec["data"]["values"]) == len(rows)
    for field in re.findall(r'"field": "([^"]+)"', text):
        assert field in rows[0], f"template uses a field the CSV lacks: {field}"


# --------------------------------------------------------------------------- report

BASE = [0.1, 0.2, 0.3, 0.5]
SFT = [0.4, 0.6, 0.7, 0.9]
EVIL = '<script>alert("x")</script>\n```\n[click](javascript:alert(1)) <img src=x onerror=alert(2)>'


def _context(**drop):
    ctx = {
        "title": "Study",
        "params": {"sft": {"lora": {"r": 8, "alpha": 16}}, "base_model": {"source": "embedded"}},
        "sources": {"base": {"source": "embedded", "revision": "main"}, "sft": "models/sft"},
        "reward_stats": {
            "base": dict(reward_summary(BASE), wilcoxon=None),
            "sft": dict(reward_summary(SFT), wilcoxon=paired_wilcoxon(SFT, BASE)),
            "dpo": dict(reward_summary([0.0, 0.1, 0.2, 0.1]), wilcoxon=paired_wilcoxon([0.0, 0.1, 0.2, 0.1], BASE)),
        },
        "winrates": {"sft vs base": _real_summary()},
        "reward_model": {"accuracy": 0.7083, "n": 48, "baselines": {"longer answer": 0.5625,
                                                                    "random": {"accuracy": 0.5, "n": 48}}},
        "examples": [{"id": "q1", "question": "Why is the sky <b>blue</b>? | # no",
                      "answers": {"base": EVIL, "sft": "Rayleigh scattering.", "dpo": "DPO-ANSWER"}}],
        "plots": {"ridge": "../plots/ridge.png", "bad": "javascript:alert(1)"},
    }
    for k in drop:
        ctx.pop(k)
    return ctx


def _md_row(md: str, first_cells: list[str]) -> list[str]:
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if cells[:len(first_cells)] == first_cells:
                return cells
    raise AssertionError(f"no table row starting with {first_cells}")


def test_report_tables_have_the_numbers(tmp_path):
    md = report.render_report(_context(), tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == md
    # sft: mean 0.65, median 0.65, std 0.2082, min 0.4, max 0.9; 4 positive paired differences -> exact p = 0.125
    sft = reward_summary(SFT)
    row = _md_row(md, ["sft"])
    assert row[:7] == ["sft", "4", "0.6500", "0.6500", "0.2082", "0.4000", "0.9000"]
    assert row[7] == rf"\[{sft['ci95_low']:.4f}, {sft['ci95_high']:.4f}\]"
    assert row[8] == "0.125"
    assert _md_row(md, ["base"])[8:10] == ["—", "—"]  # no test of the baseline against itself
    assert row[9] == "—" and row[10] == "0"  # no Holm p in this context; nothing dropped

    s = _real_summary()
    ms = s["models"]["sft"]
    who = ", ".join(s["annotators"])  # no verdict in this summary: the annotators are named
    row = _md_row(md, ["sft vs base", who, "sft", str(s["n_items"])])[1:]
    assert row[3] == str(ms["wins"]) and row[4] == f"{100 * ms['win_rate']:.1f}%"
    assert row[5] == str(s["ties"]["count"]) and row[6] == f"{100 * ms['win_rate_decisive']:.1f}%"
    assert row[7] == rf"\[{100 * ms['ci95_low']:.1f}%, {100 * ms['ci95_high']:.1f}%\]"
    assert row[8] == f"{ms['p_value']:.4g}"
    strength = _md_row(md, ["sft vs base", "sft", str(s["strength"]["sft"][SIG])])
    assert strength[2:] == [str(s["strength"]["sft"][k]) for k in (SIG, BET, SLI)]

    a = s["agreement"]
    row = _md_row(md, ["sft vs base", "3"])
    assert row[2:] == [f"{a['pairwise']:.4f}", str(a["n_pairs"]), f"{a['fleiss_kappa']:.4f}", str(a["kappa_items"]),
                       f"{a['krippendorff_alpha']:.4f}", str(a["alpha_items"]), f"{a['leave_one_out_mean']:.4f}"]
    for ann, v in a["leave_one_out"].items():
        assert _md_row(md, ["sft vs base", ann]) == ["sft vs base", ann, f"{v['agreement']:.4f}", str(v["n"])]

    assert _md_row(md, ["reward model"])[:3] == ["reward model", "0.7083", "48"]
    assert _md_row(md, ["baseline: longer answer"])[:2] == ["baseline: longer answer", "0.5625"]
    assert _md_row(md, ["baseline: random"])[:3] == ["baseline: random", "0.5000", "48"]


def test_report_plots_params_sources(tmp_path):
    md = report.render_report(_context(), tmp_path / "r.md", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "![ridge](../plots/ridge.png)" in md
    assert '<img src="../plots/ridge.png" alt="ridge">' in page
    assert "javascript:alert(1)" not in re.sub(r"```.*?```", "", md.split("## Example answers")[0], flags=re.S) \
        .replace("(image not shown: javascript:alert(1))", "")
    assert 'src="javascript' not in page and "](javascript:alert(1))" not in md.split("## Example answers")[0]
    block = re.search(r"## Parameters\n\n```yaml\n(.*?)```", md, re.S)
    assert block and yaml.safe_load(block.group(1)) == _context()["params"]
    assert _md_row(md, ["base", "embedded"]) == ["base", "embedded", "main"]
    assert _md_row(md, ["sft", "models/sft"]) == ["sft", "models/sft", "—"]


def test_report_examples_base_and_best_only(tmp_path):
    md = report.render_report(_context(), tmp_path / "r.md", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    ex = md.split("## Example answers")[1].split("## Model sources")[0]
    assert "**base**" in ex and "**sft**" in ex  # sft has the best mean reward
    assert "DPO-ANSWER" not in ex and "DPO-ANSWER" not in page
    assert "Rayleigh scattering." in page
    picked = report.render_report(dict(_context(), best_model="dpo"), tmp_path / "p.md")
    assert "DPO-ANSWER" in picked and "Rayleigh scattering." not in picked


def test_report_html_escapes_answers_and_questions(tmp_path):
    report.render_report(_context(), tmp_path / "r.md", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>blue</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "Why is the sky &lt;b&gt;blue&lt;/b&gt;? | # no" in page
    assert page.count("<script") == 0 and page.count("<img ") == 1  # only the plot


def test_report_markdown_cannot_inject(tmp_path):
    md = report.render_report(_context(), tmp_path / "r.md")
    # the answer with a ``` line inside sits in a longer fence, verbatim
    assert "````text\n" + EVIL + "\n````" in md
    assert r"> Why is the sky &lt;b&gt;blue&lt;/b&gt;? \| # no" in md
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    assert "<script" not in rendered and "<img src=x" not in rendered and "<b>blue</b>" not in rendered
    assert 'href="javascript' not in rendered and 'src="javascript' not in rendered
    assert "&lt;script&gt;" in rendered  # shown as text


def test_report_markdown_escapes_names_in_tables(tmp_path):
    ctx = {"reward_stats": {"base": reward_summary(BASE), "a|b*<i>": reward_summary(SFT)}}
    md = report.render_report(ctx, tmp_path / "r.md")
    row = next(line for line in md.splitlines() if "0.6500" in line)
    assert row.startswith(r"| a\|b\*&lt;i&gt; | 4 | 0.6500 |")
    assert len(re.split(r"(?<!\\)\|", row)) == 13  # 11 cells, the escaped pipe does not split


def test_report_omits_missing_sections(tmp_path):
    md = report.render_report({"reward_stats": {"base": reward_summary(BASE)}}, tmp_path / "r.md", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "## Reward statistics" in md and "<h2>Reward statistics</h2>" in page
    for heading in ("Win rates", "Annotator agreement", "Reward model", "Plots", "Example answers",
                    "Model sources", "Parameters"):
        assert f"## {heading}\n" not in md and f"<h2>{heading}</h2>" not in page
    full = report.render_report(_context(), tmp_path / "full.md")
    for heading in ("Reward statistics", "Win rates", "Annotator agreement", "Reward model", "Plots",
                    "Example answers", "Model sources", "Parameters"):
        assert f"## {heading}\n" in full
    # no reward model yet, no plots: just those sections go
    partial = report.render_report(_context(reward_model=1, plots=1), tmp_path / "partial.md")
    assert "## Reward model" not in partial and "## Plots" not in partial and "## Win rates" in partial
    empty = report.render_report({}, tmp_path / "empty.md")
    assert [line for line in empty.splitlines() if line.startswith("#")] == [f"# {report.DEFAULT_TITLE}"]
