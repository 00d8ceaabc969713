"""Bad input files through the real stage commands: Posts.xml and Q/A sources (``python -m stages.prepare``),
human preference pair files (``python -m stages.validate``), OpenAI Batch API output files
(``python -m stages.teacher`` with ``teacher.backend: batch-import``).

``tests/data/bad/<kind>/`` holds one small file per case and ``cases.yaml``, the manifest: the stage it runs
through (a case may name another), how the file is wired in (a params overlay, ``{file}`` standing for the case
file's path in the project),
and for each error the record (``where``: ``line 3`` or ``request 'q2'``) and ``field`` the one-line message must
name after the file, and words it must say; ``accepted`` cases run (exit 0) and count what they dropped.
``python tests/data/bad/make_input_cases.py`` regenerates the case files.

Every case runs in a fresh copy of a small project made once per stage (params.yaml, dvc.yaml, what the stage reads)
on which a good run already wrote the outputs. An error must exit non-zero, print no traceback, end stderr with ONE
line ``Error: <file>, <where>, field '<field>': ...`` (``field`` null: a syntax or encoding error, where no field is
to blame; ``where`` null: the whole file) and leave every file under data/, metrics/ and models/ byte for byte (no
temp file left either). Cases run four at a time; each test checks one case.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, write_params

BAD = ROOT / "tests" / "data" / "bad"
KINDS = ("posts", "qa", "pairs", "batch")
MANIFEST = {kind: yaml.safe_load((BAD / kind / "cases.yaml").read_text()) for kind in KINDS}
STAGES = {"prepare": "stages.prepare", "validate": "stages.validate", "teacher": "stages.teacher"}
WATCHED = ("data", "metrics", "models")
CASE_DIR = "data/raw/bad"

# a case the code still gets wrong would be a strict xfail naming the fix (none today)
XFAIL: dict = {}

ERRORS = [(kind, name) for kind in KINDS for name in sorted(MANIFEST[kind].get("errors") or {})]
ACCEPTED = [(kind, name) for kind in KINDS for name in sorted(MANIFEST[kind].get("accepted") or {})]


def _files_in_manifests_exist_and_every_file_is_a_case():
    for kind in KINDS:
        m = MANIFEST[kind]
        files = {p.name for p in (BAD / kind).iterdir() if p.is_file() and p.name != "cases.yaml"}
        listed = set(m.get("errors") or {}) | set(m.get("accepted") or {})
        assert files == listed, (kind, files ^ listed)


def test_the_corpus(tmp_path):
    _files_in_manifests_exist_and_every_file_is_a_case()
    subprocess.run([sys.executable, str(BAD / "make_input_cases.py"), str(tmp_path)], check=True)
    made = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert made == {k: (BAD / k).read_bytes() for k in made}, "make_input_cases.py and the case files differ"
    assert set(made) == {str(p.relative_to(BAD)) for kind in KINDS for p in (BAD / kind).rglob("*")
                         if p.is_file() and p.name != "cases.yaml"}
    counts = {kind: len(MANIFEST[kind].get("errors") or {}) for kind in KINDS}
    print(f"bad-input corpus: {sum(counts.values())} error cases {counts}, {len(ACCEPTED)} accepted")
    assert sum(counts.values()) >= 32 and all(n >= 6 for n in counts.values())


# --------------------------------------------------------------------------- the projects
def _run(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", STAGES[stage]], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                               "TOKENIZERS_PARALLELISM": "false"})


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file (and the name of every folder) under data/, metrics/, models/."""
    out = {}
    for top in WATCHED:
        for p in sorted((root / top).rglob("*")):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _base_params(stage: str) -> dict:
    """What every case of a stage shares (small sizes; the case's overlay comes on top)."""
    if stage == "prepare":
        return {"prepare": {"min_question_tokens": 1, "splits": {"sft": 1, "rm": 1, "rs": 1, "eval": 1}}}
    if stage == "validate":
        return {"validate": {"bootstrap": 20, "test_fraction": 0.5},
                "judge": {"panel": [{"name": "rubric", "type": "rubric"}]}}
    return {"teacher": {"backend": "batch-import", "model": "gpt-test", "splits": ["sft"], "min_words": 5,
                        "repetition_penalty": 1.0}}  # the Batch API has no such field


def _wire(root: Path, kind: str, name: str, overlay: dict) -> None:
    text = yaml.safe_dump(overlay).replace("{file}", f"{CASE_DIR}/{name}")
    write_params(root / "params.yaml", yaml.safe_load(text))


def _template(stage: str, base: Path) -> Path:
    """A small project for ``stage``, after one good run (its outputs are what a failing case must leave alone)."""
    root = base / f"template-{stage}"
    for d in WATCHED:
        (root / d).mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    write_params(root / "params.yaml", _base_params(stage))
    (root / CASE_DIR).mkdir(parents=True)
    if stage == "prepare":  # the tokenizer counts tokens; no model is loaded
        from conftest import make_tiny_tokenizer

        make_tiny_tokenizer().save_pretrained(root / "models" / "base")
        shutil.copy(ROOT / "data/raw/questions.jsonl", root / "data/raw/questions.jsonl")  # the bank
        good, overlay = BAD / "posts" / "accepted_drops.xml", MANIFEST["posts"]["params"]
    elif stage == "validate":
        shutil.copytree(ROOT / "prompts", root / "prompts")
        (root / "data/prepared").mkdir()
        (root / "data/prepared/eval.jsonl").write_text('{"id": "0000000000000000", "question": "Unrelated?"}\n')
        good, overlay = BAD / "pairs" / "setup" / "good.jsonl", MANIFEST["pairs"]["params"]
    else:
        shutil.copytree(ROOT / "prompts", root / "prompts")
        shutil.copytree(BAD / "batch" / "setup" / "data", root / "data", dirs_exist_ok=True)
        good, overlay = BAD / "batch" / "setup" / "good.jsonl", MANIFEST["batch"]["params"]
    shutil.copy(good, root / CASE_DIR / good.name)
    keep = (root / "params.yaml").read_text()
    _wire(root, "", good.name, overlay)
    r = _run(stage, root)
    assert r.returncode == 0, f"the good run of {stage} failed:\n{r.stderr[-3000:]}"
    (root / "params.yaml").write_text(keep)
    (root / CASE_DIR / good.name).unlink()
    # prepare's good run is the accepted case posts/accepted_drops.xml: its result is that case's (one torch import)
    _good[good.name] = {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "work": root}
    return root


_lock = threading.Lock()
_templates: dict[str, Path] = {}
_results: dict[str, dict] = {}
_good: dict[str, dict] = {}


def _stage(kind: str, spec: dict) -> str:
    return spec.get("stage") or MANIFEST[kind]["stage"]


def _one_case(template: Path, work: Path, kind: str, name: str, spec: dict) -> dict:
    shutil.copytree(template, work)
    shutil.copy(BAD / kind / name, work / CASE_DIR / name)
    _wire(work, kind, name, spec.get("params") or MANIFEST[kind]["params"])
    before = _snapshot(work)
    r = _run(_stage(kind, spec), work)
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "before": before, "after": _snapshot(work),
            "work": work}


def _kind_results(kind: str, base: Path) -> dict:
    """Every case of ``kind``, run four at a time (the stages mostly wait on imports)."""
    with _lock:
        if kind not in _results:
            m = MANIFEST[kind]
            cases = {name: spec or {} for name, spec in {**(m.get("errors") or {}), **(m.get("accepted") or {})}.items()}
            for stage in sorted({_stage(kind, spec) for spec in cases.values()}):
                if stage not in _templates:
                    try:
                        _templates[stage] = _template(stage, base)
                    except Exception as e:  # every case of the stage fails with this, not with a half-made template
                        _templates[stage] = e
                if isinstance(_templates[stage], Exception):
                    raise _templates[stage]
            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = {name: pool.submit(_one_case, _templates[_stage(kind, spec)], base / kind / name, kind, name, spec)
                           for name, spec in cases.items() if name not in _good}
                _results[kind] = {name: f.result() for name, f in futures.items()}
            _results[kind].update({name: _good[name] for name in cases if name in _good})
        return _results[kind]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


def _param(kind, name):
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[(kind, name)])] if (kind, name) in XFAIL else []
    return pytest.param(kind, name, id=f"{kind}/{name}", marks=marks)


def _check_error(res: dict, kind: str, name: str) -> None:
    spec = MANIFEST[kind]["errors"][name]
    err = res["stderr"]
    assert res["rc"] != 0, f"exit 0 on a bad file:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert lines and lines[-1].startswith("Error: ") and sum(x.startswith("Error") for x in lines) == 1, err[-2000:]
    line = lines[-1]
    head = f"{CASE_DIR}/{name}" + (f", {spec['where']}" if spec.get("where") else "")
    head += f", field '{spec['field']}': " if spec.get("field") else ": "
    assert head in line, f"expected {head!r} in\n{line}"
    assert spec["says"] in line, f"expected {spec['says']!r} in\n{line}"
    assert res["after"] == res["before"], "an output changed or a temp file was left behind"


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """One line after the module: error cases tried and how many stopped as they must."""
    yield
    tried = [(k, n) for k in _results for n in MANIFEST[k].get("errors") or {}]
    ok = 0
    for k, n in tried:
        try:
            _check_error(_results[k][n], k, n)
            ok += 1
        except AssertionError:
            pass
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None and tried:
        with capture.global_and_fixture_disabled():
            print(f"\nbad inputs: {len(tried)} error cases tried, {ok} stopped with one right line "
                  f"({len([t for t in tried if t in XFAIL])} known to fail: xfail)")


@pytest.mark.e2e
@pytest.mark.parametrize("kind,name", [_param(k, n) for k, n in ERRORS])
def test_a_bad_input_stops_the_stage_with_one_line(base, kind, name):
    _check_error(_kind_results(kind, base)[name], kind, name)


@pytest.mark.e2e
@pytest.mark.parametrize("kind,name", [_param(k, n) for k, n in ACCEPTED])
def test_accepted_inputs_run_and_count_what_they_dropped(base, kind, name):
    spec = MANIFEST[kind]["accepted"][name]
    res = _kind_results(kind, base)[name]
    assert res["rc"] == 0, res["stderr"][-3000:]
    metrics = json.loads((res["work"] / spec["metrics"]).read_text())
    for key, want in spec["expect"].items():
        node = metrics
        for part in key.split("."):
            node = node.get(part, 0) if isinstance(node, dict) else None
        assert node == want, (key, node, want)
