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


def test_repro_then_status_clean(tiny_repo, teacher_server):
    repo, out = tiny_repo
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]:
        assert f"Running stage '{stage}'" in out
    assert teacher_server.total_served > 0
    status = _run(["dvc", "status"], repo).stdout
    assert "up to date" in status, status
    again = _run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in again, again


def test_param_change_dirties_only_downstream(tiny_repo):
    repo, _ = tiny_repo
    params = repo / "params.yaml"
    saved = params.read_text()
    try:
        p = yaml.safe_load(saved)
        write_params(params, {"prepare": {"splits": {"eval": p["prepare"]["splits"]["eval"] + 1}}})
        status = _run(["dvc", "status"], repo).stdout
        assert "prepare:" in status and "base_model:" not in status, status
    finally:
        params.write_text(saved)
