"""RL against the reward model (the study's PPO step), with a guard that stops a degrading run. Off by default.

Algorithm: GRPO (TRL's ``GRPOTrainer``), not PPO. trl 1.16 ships no PPO (``trl.experimental.ppo`` does not exist);
PPO would also need a value model and the reward model as bare ``nn.Module``s, i.e. a third copy of the network and
a merged reward head, which is impractical on a 2-core CPU. GRPO needs neither: the baseline is the mean reward of
``num_generations`` samples of the same question, and the reward is a plain function that calls
:class:`sciexplain.reward.RewardScorer` on (question, completion), so the reward model is scored exactly as it was
trained (chat prompt + answer + end-of-turn). The KL penalty ``beta`` (> 0) is taken against a frozen copy of the
starting SFT adapter: with a trainable ``PeftModel`` and no ``peft_config``, GRPOTrainer adds an adapter ``"ref"``
holding a copy of ``"default"`` (trl 1.16 ``GRPOTrainer.__init__``). With ``beta = 0`` there is no reference and no
KL is logged (the KL guard is then inert).

Guard (:class:`GuardCallback`): the study's PPO degraded the answers and StackLLaMA's policy learned to spam code
fences, so every step's sampled completions are measured (:func:`repetition_stats`, logged as ``repetition/*``) and
the run stops at the first step whose KL or repetition crosses a threshold. The numbers logged at step t describe the
policy that *sampled* step t (the one before that step's update); on a stop the guard puts back the last policy that
passed (``restore_last_good``), or the starting adapter when the first step already fails.

Rollouts: by default GRPOTrainer samples with ``model.generate`` (transformers). With ``vllm={"use_vllm": True, ...}``
(params ``grpo.use_vllm``, ``grpo.vllm_mode``, ...) TRL 1.16 samples on vLLM instead: ``colocate`` runs a vLLM engine
inside each training process (sharing the GPU, ``vllm_gpu_memory_utilization``), ``server`` talks to
``trl vllm-serve`` at ``vllm_server_base_url``; TRL merges the LoRA weights into the engine after each update.
vLLM is an optional GPU dependency: asking for it without it installed (or without CUDA) stops with one line.

Under ``accelerate launch`` every rank trains and saves through ``trainer.save_model()``
(:func:`sciexplain.dist.save_adapter`); only the main process writes files.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from statistics import mean

from transformers import TrainerCallback

from . import trainer_config
from .dist import save_adapter
from .models import count_parameters, has_cuda, keep_adapter_in_compute_dtype, load_tokenizer, load_trainable_adapter
from .prompts import student_messages

log = logging.getLogger(__name__)

ALGORITHM = "grpo"
DISABLED_FILE = "DISABLED"
DISABLED_TEXT = ("RL fine-tuning (stage grpo) is disabled: grpo.enabled is false in params.yaml, so no policy was trained.\n"
                 "Set grpo.enabled: true and run `dvc repro grpo` to train a GRPO policy here.\n")


# --------------------------------------------------------------------------- measuring the samples

def repetition_stats(texts: list[str]) -> dict:
    """Degeneration signals of sampled answers.

    ``distinct3``: mean over answers (of >= 3 words) of unique / total word 3-grams (1.0 = no repeats);
    ``code_fence_share``: share of answers containing a ``` fence; ``repeated_line_share``: share of the non-empty
    lines that repeat an earlier line of the same answer.
    """
    d3, fences, lines, repeated = [], 0, 0, 0
    for t in texts:
        words = t.split()
        grams = list(zip(words, words[1:], words[2:]))
        if grams:
            d3.append(len(set(grams)) / len(grams))
        fences += "```" in t
        seen: set[str] = set()
        for line in (x.strip() for x in t.splitlines()):
            if line:
                lines += 1
                repeated += line in seen
                seen.add(line)
    return {"distinct3": mean(d3) if d3 else 1.0,
            "code_fence_share": fences / len(texts) if texts else 0.0,
            "repeated_line_share": repeated / lines if lines else 0.0}


class RewardModelReward:
    """GRPO reward function: the reward model's score of each (question, completion); logs repetition stats."""

    __name__ = "reward_model"  # TRL names the logged metric rewards/<__name__>/mean

    def __init__(self, scorer, batch_size: int = 8):
        self.scorer = scorer
        self.batch_size = int(batch_size)

    def __call__(self, prompts, completions, question=None, log_metric=None, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if question is None:  # no question column: the last user turn of the prompt
            question = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        if log_metric is not None:
            for k, v in repetition_stats(texts).items():
                log_metric(f"repetition/{k}", v)
        return [float(s) for s in self.scorer.score(list(question), texts, batch_size=self.batch_size)]


# --------------------------------------------------------------------------- the guard

class GuardCallback(TrainerCallback):
    """Stop training when a step's KL or repetition crosses its threshold (None = unchecked); report why.

    Thresholds: ``max_kl`` (mean per-token KL to the reference, needs beta > 0), ``min_distinct3``,
    ``max_code_fence_share``, ``max_repeated_line_share`` (see :func:`repetition_stats`). After a stop,
    ``reason`` and ``stop_step`` say why and when; with ``restore_last_good`` the trainable weights are put back
    to the last policy that passed, and ``policy_updates`` is how many updates that policy has.
    """

    def __init__(self, max_kl=None, min_distinct3=None, max_code_fence_share=None, max_repeated_line_share=None,
                 restore_last_good: bool = True):
        self.max_kl, self.min_distinct3 = max_kl, min_distinct3
        self.max_code_fence_share, self.max_repeated_line_share = max_code_fence_share, max_repeated_line_share
        self.restore_last_good = restore_last_good
        self.reason: str | None = None
        self.stop_step: int | None = None
        self.policy_updates: int | None = None
        self._good = self._pending = None
        self._good_updates = self._pending_updates = 0

    def check(self, logs: dict) -> str | None:
        """The first threshold the step's logs cross, as a sentence; None if all pass."""
        rules = [("kl", self.max_kl, ">", "KL to the reference"),
                 ("repetition/distinct3", self.min_distinct3, "<", "distinct-3-gram ratio of the samples"),
                 ("repetition/code_fence_share", self.max_code_fence_share, ">", "share of samples with code fences"),
                 ("repetition/repeated_line_share", self.max_repeated_line_share, ">", "share of repeated lines")]
        for key, limit, op, what in rules:
            value = logs.get(key)
            if limit is None or value is None:
                continue
            if (value > limit) if op == ">" else (value < limit):
                return f"{what} {value:.4g} {op} {limit:g} ({key})"
        return None

    @staticmethod
    def _snapshot(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.restore_last_good and model is not None:
            self._good, self._good_updates = self._snapshot(model), state.global_step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.restore_last_good and model is not None:
            self._pending, self._pending_updates = self._snapshot(model), state.global_step

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "reward" not in logs or self.reason is not None:  # not a training-step log
            return
        reason = self.check(logs)
        if reason is None:
            if self._pending is not None:  # the policy that sampled this step passed
                self._good, self._good_updates = self._pending, self._pending_updates
            return
        self.reason, self.stop_step = reason, state.global_step
        control.should_training_stop = True
        log.warning("guard: stopping at step %d: %s", state.global_step, reason)
        if self.restore_last_good and self._good is not None and model is not None:
            params = dict(model.named_parameters())
            with __import__("torch").no_grad():
                for n, value in self._good.items():
                    params[n].copy_(value)
            self.policy_updates = self._good_updates
            log.warning("guard: restored the policy after %d update(s), the last that passed", self._good_updates)


# --------------------------------------------------------------------------- training

from .params_schema import VLLM_MODES  # noqa: E402  (the schema owns the allowed values)


def vllm_kwargs(use_vllm: bool = False, vllm_mode: str = "colocate", vllm_server_base_url: str | None = None,
                vllm_gpu_memory_utilization: float = 0.3) -> dict:
    """GRPOConfig's vLLM arguments from the params (empty when off); a clear error where vLLM cannot run."""
    import importlib.util

    from .records import UserError

    if not use_vllm:
        return {}
    if vllm_mode not in VLLM_MODES:
        raise UserError(f"grpo.vllm_mode {vllm_mode!r}: choose colocate or server")
    if importlib.util.find_spec("vllm") is None:
        raise UserError("grpo.use_vllm is true but vllm is not installed: pip install -r requirements-gpu.txt "
                        "(vLLM needs a CUDA GPU), or set grpo.use_vllm: false to sample with transformers")
    if not has_cuda():
        raise UserError("grpo.use_vllm is true but no CUDA GPU is available (vLLM rollouts need one); "
                        "set grpo.use_vllm: false")
    kw = {"use_vllm": True, "vllm_mode": vllm_mode}
    if vllm_mode == "server":
        if vllm_server_base_url:
            kw["vllm_server_base_url"] = str(vllm_server_base_url)
    else:
        kw["vllm_gpu_memory_utilization"] = float(vllm_gpu_memory_utilization)
    return kw


# the stage's choices where the params' grpo.trainer says nothing (sciexplain.trainer_config.build)
DEFAULTS = dict(activation_checkpointing=False, disable_dropout=True, logging_steps=1, save_strategy="no",
                dataloader_num_workers=0, disable_tqdm=False)


def grpo_config(trainer: dict | None, scratch_dir, *, beta, num_generations, prompts_per_step, max_completion_length,
                temperature, top_p, vllm: dict | None = None):
    """``trl.GRPOConfig``: :data:`DEFAULTS` < ``trainer`` (the params' ``grpo.trainer``) < the section's GRPO knobs,
    the batch they make (``prompts_per_step`` x ``num_generations`` completions), one update per sampled batch (the
    guard's numbers describe the policy it checks), the vLLM rollout settings, and what the code owns."""
    from .trainer_config import build, precision

    owned = {**vllm_kwargs(**(vllm or {})), "output_dir": str(scratch_dir), "report_to": "none", **precision("policy"),
             "per_device_train_batch_size": int(num_generations) * int(prompts_per_step),  # counts completions
             "num_generations": int(num_generations), "max_completion_length": int(max_completion_length),
             "temperature": float(temperature), "top_p": float(top_p), "beta": float(beta), "num_iterations": 1}
    return build("grpo", trainer, defaults=DEFAULTS, owned=owned)


def _first_last(logs: list[dict], key: str) -> tuple:
    vals = [h[key] for h in logs if key in h]
    return (vals[0], vals[-1]) if vals else (None, None)


def train_grpo(base_dir, questions: list[str], out_dir, *, scorer, init_adapter, beta: float = 0.05,
              num_generations: int = 4, prompts_per_step: int = 2, max_completion_length: int = 128,
              temperature: float = 1.0, top_p: float = 1.0, trainer: dict | None = None,
              guard: dict | None = None, score_batch_size: int = 8, scratch_dir="scratch/grpo", live_dir=None,
              quantize_4bit="auto", vllm: dict | None = None) -> dict:
    """GRPO from ``init_adapter`` on ``questions`` with ``scorer.score(questions, answers, batch_size)`` as the
    reward; save the policy adapter to ``out_dir`` (None: do not save). ``trainer``: ``trl.GRPOConfig`` settings
    (the params' ``grpo.trainer``: learning rate, ``max_steps``, ``seed``, ...; see :func:`grpo_config`);
    ``guard``: :class:`GuardCallback` kwargs; ``vllm``: :func:`vllm_kwargs` kwargs (rollouts on vLLM).
    Call it on every rank under ``accelerate launch``.
    Returns metrics (steps run, early stop and reason, KL, reward / repetition / length of the first and last step)."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import GRPOTrainer

    from .records import UserError

    if not questions:
        raise UserError("no questions to train on")
    args = grpo_config(trainer, scratch_dir, beta=beta, num_generations=num_generations,
                       prompts_per_step=prompts_per_step, max_completion_length=max_completion_length,
                       temperature=temperature, top_p=top_p, vllm=vllm)
    set_seed(args.seed)
    tok = load_tokenizer(base_dir, padding_side="left")
    # the base placed as GRPOTrainer would place a model id (TRL/accelerate own placement) + the adapter, trainable
    model = load_trainable_adapter(base_dir, init_adapter, quantize_4bit)
    ds = Dataset.from_list([{"prompt": student_messages(q), "question": q} for q in questions])
    guard_cb = GuardCallback(**(guard or {}))
    callbacks = [guard_cb]
    live, live_callbacks = trainer_config.dvclive(live_dir)
    callbacks += live_callbacks
    trainer = GRPOTrainer(model=model, reward_funcs=[RewardModelReward(scorer, score_batch_size)], args=args,
                          train_dataset=ds, processing_class=tok, reward_processing_classes=[None], callbacks=callbacks)
    keep_adapter_in_compute_dtype(trainer.model)  # QLoRA on the CPU: LoRA weights stay fp32
    trainable, total = count_parameters(trainer.model)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "reward" in h]
    steps = int(trainer.state.global_step)
    metrics: dict = {
        "enabled": True, "algorithm": ALGORITHM, "questions": len(questions), "max_steps": int(args.max_steps),
        "steps_run": steps, "stopped_early": guard_cb.reason is not None, "stop_reason": guard_cb.reason,
        "stop_step": guard_cb.stop_step,
        "policy_updates": guard_cb.policy_updates if guard_cb.policy_updates is not None else steps,
        "beta": float(beta), "num_generations": int(num_generations), "prompts_per_step": int(prompts_per_step),
        "max_completion_length": int(max_completion_length), "guard": dict(guard or {}),
        "rollouts": "vllm" if args.use_vllm else "transformers",
        "init_adapter": str(init_adapter), "trainable_parameters": trainable, "total_parameters": total,
        "kl_final": _first_last(logs, "kl")[1], "train_seconds": seconds,
        "completion_tokens_per_train_s": sum(h.get("completions/mean_length", 0) for h in logs)
        * int(num_generations) * int(prompts_per_step) / max(seconds, 1e-9),
    }
    for name, key in (("reward_mean", "reward"), ("distinct3", "repetition/distinct3"),
                      ("code_fence_share", "repetition/code_fence_share"),
                      ("repeated_line_share", "repetition/repeated_line_share"),
                      ("completion_mean_length", "completions/mean_length"), ("kl", "kl")):
        metrics[f"{name}_first"], metrics[f"{name}_last"] = _first_last(logs, key)
    if out_dir is not None:
        save_adapter(trainer, out_dir)  # every rank (a collective); the policy only, no "ref" sub-folder
    if live is not None:
        live.end()
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return _round(metrics)


def _round(metrics: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}  # not the guard's limits


def disabled_metrics() -> dict:
    """metrics/grpo.json when ``grpo.enabled`` is false (same keys where they make sense, no numbers)."""
    return {"enabled": False, "algorithm": ALGORITHM, "steps_run": 0, "stopped_early": False, "stop_reason": None,
            "kl_final": None, "reward_mean_first": None, "reward_mean_last": None,
            "distinct3_first": None, "distinct3_last": None}


def write_disabled(out_dir) -> None:
    """``out_dir`` holds only a ``DISABLED`` note (a valid, empty-of-weights DVC out)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DISABLED_FILE).write_text(DISABLED_TEXT, encoding="utf-8")


def write_disabled_outputs(out_dir, live_dir, metrics_path) -> None:
    """Every output of the grpo stage when ``grpo.enabled`` is false: the adapter folder with its ``DISABLED`` note,
    a DVCLive folder (so the declared plots stay valid) and the metrics without numbers."""
    from .records import new_dir, write_json

    with new_dir(Path(out_dir)) as tmp:
        write_disabled(tmp)
    live, _ = trainer_config.dvclive(live_dir)
    live.log_metric("enabled", 0)
    live.end()
    write_json(metrics_path, disabled_metrics())
