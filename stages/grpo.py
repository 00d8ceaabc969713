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

from sciexplain.cli import params_option, read_params, stage, trainer_outputs
from sciexplain.dist import is_main_process
from sciexplain.records import read_jsonl, write_json


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
    from sciexplain import grpo, models

    p = read_params(params_path, "grpo")
    models.set_compute_dtype(p.model.compute_dtype)  # bf16 or fp32, by CPU and work
    g, out = p.grpo, Path(out_dir)
    if not g.enabled:
        if is_main_process():
            grpo.write_disabled_outputs(out, live_dir, metrics_path)
            click.echo(f"grpo: disabled (grpo.enabled: false) -> {out / grpo.DISABLED_FILE}")
        return

    from sciexplain.reward import RewardScorer
    from sciexplain.rm_gate import require_validated

    require_validated(reward_metrics, p.reward_model.allow_unvalidated, "grpo")  # RL on an unvalidated reward: no
    vllm = {"use_vllm": g.use_vllm, "vllm_mode": g.vllm_mode, "vllm_server_base_url": g.vllm_server_base_url,
            "vllm_gpu_memory_utilization": g.vllm_gpu_memory_utilization}
    grpo.vllm_kwargs(**vllm)  # a missing vLLM / GPU stops here, before any model is loaded
    questions = [r["question"] for r in read_jsonl(prompts_path, required=("id", "question"))]
    quantize = p.model.quantize_4bit
    scorer = RewardScorer(base_dir, reward_dir, quantize_4bit=quantize)
    hyper = {"beta": g.beta, "num_generations": g.num_generations, "prompts_per_step": g.prompts_per_step,
             "max_completion_length": g.max_completion_length, "temperature": g.temperature, "top_p": g.top_p,
             "trainer": g.trainer.config_kwargs(),  # trl.GRPOConfig settings (learning rate, max_steps, seed, ...)
             "score_batch_size": g.score_batch_size, "quantize_4bit": quantize}
    # every rank trains and takes part in the save (sciexplain.dist.save_adapter); only the main process writes
    metrics = grpo.train_grpo(base_dir, questions, out, scorer=scorer, init_adapter=init_adapter, guard=g.guard.model_dump(),
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
