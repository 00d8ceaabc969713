"""configs/study.yaml becomes `dvc exp run -S ...` flags that DVC itself applies to exactly the overlay's values."""
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sciexplain.records import DataError, load_params
from sciexplain.overlay import flatten, main, set_flags

ROOT = Path(__file__).resolve().parents[1]


def _contains(params, overlay, where=""):
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(params.get(k), dict):
            _contains(params[k], v, f"{where}{k}.")
        else:
            assert params[k] == v, f"{where}{k}: {params[k]!r} != {v!r}"


def test_study_overlay_round_trips_through_dvc(tmp_path):
    from dvc.utils.hydra import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    overlay = load_params(ROOT / "configs/study.yaml")
    flags = set_flags(flatten(load_params(tmp_path / "params.yaml"), overlay))
    assert flags[::2] == ["-S"] * (len(flags) // 2)
    apply_overrides(str(tmp_path / "params.yaml"), flags[1::2])  # what `dvc exp run -S` does
    after = load_params(tmp_path / "params.yaml")
    _contains(after, overlay)
    assert after["engine"]["backend"] == "vllm" and after["prepare"]["splits"]["eval"] == 100
    before = load_params(ROOT / "params.yaml")
    assert after["sft"]["lora"] == {**before["sft"]["lora"], "dropout": 0.1}  # one key set, its siblings untouched
    assert after["sft"]["val_fraction"] == before["sft"]["val_fraction"]


def test_a_typo_in_an_overlay_is_refused(tmp_path):
    with pytest.raises(DataError, match="'teacher.max_new_token'"):
        flatten(load_params(ROOT / "params.yaml"), {"teacher": {"max_new_token": 5}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {backend: vllm, bakend: x}\n")
    r = CliRunner().invoke(main, [str(bad), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code != 0 and "engine.bakend" in r.output


def test_the_printed_command(tmp_path):
    r = CliRunner().invoke(main, [str(ROOT / "configs/study.yaml"), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 0
    assert r.output.startswith("dvc exp run -S base_model.source=meta-llama/Llama-2-7b-chat-hf")


def test_an_overlay_may_add_a_trl_setting_to_a_trainer_mapping(tmp_path):
    """sft.trainer passes through to trl.SFTConfig: a setting params.yaml does not list is added (+key=value), one
    it lists is set; the schema then checks the name against the TRL config."""
    from dvc.utils.hydra import apply_overrides

    from sciexplain import params_schema as ps

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    changes = flatten(load_params(tmp_path / "params.yaml"),
                      {"sft": {"trainer": {"warmup_steps": 5, "learning_rate": 1.0e-4}}})
    assert changes == [("+sft.trainer.warmup_steps", 5), ("sft.trainer.learning_rate", 1.0e-4)]
    apply_overrides(str(tmp_path / "params.yaml"), set_flags(changes)[1::2])
    after = load_params(tmp_path / "params.yaml")
    assert after["sft"]["trainer"]["warmup_steps"] == 5 and after["sft"]["trainer"]["learning_rate"] == 1.0e-4
    assert after["sft"]["trainer"]["seed"] == 0  # the rest of the mapping stays
    ps.check_file(after)
    with pytest.raises(DataError, match="'sft.trainr'"):
        flatten(load_params(ROOT / "params.yaml"), {"sft": {"trainr": {"seed": 1}}})
