"""Stage grpo: RL against the reward model with a degeneration guard (GRPO; trl 1.16 has no PPO). Off by default.

``grpo.enabled: false`` (the default, as in the study, where PPO degraded the answers): nothing is trained;
metrics/grpo.json says ``"enabled": false`` and models/grpo holds only a ``DISABLED`` note (no adapter), so the DAG
stays valid. ``true``: GRPO from the SFT adapter on the ``--prompts`` questions, reward = the reward model's score,
KL penalty ``grpo.beta`` against the SFT adapter; the guard (``grpo.guard.*``) stops the run when the KL or the
repetition of the samples crosses a threshold and puts back the last policy that passed.
See :mod:`sciexplain.grpo` for why GRPO.
"""
from pathlib import Path

import click

from sciexplain.cli import get, params_option, read_params, stage, trainer_outputs
from sciexplain.dist import is_main_process
from sciexplain.records import new_dir, read_jsonl, write_json


@click.command()
@click.option("--base", "base_dir", default="models/base", show_default=True)
@click.option("--init-adapter", default="models/sft", show_default=True, help="the SFT adapter (policy start and KL reference)")
@click.option("--reward", "reward_dir", default="models/reward", show_default=True, help="the reward model adapter")
@click.option("--reward-metrics", default="metrics/reward_model.json", show_default=True,
              help="the reward model's human-pair validation (sciexplain.rm_gate)")
@click.option("--prompts", "prompts_path", default="data/prepared/rs.jsonl", show_default=True, help="{id, question} JSONL")
@trainer_outputs("grpo")
@params_option
@stage
def main(base_dir, init_adapter, reward_dir, reward_metrics, prompts_path, out_dir, metrics_path, live_dir, scratch, params_path):

    from sciexplain import grpo

    from sciexplain import models
    p = read_params(params_path)
    models.set_compute_dtype(get(p, "model.compute_dtype"))  # bf16 or fp32, by CPU and work
    out = Path(out_dir)
    if not get(p, "grpo.enabled"):
        if not is_main_process():
            return
        from dvclive import Live

        with new_dir(out) as tmp:
            grpo.write_disabled(tmp)
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)  # keeps the declared plots valid
        live.log_metric("enabled", 0)
        live.end()
        write_json(metrics_path, grpo.disabled_metrics())
        click.echo(f"grpo: disabled (grpo.enabled: false) -> {out / grpo.DISABLED_FILE}")
        return

    from sciexplain.reward import RewardScorer
    from sciexplain.rm_gate import require_validated

    require_validated(reward_metrics, get(p, "reward_model.allow_unvalidated"), "grpo")  # RL on an unvalidated reward: no
    vllm = {"use_vllm": get(p, "grpo.use_vllm"), "vllm_mode": get(p, "grpo.vllm_mode"),
            "vllm_server_base_url": get(p, "grpo.vllm_server_base_url"),
            "vllm_gpu_memory_utilization": get(p, "grpo.vllm_gpu_memory_utilization")}
    grpo.vllm_kwargs(**vllm)  # a missing vLLM / GPU stops here, before any model is loaded
    questions = [r["question"] for r in read_jsonl(prompts_path, required=("id", "question"))]
    quantize = get(p, "model.quantize_4bit")
    scorer = RewardScorer(base_dir, reward_dir, quantize_4bit=quantize)
    guard = {"max_kl": get(p, "grpo.guard.max_kl"), "min_distinct3": get(p, "grpo.guard.min_distinct3"),
             "max_code_fence_share": get(p, "grpo.guard.max_code_fence_share"),
             "max_repeated_line_share": get(p, "grpo.guard.max_repeated_line_share"),
             "restore_last_good": get(p, "grpo.guard.restore_last_good")}
    hyper = {"beta": get(p, "grpo.beta"), "num_generations": get(p, "grpo.num_generations"),
             "prompts_per_step": get(p, "grpo.prompts_per_step"),
             "max_completion_length": get(p, "grpo.max_completion_length"),
             "temperature": get(p, "grpo.temperature"), "top_p": get(p, "grpo.top_p"),
             "trainer": get(p, "grpo.trainer"),  # trl.GRPOConfig settings (learning rate, max_steps, seed, ...)
             "score_batch_size": get(p, "grpo.score_batch_size"), "quantize_4bit": quantize}
    # every rank trains and takes part in the save (sciexplain.dist.save_adapter); only the main process writes
    metrics = grpo.train_grpo(base_dir, questions, out, scorer=scorer, init_adapter=init_adapter, guard=guard,
                            scratch_dir=scratch, live_dir=live_dir, vllm=vllm, **hyper)
    if not is_main_process():
        return
    metrics["reward_model"] = str(reward_dir)
    metrics["reward_truncated_answers"] = getattr(scorer, "truncated", None)
    write_json(metrics_path, {**metrics, **models.run_facts("policy")})
    stop = f"stopped at step {metrics['stop_step']}: {metrics['stop_reason']}" if metrics["stopped_early"] else "no stop"
    click.echo(f"grpo ({metrics['algorithm']}): {metrics['steps_run']} steps, reward {metrics['reward_mean_first']} -> "
               f"{metrics['reward_mean_last']}, KL {metrics['kl_final']}, {stop} -> {out}")


if __name__ == "__main__":
    main()
