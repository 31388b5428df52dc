"""Everything `train_ppo` builds once before its loop, as one typed `Run`.

Order matters and is spelled out in `build_run`: the reward config is checked before any model
loads (a config error costs nothing), the same adapter initialisation on every process, then the
optimizer, `accelerate.prepare`, and the resume, which restores weights, optimizer, schedule,
controllers and RNG from the newest whole checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf_stack.pipeline.layout import PPO_LOG, SAMPLES_FILE
from rlhf_stack.ppo.assembly import ModelInfo
from rlhf_stack.ppo.averaging import PolicyAverage
from rlhf_stack.ppo.control import AdaptiveKLController, FixedKLController, RunningMoments
from rlhf_stack.ppo.data import PPOData
from rlhf_stack.ppo.logs import RunLog
from rlhf_stack.ppo.models import ActorCritic

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import GenerationConfig, PreTrainedTokenizerBase

    from rlhf_stack.ppo.config import PPOConfig
    from rlhf_stack.ppo.rewards import CombinedReward
    from rlhf_stack.ppo.trunk_reward import HeldTrunk


@dataclass(frozen=True)
class Run:
    """What the loop works with, built once by `build_run`; nothing in it is filled in later."""

    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase  # the policy's, padding on the left
    model: torch.nn.Module  # the ActorCritic, wrapped by accelerate (DDP) when distributed; itself under FSDP2
    actor_critic: ActorCritic  # the same model unwrapped: generation, saving, checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    kl_ctl: FixedKLController | AdaptiveKLController
    moments: RunningMoments  # running statistics of the raw scores (score_norm: running)
    reward: CombinedReward  # (prompts, responses) -> ((b,), {name: (b,)})
    data: PPOData
    gen_config: GenerationConfig
    info: ModelInfo  # which model layout ran (stage metrics `models`)
    log: RunLog | None  # the main process's logs; None on the others
    start_step: int  # the step the resumed checkpoint was taken after (0: a fresh run)
    output_dir: Path
    average: PolicyAverage | None  # the policy's weight average (policy_ema), saved as the policy
    held_reward: HeldTrunk | None = None  # the hosted RM's trunk outputs of a step's samples (trunk_reward.py)

    @property
    def controllers(self) -> dict:
        """The stateful controllers a checkpoint saves, by name."""
        return {"kl_controller": self.kl_ctl, "score_moments": self.moments}


def build_run(cfg: PPOConfig, reward_fns: list[Callable] | None) -> Run:
    from rlhf_stack import distributed, training
    from rlhf_stack.ppo.assembly import build_actor_critic
    from rlhf_stack.ppo.checkpoint import CHECKPOINTS_DIR, resume_latest
    from rlhf_stack.ppo.data import load_data
    from rlhf_stack.ppo.rewards import build_reward, check_reward_config
    from rlhf_stack.ppo.rollout import generation_config, left_pad

    acc = make_accelerator(cfg)
    output_dir = Path(cfg.output_dir)
    if acc.is_main_process:
        training.begin_stage(output_dir)
    torch.manual_seed(cfg.seed)  # the same adapter init on every process
    tokenizer = policy_tokenizer(cfg)
    data = load_data(cfg, tokenizer)
    check_reward_config(cfg, reward_fns)  # first: a config error costs no model load
    actor_critic, info = build_actor_critic(cfg, tokenizer, acc.device)
    reward, info, held_reward = build_reward(cfg, reward_fns, acc.device, actor_critic, info)
    if cfg.cache_frozen_trunk:  # after the last adapter (the hosted reward model's) is in place
        probe = [data.prompt_ids[i] for i in range(min(2, len(data.prompt_ids)))]
        probe_ids, probe_mask = left_pad(probe, tokenizer.pad_token_id, acc.device)
        info = replace(info, trunk_blocks=actor_critic.use_trunk(probe_ids, probe_mask))
    actor_critic.packed_passes = cfg.packed_passes
    optimizer, scheduler = optimizer_and_scheduler(cfg, actor_critic)
    model, optimizer = acc.prepare(actor_critic, optimizer)
    if distributed.is_sharded(actor_critic):  # FSDP2 shards in place: `model is actor_critic`
        from torch.distributed.fsdp import register_fsdp_forward_method

        actor_critic.rebind()
        register_fsdp_forward_method(actor_critic, "call")
    if not (cfg.reward_from_trunk and cfg.trunk_from_sampling and actor_critic.trunk is not None
            and not distributed.is_sharded(actor_critic)):
        held_reward = None  # the hosted RM runs its full passes (`trunk_reward.py`)
    average = policy_average(cfg, actor_critic)
    kl_ctl, moments = controllers(cfg)
    torch.manual_seed(cfg.seed + acc.process_index)  # each process samples different responses
    start_step = 0
    if cfg.resume:
        start_step = resume_latest(output_dir / CHECKPOINTS_DIR, model=actor_critic, optimizer=optimizer,
                                   scheduler=scheduler, accelerator=acc, average=average,
                                   controllers={"kl_controller": kl_ctl, "score_moments": moments})
    log = None
    if acc.is_main_process:
        logs = output_dir / training.LOGS_DIR
        log = RunLog(Path(cfg.log_file) if cfg.log_file else logs / PPO_LOG, logs / SAMPLES_FILE, start_step)
    if cfg.report_to != ["none"]:
        acc.init_trackers("rlhf_stack_ppo", config=cfg.model_dump(mode="json"))
    return Run(acc, tokenizer, model, actor_critic, optimizer, scheduler, kl_ctl, moments, reward, data,
               generation_config(cfg, tokenizer), info, log, start_step, output_dir, average, held_reward)


def make_accelerator(cfg):
    """One code path for CPU, one GPU and `accelerate launch` (DDP, FSDP2); trackers from report_to."""
    from accelerate.utils import DistributedDataParallelKwargs

    from rlhf_stack import distributed

    trackers = [r for r in cfg.report_to if r != "none"]
    # Value and policy passes run separately (ActorCritic.needs_split_backward) for a value model
    # with a decoder of its own (full tuning, or a LoRA policy whose value starts from a reward
    # model that is not an adapter over its base) and for a shared LoRA base under gradient
    # checkpointing: each pass leaves the other's parameters unused. So do the value-only updates
    # of value_warmup_steps (the policy gets no gradient at all). Which RM `value_init` names is
    # known only once the models load, so any value_init under LoRA counts (unused-parameter
    # search on a layout that needs none costs a graph walk, not a wrong gradient).
    own_value_model = cfg.uses_value_model and (cfg.policy.adapter_method is None or bool(cfg.value_init))
    split = own_value_model or (cfg.policy.adapter_method is not None and cfg.policy.gradient_checkpointing)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if split or cfg.value_warmup_steps else []
    return distributed.accelerator(log_with=trackers or None, project_dir=cfg.output_dir, kwargs_handlers=handlers)


def policy_tokenizer(cfg):
    """The policy's tokenizer, padding on the left for batched generation."""
    from rlhf_stack import modeling

    return modeling.load_tokenizer(cfg.policy.tokenizer or cfg.policy.name_or_path, cfg.policy.chat_template,
                                   padding_side="left")


# ---- optimisation and control -------------------------------------------------------------------


def optimizer_and_scheduler(cfg, model):
    """AdamW with one group for the policy and one for the value function (none without a value
    model); LR schedule over all updates."""
    from transformers import get_scheduler

    groups = [{"params": model.policy_params, "lr": cfg.learning_rate}]
    if model.value_params:
        groups.append({"params": model.value_params, "lr": cfg.value_learning_rate or cfg.learning_rate})
    # The fused kernel (one pass per parameter group, CPU and CUDA) is several times faster than
    # the per-tensor loop; transformers' Trainer picks it too ("adamw_torch_fused").
    params = [p for group in groups for p in group["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    total_updates = cfg.steps * cfg.updates_per_step
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_updates),
                              num_training_steps=total_updates)
    return optimizer, scheduler


def policy_average(cfg, actor_critic: ActorCritic) -> PolicyAverage | None:
    """The running average of the policy's trainable weights when `policy_ema` is set, from the
    initial policy. Under FSDP2 each process holds only shards of them: refused there."""
    from rlhf_stack import distributed
    from rlhf_stack.errors import ConfigError

    if cfg.policy_ema is None:
        return None
    if distributed.is_sharded(actor_critic):
        raise ConfigError("policy_ema: the weight average is not supported under FSDP2 (each process holds only "
                          "shards of the policy); unset it, or run without FSDP")
    return PolicyAverage(actor_critic.named_policy_params(), cfg.policy_ema)


def controllers(cfg):
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    return kl_ctl, RunningMoments()
