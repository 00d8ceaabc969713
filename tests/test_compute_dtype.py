"""``model.compute_dtype``: bf16 only where the CPU is built for it and only for the work measured faster there; the
resolved dtype reaches the trainer configs, the loaders, the answer cache's key and the metrics."""
from __future__ import annotations

import pytest
import torch

from sciexplain import machine, models, trainer_config


@pytest.fixture()
def cpu(monkeypatch):
    """A CPU machine (no CUDA) whose native bf16 the test chooses; the setting is forgotten afterwards."""
    monkeypatch.setattr(models, "has_cuda", lambda: False)
    monkeypatch.setitem(machine.DTYPE_SETTING, "value", None)

    def native(kind):
        monkeypatch.setenv("SCIEXPLAIN_BF16_CLASS", {True: "amx", False: "none"}.get(kind, kind))

    return native


@pytest.mark.parametrize("kind", machine.BF16_CLASSES)
def test_auto_is_bf16_only_for_the_work_measured_faster_on_that_class_of_cpu(cpu, kind):
    cpu(kind)
    models.set_compute_dtype("auto")
    for work in models.WORK:
        expect = torch.bfloat16 if work in models.CPU_BF16_WORK[kind] else torch.float32
        assert models.compute_dtype(work) == expect, work
    cpu(False)
    assert all(models.compute_dtype(w) == torch.float32 for w in models.WORK)


def test_the_measured_choices():
    """bench/RESULTS.md: training faster in bf16 on both classes; generation and scoring faster too but not
    batch-invariant in bf16 (resume and pooling guarantees), so fp32; DPO/GRPO (policy) fp32 everywhere."""
    assert models.CPU_BF16_WORK["amx"] == {"train"}  # generation and scoring: fp32 for batch-invariance
    assert models.CPU_BF16_WORK["avx512_bf16"] == {"train"}
    assert not any("policy" in w for w in models.CPU_BF16_WORK.values())


def test_the_cpu_class_comes_from_the_flags(monkeypatch):
    monkeypatch.delenv("SCIEXPLAIN_BF16_CLASS", raising=False)
    for flags, kind in [({"avx2"}, None), ({"avx2", "avx512f", "avx512_bf16"}, "avx512_bf16"),
                        ({"avx512_bf16", "amx_bf16", "amx_tile"}, "amx")]:
        monkeypatch.setattr(machine, "cpu_flags", lambda f=flags: frozenset(f))
        assert machine.bf16_class() == kind
    monkeypatch.setenv("SCIEXPLAIN_BF16_CLASS", "avx1024")
    with pytest.raises(ValueError, match="SCIEXPLAIN_BF16_CLASS"):
        machine.bf16_class()


def test_forced_settings_and_no_setting(cpu):
    cpu(False)
    models.set_compute_dtype("bfloat16")
    assert all(models.compute_dtype(w) == torch.bfloat16 for w in models.WORK)
    cpu(True)
    models.set_compute_dtype("float32")
    assert all(models.compute_dtype(w) == torch.float32 for w in models.WORK)
    models.set_compute_dtype(None)  # no stage said: the old rule, fp32 on the CPU
    assert models.compute_dtype("train") == torch.float32
    with pytest.raises(models.ModelSourceError, match="model.compute_dtype must be one of auto, float32, bfloat16"):
        models.set_compute_dtype("fp16")
    with pytest.raises(ValueError):
        models.compute_dtype("dance")


def test_training_is_bf16_autocast_over_fp32_master_weights(cpu):
    cpu(True)
    models.set_compute_dtype("auto")
    assert trainer_config.precision() == {"use_cpu": True, "bf16": True, "fp16": False}
    assert trainer_config.precision("policy")["bf16"] is False  # dpo / grpo
    assert models.training_init_kwargs("auto")["dtype"] == "float32"  # the weights TRL loads stay fp32
    models.set_compute_dtype("float32")
    assert trainer_config.precision()["bf16"] is False


def test_generation_and_scoring_load_in_the_resolved_dtype(cpu):
    cpu(True)
    models.set_compute_dtype("bfloat16")
    assert models._inference_kwargs(False, None, "generate") == {"dtype": torch.bfloat16}
    assert models._inference_kwargs(False, None, "score") == {"dtype": torch.bfloat16}
    assert models._inference_kwargs(False, "cpu") == {"dtype": torch.float32}  # adapter merging: always fp32
    models.set_compute_dtype("auto")
    assert models._inference_kwargs(False, None, "generate")["dtype"] == models.compute_dtype("generate")


def test_cuda_keeps_bf16_unless_forced_to_fp32(cpu, monkeypatch):
    monkeypatch.setattr(models, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    models.set_compute_dtype("auto")
    assert models.compute_dtype("generate") == torch.bfloat16 and trainer_config.precision()["bf16"] is True
    models.set_compute_dtype("float32")
    assert models.compute_dtype("train") == torch.float32


def test_run_facts_name_the_machine_and_the_dtype(cpu):
    cpu(True)
    models.set_compute_dtype("auto")
    f = models.run_facts("train")
    assert f["compute_dtype"] == "bfloat16" and f["machine"]["cpu"] == machine.short_cpu(machine.cpu_model())
    assert set(f["machine"]["features"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert models.run_facts("generate", "llamacpp")["compute_dtype"] == "gguf"
    assert models.run_facts("generate", "openai")["compute_dtype"] == "server"


def test_bf16_answers_have_their_own_cache_key(tiny_base):
    """A run never serves fp32 answers for bf16 ones (or back): the local backend's cache id carries the dtype."""
    from sciexplain.local_backend import LocalBackend
    from sciexplain.models import load_causal_lm

    fp32 = LocalBackend(tiny_base)
    bf16 = LocalBackend(tiny_base, model=load_causal_lm(tiny_base).to(torch.bfloat16))
    assert fp32.dtype == "float32" and "dtype" not in fp32.cache_id  # fp32 keys as before: old caches stay valid
    assert bf16.dtype == "bfloat16" and bf16.cache_id.endswith("|dtype:bfloat16")


def test_a_stage_forgets_its_dtype_when_it_returns(cpu):
    """Stages run in-process (tests) must not leave bf16 behind for the next test."""
    import click

    from sciexplain.cli import stage

    @stage
    def fake():
        models.set_compute_dtype("bfloat16")
        assert machine.DTYPE_SETTING["value"] == "bfloat16"
        raise click.ClickException("boom")

    with pytest.raises(click.ClickException):
        fake()
    assert machine.DTYPE_SETTING["value"] is None
