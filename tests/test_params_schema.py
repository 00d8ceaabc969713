"""params.yaml has a typed schema (sciexplain/params_schema.py): bad values stop a stage at its start with one line
naming the file, the key path, what is allowed and what was given."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

from sciexplain import params_schema as ps
from sciexplain.cli import read_params
from sciexplain.records import DataError, UserError

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
BAD_DIR = ROOT / "tests" / "data" / "bad" / "params"
DELETE = object()


def _set(params: dict, dotted: str, value) -> dict:
    """A copy of ``params`` with ``dotted`` (``a.b.0.c``: list items by index) set to ``value`` (or deleted)."""
    out = copy.deepcopy(params)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _error(params: dict, stage=None, where="params.yaml") -> str:
    with pytest.raises(ps.ParamsError) as e:
        if stage is None:
            ps.check_file(params, where)
        else:
            ps.check_stage(params, stage, where)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- good files

def test_params_yaml_is_valid():
    assert ps.check_file(PARAMS) is PARAMS
    assert ps.problems(PARAMS) == []


def test_study_overlay_applied_the_dvc_way_is_valid():
    from sciexplain.overlay import flatten

    overlay = yaml.safe_load((ROOT / "configs" / "study.yaml").read_text())
    params = copy.deepcopy(PARAMS)
    for dotted, value in flatten(params, overlay):  # what `dvc exp run -S key=value` sets, key by key
        params = _set(params, dotted, value)
    assert params["teacher"]["backend"] == "batch-export" and params["prepare"]["splits"]["eval"] == 100
    assert ps.problems(params) == []
    # and merged as a plain overlay (python -m sciexplain.params_schema configs/study.yaml --onto params.yaml)
    assert ps.problems(ps.merge(PARAMS, overlay)) == []


def test_tiny_repro_params_are_valid():
    tiny = yaml.safe_load((ROOT / "tests" / "fixtures" / "tiny_params.yaml").read_text())
    assert ps.problems(ps.merge(PARAMS, tiny)) == []


def test_every_key_dvc_yaml_declares_is_in_the_schema():
    stages = ps._stages(str(ROOT / "dvc.yaml"))
    assert {"teacher", "prepare", "answer", "compare", "sft", "rs", "score_eval", "report"} <= set(stages)
    for name, spec in stages.items():
        for key in spec["params"] or []:
            model = ps.SECTIONS.get(key.split(".")[0])
            assert model is not None, f"{name}: {key}"
            for part in key.split(".")[1:]:
                assert model is not None and part in model.model_fields, f"stage {name}: {key} not in the schema"
                model = ps._inner_model(model.model_fields[part].annotation)


def test_optional_repetition_penalty_defaults_to_off():
    for section in ("teacher", "generate", "sample"):
        params = _set(PARAMS, f"{section}.repetition_penalty", DELETE) \
            if "repetition_penalty" in PARAMS[section] else PARAMS
        assert ps.problems(params) == []
        model = ps.SECTIONS[section].model_validate(params[section])
        assert model.repetition_penalty == 1.0
        assert ps.problems(_set(PARAMS, f"{section}.repetition_penalty", 1.3)) == []


# --------------------------------------------------------------------------- bad values, one line each

BAD = [
    # (dotted key to set, value, key path the message names, a fragment of the message)
    ("prepare.min_question_tokens", "4", "prepare.min_question_tokens", "expected an integer >= 0, got '4'"),
    ("prepare.sources.0", {"type": "bank", "path": "data/raw/questions.jsonl", "min_score": 2},
     "prepare.sources[0].min_score", "unknown key; allowed: type, path"),
    ("prepare.sources.0", {"type": "qa", "path": "x.csv", "question_field": 3},
     "prepare.sources[0].question_field", "got 3"),
    ("prepare.sources.0", {"type": "forum", "path": "x.csv"}, "prepare.sources[0].type",
     "expected one of bank, stackexchange, qa, got 'forum'"),
    ("prepare.sources", [], "prepare.sources", "non-empty list"),
    ("prepare.splits.rs", DELETE, "prepare.splits.rs", "missing; expected an integer >= 1"),
    ("prepare.splits.test", 3, "prepare.splits.test", "unknown key; allowed: sft, rm, rs, eval"),
    ("prepare.min_question_tokens", 100, "prepare.min_question_tokens", "at most max_question_tokens (96)"),
    ("teacher.temperature", "hot", "teacher.temperature", "expected a number >= 0, got 'hot'"),
    ("teacher.temperature", float("nan"), "teacher.temperature", "got nan"),
    ("teacher.min_words", "30", "teacher.min_words", "expected an integer >= 0, got '30'"),
    ("teacher.unfinished", "keep", "teacher.unfinished", "expected one of trim, drop, got 'keep'"),
    ("teacher.few_shot", -1, "teacher.few_shot", "expected an integer >= 0, got -1"),
    ("teacher.plan", "long", "teacher.plan", "one of full, short, none"),
    ("teacher.backend", "hf", "teacher.backend", "one of llamacpp, local, vllm, openai, batch-export, batch-import"),
    ("teacher.backend", "batch-export", "teacher.batch_file", "needs a Batch API file"),
    ("teacher.splits", ["sft", "train"], "teacher.splits", "(sft, rm, rs, eval)"),
    ("teacher.seed", True, "teacher.seed", "got true"),
    ("teacher.repetition_penalty", 0.5, "teacher.repetition_penalty", "expected a number >= 1.0, got 0.5"),
    ("generate.repetition_penalty", "1.2", "generate.repetition_penalty", "got '1.2'"),
    ("sample.repetition_penalty", 0.9, "sample.repetition_penalty", ">= 1.0"),
    ("sample.top_p", 0, "sample.top_p", "expected a number in (0, 1], got 0"),
    ("sample.n", 0, "sample.n", "an integer >= 1"),
    ("select.threshold", "high", "select.threshold", "expected a number or null, got 'high'"),
    ("select.require_finished", "no", "select.require_finished", "expected true or false, got 'no'"),
    ("select.threshold", 0.5, "select.quantile", "not both"),
    ("judge.panel.0.type", "oracle", "judge.panel[0].type", "expected one of rubric, llm, got 'oracle'"),
    ("judge.panel", [{"name": "rubric", "type": "rubric"}, {"name": "gpt", "type": "llm", "backend": "openai"}],
     "judge.panel[1].model", "missing"),
    ("judge.panel", [{"name": "r", "type": "rubric"}, {"name": "r", "type": "rubric"}], "judge.panel[1].name",
     "duplicate judge name 'r'"),
    ("judge.panel", [{"name": "l", "type": "llm", "backend": "local", "model": "gpt"}], "judge.panel[0].model",
     "unknown key"),
    ("judge.panel", [{"name": "l", "type": "llm", "backend": "tgi"}], "judge.panel[0].backend",
     "one of local, vllm, openai"),
    ("judge.panel.0.params", {"t_unsure": 0.2, "t_slight": 0.1}, "judge.panel[0].params.t_slight",
     "t_unsure <= t_slight"),
    ("judge.panel", "rubric", "judge.panel", "a list of judge specs"),
    ("validate.sources.0.type", "xml", "validate.sources[0].type", "one of pairs, stackexchange"),
    ("validate.sources.0", {"type": "pairs", "path": "p.jsonl", "min_score_gap": 3},
     "validate.sources[0].min_score_gap", "unknown key; allowed: type, path"),
    ("validate.test_fraction", 1.0, "validate.test_fraction", "in (0, 1)"),
    ("validate.bootstrap", 0, "validate.bootstrap", ">= 1"),
    ("dpo.loss_type", ["sigmoid", "sigmod"], "dpo.loss_type", "or a non-empty list of them"),
    ("dpo.beta", 0, "dpo.beta", "> 0"),
    ("model.quantize_4bit", "yes", "model.quantize_4bit", "one of auto, true, false, got 'yes'"),
    ("engine.backend", "tgi", "engine.backend", "one of local, vllm, openai"),
    ("engine.served_names", {"sft": 3}, "engine.served_names", "model name -> served name"),
    ("vllm.gpu_memory_utilization", 1.5, "vllm.gpu_memory_utilization", "in (0, 1]"),
    ("vllm.enforce_eager", "false", "vllm.enforce_eager", "true or false"),
    ("grpo.guard.max_kl", "0.2", "grpo.guard.max_kl", "a number > 0 or null, got '0.2'"),
    ("grpo.guard.max_kll", 0.3, "grpo.guard.max_kll", "unknown key; allowed: max_kl, min_distinct3"),
    ("grpo.vllm_mode", "remote", "grpo.vllm_mode", "one of colocate, server"),
    ("grpo.num_generations", 1, "grpo.num_generations", ">= 2"),
    ("reward_model.lora.layers", 0, "reward_model.lora.layers", "an integer >= 1 or null, got 0"),
    ("reward_model.unsure", "sometimes", "reward_model.unsure", "one of drop, keep"),
    ("reward_model.allow_unvalidated", "yes", "reward_model.allow_unvalidated", "true or false"),
    ("reward_model.rubric", {"t_better": 2}, "reward_model.rubric.t_better", "in [0, 1], got 2"),
    ("reward_model.sources", ["base-sft"], "reward_model.sources", "'x_vs_y'"),
    ("sft.lora.target_modules", [], "sft.lora.target_modules", "a list of module names"),
    ("sft.trainer.learning_rate", "5e-5", "sft.trainer.learning_rate", "expected a number > 0, got '5e-5'"),
    ("sft.trainer.learnin_rate", 1.0e-4, "sft.trainer.learnin_rate",
     "unknown setting of trl.SFTConfig; did you mean learning_rate?"),
    ("sft.trainer.seed", DELETE, "sft.trainer.seed", "missing; expected an integer >= 0"),
    ("sft.trainer.output_dir", "out", "sft.trainer.output_dir", "set by the code, not by params: the stage's --scratch"),
    ("sft.trainer", 3, "sft.trainer", "expected a mapping with keys learning_rate"),
    ("dpo.trainer.beta", 0.2, "dpo.trainer.beta", "not a trainer setting here: set dpo.beta"),
    ("dpo.trainer.bf16", True, "dpo.trainer.bf16", "bf16 where the CUDA GPU supports it"),
    ("grpo.trainer.per_device_train_batch_size", 8, "grpo.trainer.per_device_train_batch_size",
     "grpo.prompts_per_step x grpo.num_generations"),
    ("grpo.trainer.num_genrations", 8, "grpo.trainer.num_genrations", "unknown setting of trl.GRPOConfig"),
    ("dpo.trainer.train_sampling_strategy", "group_by_length", "dpo.trainer.train_sampling_strategy",
     "length-grouped sampling does not work for this trainer: DPOTrainer's rows have no input_ids"),
    ("reward_model.trainer.eval_strategy", "steps", "reward_model.trainer.eval_strategy", "best-dev-epoch selection"),
    ("reward_model.trainer.max_length", DELETE, "reward_model.trainer.max_length", "missing; expected an integer >= 1"),
    ("reward_model.trainer.center_rewards_coefficient", 0.1, "reward_model.trainer.center_rewards_coefficient",
     "set reward_model.center_rewards_coefficient"),
    ("sft.data", "teachers", "sft.data", "one of teacher, forum or a .jsonl file"),
    ("sft.val_fraction", 1, "sft.val_fraction", "in [0, 1)"),
    ("rs.trainer.num_train_epochs", 0, "rs.trainer.num_train_epochs", "expected a number > 0, got 0"),
    ("rs.trainer.per_device_train_batch_size", 2.0, "rs.trainer.per_device_train_batch_size", "an integer >= 1"),
    ("compare.pairs", ["base_vs_sft"], "compare.pairs", "a non-empty mapping like {sft_vs_base: [sft, base]}"),
    ("compare.pairs", {"base_sft": ["base", "sft"]}, "compare.pairs.base_sft", "x_vs_y"),
    ("compare.pairs", {"rs_vs_base": ["base", "rs"]}, "compare.pairs.rs_vs_base", "the pair's two models ['rs', 'base']"),
    ("answer.models.sft.adapter", "models/rs", "answer.models.sft.adapter", "expected models/sft"),
    ("answer.models.sft.splits", ["train"], "answer.models.sft.splits", "a non-empty list of splits"),
    ("evaluate.models", [], "evaluate.models", "non-empty list"),
    ("score.batch_size", 0, "score.batch_size", ">= 1"),
    ("base_model.source", "", "base_model.source", "got ''"),
    ("train.launcher", None, "train.launcher", "got null"),
    ("teachr", {"temperature": 0.5}, "teachr", "unknown section"),
    ("teacher", "x", "teacher", "expected a mapping with keys backend, model"),
]


def _stage_for(path: str) -> str | None:
    """The first dvc.yaml stage that declares ``path`` (or its section), if any."""
    for name, spec in ps._stages(str(ROOT / "dvc.yaml")).items():
        if spec["params"] and ps._covered(path, spec["params"]) and path.split(".")[0].split("[")[0] in \
                {k.split(".")[0] for k in spec["params"]}:
            return name
    return None


@pytest.mark.parametrize("key, value, path, fragment", BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_bad_value_is_one_line_naming_the_key(key, value, path, fragment):
    params = _set(PARAMS, key, value)
    msg = _error(params)
    assert msg.startswith(f"params.yaml: {path}: "), msg
    assert fragment in msg, msg
    stage = _stage_for(path)
    if stage is not None:  # the stage that declares the key stops on it too
        assert _error(params, stage).startswith(f"params.yaml: {path}: ")


def test_the_table_is_big_enough_and_covers_the_issue():
    assert len(BAD) >= 25
    keys = {(k, repr(v)) for k, v, _, _ in BAD}
    for case in [("prepare.min_question_tokens", "'4'"), ("teacher.temperature", "'hot'"),
                 ("select.threshold", "'high'"), ("teacher.min_words", "'30'"), ("teacher.unfinished", "'keep'"),
                 ("teacher.few_shot", "-1"), ("select.require_finished", "'no'")]:
        assert case in keys, case
    assert any(k == "prepare.splits.rs" and v is DELETE for k, v, _, _ in BAD)


def test_several_bad_values_name_the_first_and_count_the_rest():
    params = _set(_set(_set(PARAMS, "teacher.temperature", "hot"), "teacher.top_p", 2), "select.min_gap", "x")
    msg = _error(params)
    assert msg.startswith("params.yaml: teacher.temperature: ") and "(and 2 more: teacher.top_p, select.min_gap)" in msg


def test_a_value_that_is_not_yaml_mapping_is_one_line():
    assert _error([1, 2]).startswith("params.yaml: <file>: expected a mapping of sections")


# --------------------------------------------------------------------------- the bad-input corpus

def _corpus() -> list[Path]:
    return sorted(BAD_DIR.glob("*.yaml"))


def _header(path: Path) -> dict:
    head = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line[1:].strip().partition(":")
        if key.strip() in ("expect", "stage"):
            head[key.strip()] = value.strip()
    return head


def test_corpus_is_documented_and_big_enough():
    files = _corpus()
    assert len(files) >= 12
    assert (BAD_DIR / "README.md").exists()
    for f in files:
        assert "expect" in _header(f), f"{f.name}: no '# expect: <key>' line"


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.stem)
def test_bad_params_corpus(path):
    head = _header(path)
    data = yaml.safe_load(path.read_text())
    if "stage" in head:
        msg = _error(data, head["stage"], where=path.name)
    else:
        msg = _error(ps.merge(PARAMS, data), where=path.name)
    assert f"{path.name}: {head['expect']}: " in msg, msg


def test_corpus_from_the_command_line():
    bad = BAD_DIR / "teacher_temperature_word.yaml"
    r = subprocess.run([sys.executable, "-m", "sciexplain.params_schema", str(bad), "--onto", "params.yaml"],
                       cwd=ROOT, capture_output=True, text=True, env=_env())
    assert r.returncode == 1 and r.stdout == "", r
    assert r.stderr.strip().splitlines() == [
        f"Error: params.yaml + {bad}: teacher.temperature: expected a number >= 0, got 'hot'"]
    r = subprocess.run([sys.executable, "-m", "sciexplain.params_schema", str(BAD_DIR / "prepare_splits_missing_rs.yaml"),
                        "--stage", "prepare"], cwd=ROOT, capture_output=True, text=True, env=_env())
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "prepare.splits.rs: missing" in r.stderr
    r = subprocess.run([sys.executable, "-m", "sciexplain.params_schema"], cwd=ROOT, capture_output=True, text=True,
                       env=_env())
    assert r.returncode == 0 and r.stdout.strip() == "params.yaml: ok", r


# --------------------------------------------------------------------------- what a stage checks

def test_a_stage_checks_only_the_sections_it_declares():
    bad_teacher = _set(PARAMS, "teacher.temperature", "hot")
    assert ps.check_stage(bad_teacher, "compare") is bad_teacher  # compare does not read teacher
    assert "teacher.temperature" in _error(bad_teacher, "teacher")
    assert "teacher.temperature" in _error(bad_teacher, "report")  # report declares the whole teacher section


def test_a_partial_params_file_drives_one_stage():
    only = {"compare": {"pairs": {"base_vs_sft": ["base", "sft"]}, "seed": 0}, "evaluate": {"max_questions": None}}
    assert ps.check_stage(only, "compare") is only
    assert _error(only, "teacher").startswith("params.yaml: model: missing")
    # score_samples declares reward_model.allow_unvalidated alone: the rest of reward_model may be absent ...
    score = {"model": {"quantize_4bit": "auto"}, "score": {"batch_size": 8}, "reward_model": {"allow_unvalidated": True}}
    assert ps.check_stage(score, "score_samples") is score
    # ... but what is present is checked, and a declared key may not be missing
    assert "reward_model.unsure: expected one of drop, keep" in _error(
        _set(score, "reward_model.unsure", "sometimes"), "score_samples")
    assert _error(_set(score, "reward_model.allow_unvalidated", DELETE), "score_samples").startswith(
        "params.yaml: reward_model.allow_unvalidated: missing; expected true or false")
    # a stage that declares a whole section needs all of it
    assert "teacher.min_words: missing" in _error(_set(PARAMS, "teacher.min_words", DELETE), "report")


def test_stage_names_and_modules(tmp_path):
    dvc = ROOT / "dvc.yaml"
    assert ps.declared_keys("answer@sft", dvc)[0] == "answer.models"  # answer.models.${key}: its section's key
    assert ps.declared_keys("winrate", dvc) == []

    # foreach / matrix stages (name@key) and the `- params.yaml: [...]` form
    other = tmp_path / "dvc.yaml"
    other.write_text(yaml.safe_dump({"stages": {
        "answer": {"foreach": ["base", "sft"], "do": {"cmd": "python -m stages.answer --model-name ${item}",
                                                      "params": ["generate.seed", "engine.backend"]}},
        "train": {"matrix": {"section": ["sft", "rs"]}, "cmd": "python -m stages.sft --section ${item.section}",
                  "params": [{"params.yaml": ["sft.trainer", "rs.trainer"]}]},
        "everything": {"cmd": "python -m stages.evaluate", "params": [{"params.yaml": None}]},
    }}))
    ps._stages.cache_clear()
    assert ps.declared_keys("answer@base", other) == ["generate.seed", "engine.backend"]
    assert ps.declared_keys("train@sft", other) == ["sft.trainer", "rs.trainer"]
    assert ps.declared_keys("everything", other) is None
    bad = _set(PARAMS, "generate.seed", -1)
    with pytest.raises(ps.ParamsError, match=r"generate\.seed: expected an integer >= 0, got -1"):
        ps.check_stage(bad, "answer@sft", dvc_path=other)
    with pytest.raises(ps.ParamsError, match=r"params\.yaml: train: missing"):  # the whole file: train is required
        ps.check_stage({k: v for k, v in PARAMS.items() if k != "train"}, "everything", dvc_path=other)
    with pytest.raises(KeyError):
        ps.declared_keys("nope", other)


def test_read_params_checks_the_stage_it_is_told(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(_set(PARAMS, "teacher.temperature", "hot")))
    assert read_params(str(f), "compare").compare.pairs == PARAMS["compare"]["pairs"]  # compare does not read teacher
    with pytest.raises(ps.ParamsError, match=r"^.*params\.yaml: teacher\.temperature: expected a number >= 0, got 'hot'$"):
        read_params(str(f), "teacher")
    with pytest.raises(ps.ParamsError, match="teacher.temperature"):  # no stage named: the whole file
        read_params(str(f))
    with pytest.raises(ps.ParamsError, match="teacher.temperature"):
        read_params(str(f), ["compare", "teacher"])
    with pytest.raises(UserError, match="no stage 'nope'"):
        read_params(str(f), "nope")
    p = read_params(str(f), "compare")
    with pytest.raises(ps.ParamsError, match="teacher.temperature"):  # an undeclared section is checked when read
        p.teacher
    with pytest.raises(Exception, match="frozen|read-only"):
        p.compare.seed = 3
    with pytest.raises(TypeError, match="read-only"):
        p.compare = None


def _defaulted_keys(model, data, prefix):
    """Every key present in ``data`` whose field in ``model`` has a default (recursing into sub-sections)."""
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        if not field.is_required():
            yield f"{prefix}.{name}", field.get_default(call_default_factory=True)
        sub = ps._inner_model(field.annotation)
        if sub is not None and isinstance(data[name], dict) and issubclass(sub, ps.Section):
            yield from _defaulted_keys(sub, data[name], f"{prefix}.{name}")


def test_deleting_a_defaulted_key_runs_with_its_default(tmp_path):
    """A key left out of params.yaml reads as the schema's default (the schema's defaults are applied)."""
    keys = [(k, d) for section, model in ps.SECTIONS.items() if section in PARAMS
            for k, d in _defaulted_keys(model, PARAMS[section], section)]
    assert len(keys) >= 10 and ("teacher.repetition_penalty", 1.0) in keys, keys
    for key, default in keys:
        f = tmp_path / "params.yaml"
        f.write_text(yaml.safe_dump(_set(PARAMS, key, DELETE)))
        node = read_params(str(f))
        for part in key.split("."):
            node = getattr(node, part)
        assert node == default, key


# --------------------------------------------------------------------------- stages stop before any work

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run_stage(tmp_path: Path, module: str, params: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, "-m", module, "--params", "bad.yaml", *args], cwd=tmp_path,
                          capture_output=True, text=True, env=_env(), timeout=300)


def test_prepare_stage_exits_1_with_one_line_and_writes_nothing(tmp_path):
    r = _run_stage(tmp_path, "stages.prepare", _set(PARAMS, "prepare.min_question_tokens", "4"),
                   "--base", str(ROOT / "models" / "base"), "--out", "data/prepared", "--metrics", "metrics/prepare.json")
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 1, r
    assert out == ["Error: bad.yaml: prepare.min_question_tokens: expected an integer >= 0, got '4'"], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_teacher_stage_stops_before_generating(tmp_path):
    r = _run_stage(tmp_path, "stages.teacher", _set(PARAMS, "teacher.min_words", "30"),
                   "--base", "no-model-here", "--out", "gen/teacher", "--cache", "cache/t.jsonl",
                   "--metrics", "metrics/teacher.json")
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 1 and out == ["Error: bad.yaml: teacher.min_words: expected an integer >= 0, got '30'"], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_the_rs_round_of_stages_sft_checks_the_rs_section(tmp_path):
    r = _run_stage(tmp_path, "stages.sft", _set(PARAMS, "rs.trainer.learning_rate", "1e-4"), "--section", "rs",
                   "--base", "no-model-here", "--data", "none.jsonl", "--out", "models/rs", "--metrics", "m.json",
                   "--live", "live", "--scratch", "scratch")
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 1 and out == ["Error: bad.yaml: rs.trainer.learning_rate: expected a number > 0, got '1e-4'"], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


# --------------------------------------------------------------------------- fixed where the value is used

def test_few_shot_count_is_checked_where_the_examples_are_read():
    from sciexplain.prompts import load_few_shot

    n = len(load_few_shot(ROOT / "prompts", None, "none"))
    assert len(load_few_shot(ROOT / "prompts", n, "none")) == n
    assert load_few_shot(ROOT / "prompts", 0, "none") == []
    for k in (-1, n + 1, "2", True):
        with pytest.raises(DataError, match=r"teacher\.few_shot.*expected an integer in \[0, %d\]" % n):
            load_few_shot(ROOT / "prompts", k, "none")


def test_select_refuses_values_with_another_meaning():
    from sciexplain.selection import select

    rows = [{"id": "q", "question": "q?", "answer": f"a{i}", "reward": float(i), "sample": i, "finished": i == 0}
            for i in range(2)]
    assert select(rows, require_finished=True, min_gap=0.0)["selected"][0]["answer"] == "a0"
    for kwargs, key in (({"require_finished": "no"}, "select.require_finished"),
                        ({"threshold": "high"}, "select.threshold"), ({"min_gap": "0.1"}, "select.min_gap")):
        with pytest.raises(DataError, match=key.replace(".", r"\.")):
            select(rows, **kwargs)


def test_batch_backends_refuse_a_repetition_penalty_before_any_work():
    """The Batch API has no such field: the schema says so at the stage's start, not after an export."""
    bad = _set(_set(_set(PARAMS, "teacher.backend", "batch-export"), "teacher.batch_file", "b.jsonl"),
               "teacher.repetition_penalty", 1.1)
    msg = _error(bad, stage="teacher")
    assert msg.startswith("params.yaml: teacher.repetition_penalty: ") and "expected 1.0, got 1.1" in msg
    ps.check_stage(_set(bad, "teacher.repetition_penalty", 1.0), "teacher", "params.yaml")


# --------------------------------------------------------------------------- trainer: TRL config pass-through

def test_trl_fields_json_matches_the_installed_trl():
    """trl_fields.json (what the stage-start check reads instead of importing TRL) is the real dataclass fields
    (refresh: python -m sciexplain.trainer_config --write)."""
    from sciexplain.trainer_config import recorded_fields

    assert json.loads(ps.TRL_FIELDS_FILE.read_text()) == recorded_fields()
    assert ps._recorded_fields() is not None  # recorded for the installed versions: checked at stage start
    assert "learning_rate" in ps._recorded_fields()["SFTConfig"] and "beta" in ps._recorded_fields()["DPOConfig"]


def test_every_owned_trainer_setting_is_a_field_of_its_config():
    """A refusal names a real setting (a renamed TRL field would otherwise be refused for the wrong reason)."""
    fields = ps._recorded_fields()
    for section, cls in ps.TRAINER_CONFIGS.items():
        owned = set(ps.CODE_OWNED) | set(ps.SECTION_OWNED.get(section, {}))
        assert owned <= fields[cls], (section, owned - fields[cls])


def test_the_schema_check_does_not_import_trl():
    code = ("import sys, yaml; from sciexplain import params_schema as ps; "
            "ps.check_file(yaml.safe_load(open('params.yaml'))); "
            "assert ps._recorded_fields() is not None; "
            "print(sorted(m for m in ('trl', 'transformers', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and r.stdout.strip() == "[]", r


def test_any_trl_setting_reaches_the_built_config():
    """A setting params.yaml does not list (lr_scheduler_type, warmup_steps, weight_decay, ...) passes straight into
    trl.SFTConfig / DPOConfig / RewardConfig / GRPOConfig; the code-owned ones stay the code's."""
    from sciexplain.dpo import dpo_config
    from sciexplain.grpo import grpo_config
    from sciexplain.reward_train import reward_config
    from sciexplain.sft import sft_config

    params = _set(_set(PARAMS, "rs.trainer.lr_scheduler_type", "constant_with_warmup"), "rs.trainer.warmup_steps", 3)
    params = _set(params, "rs.trainer.train_sampling_strategy", "group_by_length")
    assert ps.problems(params) == []
    cfg = sft_config(params["rs"]["trainer"], "scratch/x", section="rs")
    assert cfg.lr_scheduler_type == "constant_with_warmup" and cfg.warmup_steps == 3
    assert cfg.train_sampling_strategy == "group_by_length"
    assert cfg.learning_rate == 1e-4 and cfg.num_train_epochs == 1 and cfg.max_length == 448
    assert cfg.seed == cfg.data_seed == 0 and cfg.per_device_eval_batch_size == 4  # derived where not set
    assert cfg.output_dir == "scratch/x" and cfg.report_to in ([], "none", ["none"]) and cfg.use_cpu
    assert cfg.completion_only_loss is True and cfg.logging_steps == 1  # code defaults
    assert sft_config({**params["rs"]["trainer"], "logging_steps": 5}, "s", section="rs").logging_steps == 5
    d = dpo_config({**PARAMS["dpo"]["trainer"], "weight_decay": 0.01}, "s", beta=0.2, loss_type="ipo", evaluate=False)
    assert d.weight_decay == 0.01 and d.beta == 0.2 and d.loss_type == ["ipo"] and d.eval_strategy == "no"
    r = reward_config({**PARAMS["reward_model"]["trainer"], "max_grad_norm": 0.5}, "s", select_best=True)
    assert r.max_grad_norm == 0.5 and r.load_best_model_at_end and r.eval_strategy == "epoch"
    g = grpo_config({**PARAMS["grpo"]["trainer"], "scale_rewards": "batch"}, "s", beta=0.05, num_generations=4,
                    prompts_per_step=2, max_completion_length=16, temperature=1.0, top_p=1.0)
    assert g.scale_rewards == "batch" and g.per_device_train_batch_size == 8 and g.max_steps == 8


def test_a_trainer_typo_stops_where_the_config_is_built_too():
    """Without the recorded list (other TRL versions) the same one line comes from the real dataclass fields,
    before any model loads; TRL's own refusal of a value is one line naming the subsection."""
    from sciexplain.sft import sft_config

    with pytest.raises(ps.ParamsError, match=r"^params.yaml: sft.trainer.learnin_rate: unknown setting of "
                                             r"trl.SFTConfig; did you mean learning_rate\?$"):
        sft_config({"learnin_rate": 1e-4, "seed": 0}, "s")
    with pytest.raises(ps.ParamsError, match=r"^params.yaml: rs.trainer.use_cpu: set by the code"):
        sft_config({"use_cpu": False, "seed": 0}, "s", section="rs")
    with pytest.raises(ps.ParamsError, match=r"^params.yaml: sft.trainer: trl.SFTConfig refused the settings: "):
        sft_config({"lr_scheduler_type": "sometimes", "seed": 0}, "s")


def test_a_stage_stops_on_a_trainer_typo_before_loading_a_model(tmp_path):
    r = _run_stage(tmp_path, "stages.sft", _set(PARAMS, "sft.trainer.num_train_epoch", 3), "--section", "sft",
                   "--base", "no-model-here", "--out", "models/sft", "--metrics", "m.json", "--live", "live",
                   "--scratch", "scratch")
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 1 and out == ["Error: bad.yaml: sft.trainer.num_train_epoch: unknown setting of "
                                         "trl.SFTConfig; did you mean num_train_epochs?"], out
