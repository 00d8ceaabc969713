import json

import pytest
import torch
from click.testing import CliRunner

from conftest import write_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [f"Why does ice float? ({i})" for i in range(6)]




class StandInScorer:
    """Same call shape as sciexplain.reward.RewardScorer: rewards answers with many distinct words."""

    def __init__(self, *args, **kwargs):
        self.calls = []
        self.truncated = 0

    def score(self, questions, answers, batch_size=8):
        self.calls.append((list(questions), list(answers), batch_size))
        return [len(set(a.split())) / 10 for a in answers]


@pytest.fixture(scope="module")
def sft_adapter(tiny_base, tmp_path_factory):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from sciexplain.models import lora_config

    torch.manual_seed(1)
    cfg = lora_config(r=8, alpha=16, dropout=0.0)
    cfg.init_lora_weights = False
    out = tmp_path_factory.mktemp("sft") / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), cfg).save_pretrained(out)
    return out


def _run(tiny_base, sft_adapter, tmp_path, scorer=None, **kw):
    from sciexplain.grpo import train_grpo

    args = dict(beta=0.1, num_generations=4, prompts_per_step=1, max_completion_length=12,
                trainer={"learning_rate": 1e-2, "lr_scheduler_type": "constant", "max_steps": 3, "seed": 0},
                score_batch_size=3, scratch_dir=tmp_path / "scratch")
    args.update(kw)
    return train_grpo(tiny_base, QUESTIONS, tmp_path / "grpo", scorer=scorer or StandInScorer(),
                     init_adapter=sft_adapter, **args)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_repetition_stats():
    from sciexplain.grpo import repetition_stats

    spam = "```\nprint(1)\n```\n```\nprint(1)\n```"
    clean = "Ice floats because it is less dense.\nIn summary, the lattice is open."
    s = repetition_stats([spam, clean])
    assert s["code_fence_share"] == 0.5
    assert s["repeated_line_share"] == pytest.approx(4 / 8)  # spam: 6 lines, 4 repeats; clean: 2 lines
    loop = repetition_stats(["the sky is blue the sky is blue the sky is blue"])
    assert loop["distinct3"] == pytest.approx(4 / 10)
    assert repetition_stats([clean]) == {"distinct3": 1.0, "code_fence_share": 0.0, "repeated_line_share": 0.0}


def test_guard_check():
    from sciexplain.grpo import GuardCallback

    g = GuardCallback(max_kl=0.2, min_distinct3=0.5, max_code_fence_share=0.3, max_repeated_line_share=None)
    assert g.check({"kl": 0.1, "repetition/distinct3": 0.9, "repetition/code_fence_share": 0.0}) is None
    assert "KL to the reference 0.25 > 0.2" in g.check({"kl": 0.25, "repetition/distinct3": 0.9})
    assert "distinct-3-gram ratio" in g.check({"kl": 0.1, "repetition/distinct3": 0.3})
    assert "code fences" in g.check({"repetition/code_fence_share": 0.75})
    assert g.check({"repetition/repeated_line_share": 1.0}) is None  # unchecked (None) and missing keys pass


def test_grpo_trains_the_sft_adapter_with_the_scorer(tiny_base, sft_adapter, tmp_path):
    scorer = StandInScorer()
    m = _run(tiny_base, sft_adapter, tmp_path, scorer=scorer, live_dir=tmp_path / "live",
             guard={"max_kl": 100.0, "min_distinct3": 0.0})
    assert m["enabled"] and m["algorithm"] == "grpo"
    assert m["steps_run"] == 3 and not m["stopped_early"] and m["stop_reason"] is None and m["policy_updates"] == 3
    assert m["kl_first"] == 0 and m["kl_final"] > 0, m  # step 1 samples from policy == reference (the SFT copy)
    assert m["reward_mean_first"] is not None and m["distinct3_last"] is not None
    assert m["completion_mean_length_first"] <= 12
    # the reward function scored (question, completion text) for every sample
    assert len(scorer.calls) == 3 and all(len(q) == len(a) == 4 and b == 3 for q, a, b in scorer.calls)
    assert all(set(q) <= set(QUESTIONS) and len(set(q)) == 1 for q, _, _ in scorer.calls)
    assert all(isinstance(x, str) for _, a, _ in scorer.calls for x in a)
    out = tmp_path / "grpo"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    new, old = _weights(out), _weights(sft_adapter)
    assert set(new) == set(old) and any(not torch.equal(new[k], old[k]) for k in new)
    assert (tmp_path / "live" / "plots" / "metrics" / "repetition" / "distinct3.tsv").exists()


def test_guard_stops_on_kl_and_restores_the_last_good_policy(tiny_base, sft_adapter, tmp_path):
    m = _run(tiny_base, sft_adapter, tmp_path, guard={"max_kl": 1e-9})
    assert m["stopped_early"] and m["steps_run"] == 2 and m["stop_step"] == 2, m
    assert m["stop_reason"].startswith("KL to the reference") and m["guard"] == {"max_kl": 1e-9}
    assert m["policy_updates"] == 0  # step 2's KL judged the policy after update 1: back to the start
    new, old = _weights(tmp_path / "grpo"), _weights(sft_adapter)
    assert all(torch.equal(new[k], old[k]) for k in new)


def test_guard_stops_on_repetition(tiny_base, sft_adapter, tmp_path):
    m = _run(tiny_base, sft_adapter, tmp_path, guard={"min_distinct3": 1.01, "restore_last_good": False})
    assert m["stopped_early"] and m["steps_run"] == 1, m
    assert "distinct-3-gram ratio" in m["stop_reason"] and m["policy_updates"] == 1


PPO_PARAMS = {"enabled": False, "beta": 0.1, "num_generations": 2,
              "prompts_per_step": 1, "max_completion_length": 8, "temperature": 1.0, "top_p": 1.0,
              "trainer": {"learning_rate": 0.01, "lr_scheduler_type": "constant", "max_steps": 2, "seed": 0},
              "score_batch_size": 4,
              "guard": {"max_kl": 10.0, "min_distinct3": None, "max_code_fence_share": 0.5,
                        "max_repeated_line_share": None, "restore_last_good": True}}


def test_grpo_stage_disabled_writes_the_disabled_outputs(workdir):
    from stages import grpo

    write_params(workdir / "params.yaml", {"grpo": PPO_PARAMS})
    r = CliRunner().invoke(grpo.main, ["--base", "nowhere", "--init-adapter", "nowhere", "--reward", "nowhere"])
    assert r.exit_code == 0, r.output
    m = json.loads((workdir / "metrics/grpo.json").read_text())
    assert m["enabled"] is False and m["steps_run"] == 0 and m["algorithm"] == "grpo"
    assert [p.name for p in (workdir / "models/grpo").iterdir()] == ["DISABLED"]
    assert "grpo.enabled" in (workdir / "models/grpo/DISABLED").read_text()
    assert (workdir / "metrics/grpo/plots/metrics").is_dir()


def _reward_metrics(workdir, cleared: bool) -> None:
    from sciexplain.rm_gate import validation_block

    block = validation_block(0.7 if cleared else 0.55, 0.6 if cleared else 0.45, 0.8 if cleared else 0.65, n=40,
                             questions=20, allow_unvalidated=False)
    (workdir / "metrics").mkdir(exist_ok=True)
    (workdir / "metrics/reward_model.json").write_text(json.dumps({"validation": block}))


def test_grpo_stage_enabled(workdir, tiny_base, sft_adapter, monkeypatch):
    import sciexplain.reward
    from stages import grpo

    monkeypatch.setattr(sciexplain.reward, "RewardScorer", StandInScorer)
    (workdir / "data/prepared").mkdir(parents=True)
    (workdir / "data/prepared/rs.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n"
                                                            for i, q in enumerate(QUESTIONS)))
    (workdir / "models/grpo").mkdir(parents=True)
    (workdir / "models/grpo/DISABLED").write_text("old")
    _reward_metrics(workdir, cleared=False)
    write_params(workdir / "params.yaml", {"grpo": dict(PPO_PARAMS, enabled=True), "reward_model": {"allow_unvalidated": False}})
    r = CliRunner().invoke(grpo.main, ["--base", str(tiny_base), "--init-adapter", str(sft_adapter),
                                      "--reward", "models/reward"])
    assert r.exit_code == 1 and "does not clear 0.5: grpo refuses to use it" in r.output, r.output
    assert (workdir / "models/grpo/DISABLED").read_text() == "old"  # nothing touched
    _reward_metrics(workdir, cleared=True)
    r = CliRunner().invoke(grpo.main, ["--base", str(tiny_base), "--init-adapter", str(sft_adapter),
                                      "--reward", "models/reward"])
    assert r.exit_code == 0, r.output
    m = json.loads((workdir / "metrics/grpo.json").read_text())
    assert m["enabled"] is True and m["steps_run"] == 2 and m["reward_model"] == "models/reward"
    assert m["guard"]["max_code_fence_share"] == 0.5
    assert sorted(p.name for p in (workdir / "models/grpo").iterdir()) == ["adapter_config.json",
                                                                          "adapter_model.safetensors"]
    assert not [p for p in (workdir / "models").iterdir() if p.name.startswith(".")]


def test_vllm_rollouts_are_off_by_default_and_map_to_grpo_config(monkeypatch):
    import importlib.util

    from sciexplain import grpo
    from sciexplain.records import UserError

    assert grpo.vllm_kwargs() == {} and grpo.vllm_kwargs(use_vllm=False, vllm_mode="server") == {}
    with pytest.raises(UserError, match="grpo.vllm_mode 'remote'"):
        grpo.vllm_kwargs(use_vllm=True, vllm_mode="remote")
    if importlib.util.find_spec("vllm") is None:  # this machine: a clear line, not TRL's ImportError mid-setup
        with pytest.raises(UserError, match="grpo.use_vllm is true but vllm is not installed: pip install -r "
                                            "requirements-gpu.txt"):
            grpo.vllm_kwargs(use_vllm=True)
    # where vLLM and a GPU exist: TRL's GRPOConfig fields
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    monkeypatch.setattr(grpo, "has_cuda", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        grpo.vllm_kwargs(use_vllm=True)
    monkeypatch.setattr(grpo, "has_cuda", lambda: True)
    assert grpo.vllm_kwargs(use_vllm=True, vllm_gpu_memory_utilization=0.4) == {
        "use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.4}
    assert grpo.vllm_kwargs(use_vllm=True, vllm_mode="server", vllm_server_base_url="http://127.0.0.1:8000") == {
        "use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://127.0.0.1:8000"}
    from trl import GRPOConfig

    fields = GRPOConfig.__dataclass_fields__
    assert {"use_vllm", "vllm_mode", "vllm_server_base_url", "vllm_gpu_memory_utilization"} <= set(fields)


def test_grpo_stage_vllm_missing_is_one_line(workdir, tiny_base, sft_adapter):
    import importlib.util

    from stages import grpo

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    (workdir / "data/prepared").mkdir(parents=True)
    (workdir / "data/prepared/rs.jsonl").write_text(json.dumps({"id": "q0", "question": QUESTIONS[0]}) + "\n")
    _reward_metrics(workdir, cleared=True)
    write_params(workdir / "params.yaml", {"grpo": dict(PPO_PARAMS, enabled=True, use_vllm=True)})
    r = CliRunner().invoke(grpo.main, ["--base", str(tiny_base), "--init-adapter", str(sft_adapter),
                                      "--reward", "nowhere"])
    assert r.exit_code == 1 and "Traceback" not in r.output and "vllm is not installed" in r.output, r.output
    assert not (workdir / "models/grpo").exists()
