"""`dvc repro` of a tiny variant of the real pipeline (tiny random model, tiny splits), then `dvc status` is clean,
a second repro does nothing, and a changed param dirties only its stage and what is downstream."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_params

pytestmark = pytest.mark.e2e

PIPELINE_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", "stages", "sciexplain", "prompts", "data/raw", "data/annotations"]


def _env() -> dict:
    # one torch thread per stage: the tiny models' stages are several times slower with 2 threads on a busy 2-core
    # machine (oversubscription); the stages' outputs are what the tests check, not their speed
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
                OMP_NUM_THREADS="1")


def _run(args, cwd, check=True, env=None, procs=None):
    p = subprocess.Popen(args, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)  # its own process group: a stop kills dvc and the stage it runs
    if procs is not None:
        procs.append(p)
    out, err = p.communicate()
    r = subprocess.CompletedProcess(args, p.returncode, out, err)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def tiny_params() -> dict:
    """Sizes that make the whole pipeline run in a minute or two on a tiny random model."""
    return yaml.safe_load((Path(__file__).parent / "fixtures" / "tiny_params.yaml").read_text())


class TinyRepro:
    """The tiny project and its first `dvc repro` (three minutes on 2 cores), then a copy of it given a human
    annotation file and reproduced again (a minute and more), built in a thread.

    When this module is selected, conftest starts it at the session's first test (:func:`start_early`), so the
    repros -- one stage process at a time, one torch thread -- run on the second core while the in-process tests
    run on the first; the module's tests wait for what they check (:meth:`result`, :meth:`annotated`) and fail with
    its error if it failed. Run alone, the module builds it in its own fixture, the same way. The teacher answers
    through the openai backend from a real local HTTP server (a random tiny model writes no sentence the teacher
    filters would keep)."""

    def __init__(self, base: Path, tiny_base: Path):
        import threading

        from openai_server import FakeOpenAIServer

        self.repo, self.copy, self.tiny_base = base / "repo", base / "annotated", tiny_base
        self.env = _env()  # the environment as the session started (tests change os.environ meanwhile)
        self.server = FakeOpenAIServer().__enter__()
        self.procs: list[subprocess.Popen] = []
        self.error: BaseException | None = None
        self.stdout = ""
        self.annotated_run: dict = {}
        self.annotated_error: BaseException | None = None
        self.repro_done = threading.Event()
        self.thread = threading.Thread(target=self._build, name="tiny-dvc-repro", daemon=True)
        self.thread.start()

    def _build(self) -> None:
        try:
            self.stdout = self._repro()
            # the copy for the annotation test, taken before any test of the module edits the project
            shutil.copytree(self.repo, self.copy, symlinks=True)
        except BaseException as e:  # noqa: BLE001  (raised again in the tests that wait for it)
            self.error = self.annotated_error = e
            return
        finally:
            self.repro_done.set()
        try:
            self.annotated_run = self._annotate()
        except BaseException as e:  # noqa: BLE001
            self.annotated_error = e

    def _annotate(self) -> dict:
        """On the copy of the reproduced project (its git repo and DVC cache included): a human annotation file for
        sft_vs_base, then `dvc repro` twice. The module's own project stays as it was for the other tests."""
        repo, run = self.copy, {}
        run["status"] = _run(["dvc", "status"], repo, env=self.env, procs=self.procs).stdout
        sheet = [json.loads(line) for line in (repo / "data/compare/sft_vs_base/sheet.jsonl").read_text().splitlines()]
        human = repo / "data/annotations/sft_vs_base/alice.csv"
        human.parent.mkdir(parents=True, exist_ok=True)
        human.write_text("item_id,choice,strength,item_hash\n" +
                         "".join(f"{r['item_id']},A,Better,{r['item_hash']}\n" for r in sheet))
        run["repro"] = _run(["dvc", "repro"], repo, env=self.env, procs=self.procs).stdout
        run["compare"] = json.loads((repo / "metrics/compare/sft_vs_base.json").read_text())
        run["again"] = _run(["dvc", "repro"], repo, env=self.env, procs=self.procs).stdout
        return run

    def _repro(self) -> str:
        repo = self.repo
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
        updates["base_model"] = {"source": str(self.tiny_base)}
        updates["teacher"].update(backend="openai", model="test-teacher", base_url=self.server.base_url,
                                  api_key_env="none")
        write_params(repo / "params.yaml", updates)
        for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                     ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], ["dvc", "repro"]):
            r = _run(args, repo, env=self.env, procs=self.procs)
        return r.stdout

    def result(self) -> tuple[Path, str]:
        self.repro_done.wait()
        if self.error is not None:
            raise self.error
        return self.repo, self.stdout

    def annotated(self) -> dict:
        self.thread.join()
        if self.annotated_error is not None:
            raise self.annotated_error
        return self.annotated_run

    def close(self) -> None:
        import signal

        for p in self.procs:
            if p.poll() is None:  # the session stopped before the repro ended
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.thread.join(60)
        self.server.__exit__(None, None, None)


_EARLY: dict = {}


def start_early(tmp_path_factory, tiny_base: Path) -> TinyRepro:
    """conftest's hook: start the repro now, for this module's tests to find later (conftest closes it)."""
    _EARLY["repro"] = TinyRepro(tmp_path_factory.mktemp("tiny_repro"), tiny_base)
    return _EARLY["repro"]


@pytest.fixture(scope="module")
def _tiny(tmp_path_factory, tiny_base):
    if "repro" in _EARLY:
        yield _EARLY["repro"]
        return
    tr = TinyRepro(tmp_path_factory.mktemp("tiny_repro"), tiny_base)
    try:
        yield tr
    finally:
        tr.close()


@pytest.fixture(scope="module")
def teacher_server(_tiny):
    return _tiny.server


@pytest.fixture(scope="module")
def tiny_repo(_tiny):
    return _tiny.result()


def _stage_names(repo) -> list[str]:
    """Every stage, foreach stages expanded (answer@base, compare@sft_vs_base, ...)."""
    return [line.split()[0] for line in _run(["dvc", "stage", "list"], repo).stdout.splitlines() if line.strip()]


def test_repro_then_status_clean(tiny_repo, teacher_server):
    repo, out = tiny_repo
    names = _stage_names(repo)
    assert {"answer@base", "answer@dpo", "compare@rs_vs_teacher", "judge@sft_vs_base", "winrate@dpo_vs_base",
            "score_eval@teacher", "report", "grpo"} <= set(names)
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
    ({"evaluate": {"max_questions": 2}}, {f"compare@{p}" for p in PAIRS} | {f"score_eval@{m}" for m in MODELS} | {"report"}),
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
        assert _dirty_stages(repo) == {"answer@sft2", "score_eval@sft2", "report",
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


def _strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def test_metrics_hold_numbers_and_codes_and_the_headline_fits_a_terminal(tiny_repo):
    """No metrics file holds a sentence (the report says things in words); metrics/headline.json has every
    comparison, every model's reward statistics and the instruments, and `dvc metrics diff` of it fits 120 columns
    (the tiny run's HEAD has no metrics yet, so the diff lists every headline value)."""
    repo, _ = tiny_repo
    for f in sorted((repo / "metrics").rglob("*.json")):
        for path, value in _strings(json.loads(f.read_text())):
            assert len(value) <= 48, f"{f.relative_to(repo)}: {path}: {value!r}"
    head = json.loads((repo / "metrics/headline.json").read_text())
    winrates = json.loads((repo / "metrics/eval_winrates.json").read_text())
    assert set(head) == {*PAIRS, "reward", "agree", "rm"} and set(head["reward"]) == set(MODELS)
    for pair in PAIRS:
        v = winrates[pair]["verdict"]
        assert head[pair]["verdict"] == v["verdict"] and head[pair]["win_rate"] == v["win_rate"]
        lo, hi = head[pair]["ci_low"], head[pair]["ci_high"]
        assert head[pair]["by"] == winrates[pair]["headline_source"] and (lo is None) == (v["decisive"] == 0)
        assert lo is None or lo <= v["win_rate"] <= hi
    rewards = json.loads((repo / "metrics/eval_rewards.json").read_text())
    assert head["reward"]["sft"] == {k: rewards["sft"][k] for k in ("mean", "median", "std")}
    shown = _run(["dvc", "metrics", "show"], repo).stdout.splitlines()
    assert shown[1].split()[0] == "metrics/headline.json", shown[:3]  # listed first
    diff = _run(["dvc", "metrics", "diff", "HEAD", "--all", "--targets", "metrics/headline.json"], repo).stdout
    rows = diff.splitlines()
    assert len(rows) > 20 and "sft_vs_base.n " in diff and "reward.base.mean" in diff, diff
    assert max(len(r) for r in rows) <= 120, diff


def test_a_human_annotation_file_updates_stats_without_regenerating(_tiny):
    run = _tiny.annotated()  # TinyRepro._annotate: a copy of the project, alice.csv added, `dvc repro` twice
    assert "up to date" in run["status"]  # the copy is the same project, nothing to rerun before the file
    out = run["repro"]
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # every winrate reads data/annotations, as reward_model does (people's files may train it): a retrained reward
    # model reruns what scores with it (score_eval@*, score_samples, grpo), never an answer, a sheet or a judge
    assert {"winrate@sft_vs_base", "report"} <= ran
    assert not {s for s in ran if s.startswith(("answer", "teacher", "sample", "compare", "judge", "sft", "rs", "dpo"))}, ran
    compare = run["compare"]
    assert compare["human_annotators"] == ["alice"] and compare["headline_source"] == "humans"
    assert compare["humans"]["n_annotators"] == 1 and "judge-rubric" in compare["judges"]  # judges beside, never pooled
    assert "Running stage" not in run["again"]
