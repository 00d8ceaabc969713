"""Training stages under `accelerate launch` with 2 processes on the CPU (gloo), on the tiny model.

accelerate 1.15's `--cpu` flag runs one process unless an MPI `mpirun` is given (its simple launcher); the two-process
launch here is `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` (MULTI_GPU: torchrun underneath)
with no visible CUDA device: the trainers then run with `use_cpu=True`, and accelerate makes that MULTI_CPU with the
gloo backend (checked: `processes` 2 in the metrics, half the optimizer steps per epoch). Every rank other than 0 runs under an audit hook (tests/dist_audit) that reports
any file it writes inside the project: there must be none.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import ROOT, read_jsonl, write_params
from test_dpo import _pairs, _stage_setup, sft_adapter  # noqa: F401  (module fixture)
from test_reward_stage import project  # noqa: F401  (fixture: a reward_model project)
from test_sft import TARGET

pytestmark = [pytest.mark.dist, pytest.mark.usefixtures("one_torch_thread")]

AUDIT = Path(__file__).parent / "dist_audit"
CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir: Path, module: str, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch` of ``python -m <module> <args>`` in ``workdir``: ``processes`` CPU ranks, gloo."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(AUDIT), str(ROOT)]), "AUDIT_ROOT": str(workdir)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
           "--num_processes", str(processes), "--main_process_port", str(_free_port()), "-m", module, *args]
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def assert_clean(r: subprocess.CompletedProcess, workdir: Path, out: Path) -> None:
    """No write by rank 1; no scratch / temp folder left next to the output."""
    audit = [line for line in r.stderr.splitlines() if line.startswith("AUDIT ")]
    assert audit == [], "\n".join(audit[:20])
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert left == [], left


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# --------------------------------------------------------------------------- sft

def _sft_project(workdir: Path, tiny_base: Path, batch_size: int) -> None:
    shutil.copytree(tiny_base, workdir / "models/base", dirs_exist_ok=True)
    recs = [{"id": f"q{i}", "question": f"Why does ice float? ({i})", "answer": TARGET, "keep": True} for i in range(10)]
    for path in ("data/generations/teacher/sft.jsonl", "data/prepared/sft.jsonl"):
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_text("".join(json.dumps(r) + "\n" for r in recs))
    # fp32 on every CPU: with `compute_dtype: auto` a CPU with native bf16 (AVX512-BF16 / AMX) trains in bf16
    # autocast, whose rounding (relative 5e-4 between 1x4 and 2x2) would hide what the 1e-5 bound below checks
    write_params(workdir / "params.yaml", {"model": {"compute_dtype": "float32"}, "sft": {
        "data": "teacher", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "val_fraction": 0.2,
        "trainer": {"learning_rate": 1e-2, "num_train_epochs": 1, "per_device_train_batch_size": batch_size,
                    "gradient_accumulation_steps": 1, "max_length": 64, "seed": 0}}})


def test_sft_two_processes_match_one(workdir, tiny_base, tmp_path_factory):
    """sft under 2 ranks: exit 0, one adapter, no race; same files as 1 process and, with the same global batch
    (2 ranks x 2 = 1 x 4), the same weights up to float rounding."""
    from peft import PeftModel

    from sciexplain.models import load_causal_lm
    from stages import sft

    _sft_project(workdir, tiny_base, batch_size=2)
    r = launch(workdir, "stages.sft", "--section", "sft")
    out = workdir / "models/sft"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert_clean(r, workdir, out)
    m2 = json.loads((workdir / "metrics/sft.json").read_text())
    assert m2["processes"] == 2 and m2["steps"] == 2 and m2["train_examples"] == 8, m2  # 8 examples / (2 x 2)
    assert (workdir / "metrics/sft/plots/metrics/train/loss.tsv").exists()
    model = load_causal_lm(workdir / "models/base", adapter=out)
    assert isinstance(model, PeftModel)

    one = tmp_path_factory.mktemp("one")
    shutil.copy(workdir / "params.yaml", one / "params.yaml")
    _sft_project(one, tiny_base, batch_size=4)
    os.chdir(one)
    try:
        res = CliRunner().invoke(sft.main, ["--section", "sft"])
    finally:
        os.chdir(workdir)
    assert res.exit_code == 0, res.output
    m1 = json.loads((one / "metrics/sft.json").read_text())
    assert m1["processes"] == 1 and m1["steps"] == 2
    first = {p.name: p.read_bytes() for p in (one / "models/sft").iterdir()}
    os.chdir(one)
    try:  # a rerun writes the same bytes (no model card, no pickled arguments)
        assert CliRunner().invoke(sft.main, ["--section", "sft"]).exit_code == 0
    finally:
        os.chdir(workdir)
    assert {p.name: p.read_bytes() for p in (one / "models/sft").iterdir()} == first
    assert sorted(p.name for p in (one / "models/sft").iterdir()) == sorted(p.name for p in out.iterdir())
    w1, w2 = _weights(one / "models/sft"), _weights(out)
    diff = _max_diff(w1, w2)
    scale = max(float(v.abs().max()) for v in w1.values())
    rel = float(sum((w1[k] - w2[k]).pow(2).sum() for k in w1).sqrt() / sum(w1[k].pow(2).sum() for k in w1).sqrt())
    print(f"sft 1 vs 2 processes: max |dw| {diff:.3g} (max |w| {scale:.3g}, relative L2 {rel:.3g}); eval loss "
          f"{m1['eval_loss']} vs {m2['eval_loss']}; train loss {m1['train_loss']} vs {m2['train_loss']}")
    # measured: max |dw| 3.5e-8, relative 3.3e-8, losses equal to 4 decimals. Without the fix in
    # sciexplain.dist.evaluate_before_train the 2 ranks train apart (no all-reduce): max |dw| 0.03, relative 0.05
    assert diff < 1e-5 and rel < 1e-5, (diff, rel)
    assert m2["eval_loss"] == pytest.approx(m1["eval_loss"], abs=1e-4)
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], abs=1e-4)


# --------------------------------------------------------------------------- reward model

def test_reward_model_two_processes(project):  # noqa: F811
    from safetensors.torch import load_file

    from sciexplain.reward import RewardScorer

    r = launch(project, "stages.reward_model")
    out = project / "models/reward"
    names = sorted(p.name for p in out.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "reward_config.json", "tokenizer.json"} <= set(names)
    assert not any(p.is_dir() for p in out.iterdir()) and "README.md" not in names and "training_args.bin" not in names
    assert_clean(r, project, out)
    assert r.stdout.count("held-out accuracy") == 1  # the evaluation ran once, on rank 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and "score" in cfg["modules_to_save"]
    assert any(".score." in k for k in load_file(out / "adapter_model.safetensors"))  # the trained head is saved
    assert json.loads((out / "reward_config.json").read_text())["max_length"] == 320
    m = json.loads((project / "metrics/reward_model.json").read_text())
    assert m["train"]["processes"] == 2 and m["dropped"] == 0
    train = read_jsonl(project / "data/preferences/train.jsonl")
    assert m["pairs"]["train"] == len(train) > 0
    scorer = RewardScorer(project / "models/base", out)
    good, bad = scorer.score(["Why is the sky blue?"] * 2, ["Blue light scatters more. In summary, Rayleigh.", "lol"])
    assert isinstance(good, float) and good != bad


# --------------------------------------------------------------------------- dpo

def test_dpo_two_processes(workdir, tiny_base, sft_adapter):  # noqa: F811
    from peft import PeftModel

    from sciexplain.models import load_causal_lm

    shutil.copytree(tiny_base, workdir / "models/base")
    _stage_setup(workdir, _pairs(12))
    write_params(workdir / "params.yaml", {"dpo": {"trainer": {"per_device_train_batch_size": 2}}})
    r = launch(workdir, "stages.dpo", "--init-adapter", str(sft_adapter))
    out = workdir / "models/dpo"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]  # no "ref"
    assert_clean(r, workdir, out)
    m = json.loads((workdir / "metrics/dpo.json").read_text())
    assert m["processes"] == 2 and m["train_pairs"] == 9 and m["steps"] == 3, m  # 9 pairs / (2 x 2), rounded up
    assert (workdir / "metrics/dpo/plots/metrics/train/loss.tsv").exists()
    new, old = _weights(out), _weights(sft_adapter)
    assert set(new) == set(old) and _max_diff(new, old) > 0
    model = load_causal_lm(workdir / "models/base", adapter=out)
    assert isinstance(model, PeftModel)
    ids = torch.tensor([[1, 5, 9, 30]])
    assert torch.isfinite(model(ids).logits).all()
