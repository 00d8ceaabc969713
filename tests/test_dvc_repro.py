"""`dvc repro` of a tiny variant of the real pipeline (tiny random model, tiny splits), then `dvc status` is clean,
a second repro does nothing, and a changed param dirties only its stage and what is downstream."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_params

PIPELINE_FILES = ["dvc.yaml", "params.yaml", "stages", "sciexplain", "prompts", "data/raw", "data/annotations"]


def _run(args, cwd, check=True):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def tiny_params() -> dict:
    """Sizes that make the whole pipeline run in a minute or two on a tiny random model."""
    return yaml.safe_load((Path(__file__).parent / "fixtures" / "tiny_params.yaml").read_text())


@pytest.fixture(scope="module")
def teacher_server():
    """The teacher answers through the openai backend from a real local HTTP server (a random tiny model writes
    no sentence the teacher filters would keep)."""
    from openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, tiny_base, teacher_server):
    repo = tmp_path_factory.mktemp("repo")
    for rel in PIPELINE_FILES:
        src = ROOT / rel
        if not src.exists():
            continue
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    for pycache in repo.rglob("__pycache__"):
        shutil.rmtree(pycache)
    updates = tiny_params()
    updates["base_model"] = {"source": str(tiny_base)}
    updates["teacher"].update(backend="openai", model="test-teacher", base_url=teacher_server.base_url, api_key_env="none")
    write_params(repo / "params.yaml", updates)
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], repo)
    r = _run(["dvc", "repro"], repo)
    return repo, r.stdout


def _stage_names(repo) -> list[str]:
    """Every stage, foreach stages expanded (answer@base, compare@sft_vs_base, ...)."""
    return [line.split()[0] for line in _run(["dvc", "stage", "list"], repo).stdout.splitlines() if line.strip()]


def test_repro_then_status_clean(tiny_repo, teacher_server):
    repo, out = tiny_repo
    names = _stage_names(repo)
    assert {"answer@base", "answer@dpo", "compare@rs_vs_teacher", "judge@sft_vs_base", "winrate@dpo_vs_base",
            "rewards@teacher", "report", "grpo"} <= set(names)
    for stage in names:
        assert f"Running stage '{stage}'" in out
    assert teacher_server.total_served > 0
    status = _run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
    again = _run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in again, again


def _dirty_stages(repo) -> set[str]:
    status = _run(["dvc", "status"], repo).stdout
    return {line[:-1] for line in status.splitlines() if line and not line.startswith((" ", "\t")) and line.endswith(":")}


PAIRS = ("sft_vs_base", "rs_vs_base", "dpo_vs_base", "rs_vs_teacher")
MODELS = ("base", "sft", "rs", "dpo", "teacher")


@pytest.mark.parametrize("update, expect", [
    ({"prepare": {"seed": 7}}, {"prepare", "report"}),
    ({"select": {"min_gap": 0.5}}, {"select", "report"}),
    ({"evaluate": {"examples": 1}}, {"report"}),
    ({"sft": {"lora": {"r": 2}}}, {"sft", "report"}),
    ({"teacher": {"temperature": 0.5}}, {"teacher", "report"}),
    ({"generate": {"max_new_tokens": 9}}, {"answer@base", "answer@sft", "answer@rs", "answer@dpo"}),
    ({"answer": {"models": {"sft": {"splits": ["eval"]}}}}, {"answer@sft"}),
    ({"compare": {"seed": 3}}, {f"compare@{p}" for p in PAIRS}),
    ({"evaluate": {"max_questions": 2}}, {f"compare@{p}" for p in PAIRS} | {f"rewards@{m}" for m in MODELS} | {"report"}),
])
def test_param_change_dirties_only_its_stage(tiny_repo, update, expect):
    """`dvc status` lists the stage whose param changed (its downstream reruns only if its outputs change).
    ``report`` prints the study's params sections in the report, so it declares (and depends on) them too; it
    reruns in seconds (no model)."""
    repo, _ = tiny_repo
    params = repo / "params.yaml"
    saved = params.read_text()
    try:
        write_params(params, update)
        assert _dirty_stages(repo) == expect
    finally:
        params.write_text(saved)


def test_a_new_pair_and_a_new_model_are_a_params_edit(tiny_repo):
    """A model (with its adapter folder) and two pairs added in params.yaml alone: exactly their stages and the report
    are to run, nothing that exists reruns."""
    repo, _ = tiny_repo
    params = repo / "params.yaml"
    saved = params.read_text()
    shutil.copytree(repo / "models/sft", repo / "models/sft2")  # an adapter trained elsewhere
    try:
        write_params(params, {"answer": {"models": {"sft2": {"adapter": "models/sft2", "splits": ["eval"]}}},
                              "compare": {"pairs": {"sft2_vs_base": ["sft2", "base"], "dpo_vs_sft": ["dpo", "sft"]}},
                              "evaluate": {"models": list(MODELS) + ["sft2"]}})
        # (`dvc repro --dry` cannot walk stages whose deps do not exist yet; `dvc status` lists every stage to run)
        assert _dirty_stages(repo) == {"answer@sft2", "rewards@sft2", "report",
                                       *(f"{s}@{p}" for s in ("compare", "judge", "winrate")
                                         for p in ("sft2_vs_base", "dpo_vs_sft"))}
    finally:
        params.write_text(saved)
        shutil.rmtree(repo / "models/sft2")


def test_outputs_of_the_tiny_run(tiny_repo):
    repo, _ = tiny_repo
    report = (repo / "reports/report.md").read_text()
    for model in ("base", "sft", "rs", "dpo", "teacher"):
        assert model in report
    for png in ("ridge", "winrates", "best_of_n", "training"):
        assert (repo / f"plots/eval/{png}.png").stat().st_size > 1000
    rewards = yaml.safe_load((repo / "metrics/eval_rewards.json").read_text())
    assert set(rewards) == {"base", "sft", "rs", "dpo", "teacher"}
    assert all(rewards[m]["n"] + rewards[m].get("dropped_by_filter", 0) == 4 for m in rewards)
    winrates = yaml.safe_load((repo / "metrics/eval_winrates.json").read_text())
    assert set(winrates) == set(PAIRS)
    for pair in PAIRS:  # every comparison has its own sheet, judgments and metrics
        assert (repo / f"data/compare/{pair}/sheet.jsonl").exists() and (repo / f"data/judgments/{pair}").is_dir()
        compare = yaml.safe_load((repo / f"metrics/compare/{pair}.json").read_text())
        assert compare["judge_annotators"] == ["judge-rubric"]
        assert {k: v for k, v in winrates[pair].items() if k != "multiple_testing" and k != "verdict"} == \
            {k: v for k, v in compare.items() if k != "verdict"}  # the report adds the family's adjustment only


def test_a_human_annotation_file_updates_stats_without_regenerating(tiny_repo):
    repo, _ = tiny_repo
    import json

    sheet = [json.loads(line) for line in (repo / "data/compare/sft_vs_base/sheet.jsonl").read_text().splitlines()]
    human = repo / "data/annotations/sft_vs_base/alice.csv"
    human.parent.mkdir(parents=True, exist_ok=True)
    human.write_text("item_id,choice,strength,item_hash\n" + "".join(f"{r['item_id']},A,Better,{r['item_hash']}\n" for r in sheet))
    try:
        out = _run(["dvc", "repro"], repo).stdout
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
        # every winrate reads data/annotations, as reward_model does (people's files may train it): a retrained reward
        # model reruns what scores with it (rewards@*, score, grpo), never an answer, a sheet or a judge
        assert {"winrate@sft_vs_base", "report"} <= ran
        assert not {s for s in ran if s.startswith(("answer", "teacher", "sample", "compare", "judge", "sft", "rs", "dpo"))}, ran
        compare = json.loads((repo / "metrics/compare/sft_vs_base.json").read_text())
        assert compare["human_annotators"] == ["alice"] and compare["headline_source"] == "humans"
        assert compare["humans"]["n_annotators"] == 1 and "judge-rubric" in compare["judges"]  # judges beside, never pooled
        assert "Running stage" not in _run(["dvc", "repro"], repo).stdout
    finally:
        human.unlink()
        _run(["dvc", "repro"], repo)
