"""Step 5 of stage 3: the PPO update over a rollout (`trainer.py` orders the steps).

`ppo_epochs` makes ppo_epochs passes over the trained rows in random mini-batches, one optimizer
step per mini-batch (gradients accumulated over micro-batches), the PPO-ptx corpus batch beside
each micro-batch. Each micro-batch runs one of the backward variants below, chosen once before the
loop: policy + value (`gae`), the policy alone (the critic-free estimators), or the value alone
(`value_warmup_steps`). `every_row` / `winners` pick the rows an update trains on (best_of_k: each
prompt's winner). The losses themselves are `functional.py`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from rlhf_stack.ppo import estimators
from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.config import PPOConfig
from rlhf_stack.ppo.rollout import Rollout
from rlhf_stack.ppo.setup import Run


def ppo_epochs(run: Run, cfg: PPOConfig, rollout: Rollout, step: int, backward: Callable,
                guard) -> dict[str, torch.Tensor]:
    """ppo_epochs passes over the trained rows (the batch, or best_of_k's winners) in random
    mini-batches; one optimizer step per mini-batch.

    backward(run, model, micro_batch, ptx_batch, cfg, last) -> stats: one of the updates below.
    guard (`guard.StepGuard`) looks at each update's losses and gradients before the optimizer
    step: it stops the run, or the update is dropped (gradients cleared, no optimizer or scheduler
    step, its statistics left out).
    """
    from rlhf_stack import distributed

    acc, model, unwrapped = run.accelerator, run.model, run.actor_critic
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    if run.data.ptx is not None and unwrapped.trunk is not None:  # the step's new corpus rows, one pass
        unwrapped.call(run.data.ptx.prefetch, step, acc, unwrapped.trunk)
    stats: dict[str, list[torch.Tensor]] = {}
    micro_index = 0
    model.train()  # dropout is 0 everywhere; train mode only turns gradient checkpointing on
    for _epoch in range(cfg.ppo_epochs):
        order = torch.randperm(cfg.update_batch_size).to(acc.device)
        for mb_start in range(0, cfg.update_batch_size, cfg.mini_batch_size):
            mb_order = order[mb_start:mb_start + cfg.mini_batch_size]
            mb_stats: dict[str, list[torch.Tensor]] = {}
            for k, micro_start in enumerate(range(0, cfg.mini_batch_size, cfg.micro_batch_size)):
                micro = rollout.select(mb_order[micro_start:micro_start + cfg.micro_batch_size])
                ptx_batch = (unwrapped.call(run.data.ptx.batch, step, micro_index, acc, unwrapped.trunk)
                             if run.data.ptx is not None else None)
                micro_index += 1
                last = k == cfg.grad_accum_steps - 1
                with nullcontext() if last else acc.no_sync(model):  # all-reduce once per mini-batch
                    micro_stats = backward(run, model, micro, ptx_batch, cfg, last)
                for name, value in micro_stats.items():
                    mb_stats.setdefault(name, []).append(value)
            if guard.check_update(step, mb_stats):  # before clipping, which would spread a NaN
                run.optimizer.zero_grad(set_to_none=True)
                continue
            for name, values in mb_stats.items():
                stats.setdefault(name, []).extend(values)
            if cfg.max_grad_norm is not None:
                grad_norm = distributed.plain(acc.clip_grad_norm_(params, cfg.max_grad_norm))  # DTensor under FSDP2
                stats.setdefault("grad_norm", []).append(grad_norm.detach())
            run.optimizer.step()
            run.scheduler.step()
            # Zeroed in place, not freed: the gradient buffers are allocated once. Freed and
            # allocated again in the middle of every backward, they split glibc's heap, which then
            # keeps freed activations resident (measured: -340 MB of peak RSS on the real-model row
            # of ppo_vs_trl.py, same rollouts). Parameters that never had a gradient (the policy's
            # during value_warmup_steps) keep none, so AdamW still skips them.
            run.optimizer.zero_grad(set_to_none=False)
    model.eval()  # generation needs eval mode: with checkpointing active, transformers drops the KV cache
    return {name: torch.stack([v.float() for v in values]).mean() for name, values in stats.items()}


def every_row(rollout: Rollout) -> Rollout:
    return rollout


def winners(rollout: Rollout) -> Rollout:
    """best_of_k: each prompt's winner, the only rows with a nonzero advantage (the rest would add
    zeros to the loss at the full cost of a forward and backward)."""
    return rollout.select(estimators.winner_rows(rollout.advantages))


def policy_and_value_backward(run: Run, model, mb: Rollout, ptx_batch, cfg: PPOConfig, last: bool,
                               aggregate: Callable) -> dict:
    """Loss = clipped policy loss + vf_coef * clipped value loss (+ ptx_coef * LM loss); backward.

    One forward and one backward over both, or (`ActorCritic.needs_split_backward`: a value model of
    its own, or a shared base under gradient checkpointing) the value part's forward and backward
    first, with its adapter active, then the policy part's.
    """
    acc, unwrapped = run.accelerator, run.actor_critic
    mb = mb.trimmed()
    stats: dict[str, torch.Tensor] = {}
    if unwrapped.needs_split_backward:
        with unwrapped.adapter("value"), nullcontext() if not last else acc.no_sync(model):
            _, values, _ = model(mb.input_ids, mb.attention_mask, mb.response_ids, part="value", hidden=mb.hidden)
            value_loss = _value_loss(values, mb, cfg, stats)
            acc.backward(cfg.vf_coef * value_loss / cfg.grad_accum_steps)
        logprobs, _, ptx_loss = model(mb.input_ids, mb.attention_mask, mb.response_ids, ptx_batch, part="policy",
                                      hidden=mb.hidden, temperature=cfg.temperature)
        loss = _policy_loss(logprobs, ptx_loss, mb, cfg, stats, aggregate)
    else:
        logprobs, values, ptx_loss = model(mb.input_ids, mb.attention_mask, mb.response_ids, ptx_batch,
                                           hidden=mb.hidden, temperature=cfg.temperature)
        loss = _policy_loss(logprobs, ptx_loss, mb, cfg, stats, aggregate)
        loss = loss + cfg.vf_coef * _value_loss(values, mb, cfg, stats)
    acc.backward(loss / cfg.grad_accum_steps)
    return stats


def policy_backward(run: Run, model, mb: Rollout, ptx_batch, cfg: PPOConfig, last: bool,
                     aggregate: Callable) -> dict:
    """Critic-free estimators: loss = clipped policy loss (+ ptx_coef * LM loss); backward. No value
    forward, no value loss: there is no value model."""
    mb = mb.trimmed()
    stats: dict[str, torch.Tensor] = {}
    logprobs, _, ptx_loss = model(mb.input_ids, mb.attention_mask, mb.response_ids, ptx_batch, part="policy",
                                  hidden=mb.hidden, temperature=cfg.temperature)
    loss = _policy_loss(logprobs, ptx_loss, mb, cfg, stats, aggregate)
    run.accelerator.backward(loss / cfg.grad_accum_steps)
    return stats


def value_backward(run: Run, model, mb: Rollout, ptx_batch, cfg: PPOConfig, last: bool) -> dict:
    """Value warm-up (the first value_warmup_steps with gae): loss = vf_coef * clipped value loss
    alone; the policy runs no forward and gets no gradient, so AdamW leaves it untouched. The
    value adapter stays active through the backward (gradient checkpointing recomputes with it)."""
    mb = mb.trimmed()
    stats: dict[str, torch.Tensor] = {}
    with run.actor_critic.adapter("value"):
        _, values, _ = model(mb.input_ids, mb.attention_mask, mb.response_ids, part="value", hidden=mb.hidden)
        run.accelerator.backward(cfg.vf_coef * _value_loss(values, mb, cfg, stats) / cfg.grad_accum_steps)
    return stats


def _value_loss(values, mb: Rollout, cfg: PPOConfig, stats: dict) -> torch.Tensor:
    value_loss, value_stats = PF.clipped_value_loss(values.float(), mb.values, mb.returns, mb.response_mask,
                                                    cfg.clip_range_value)
    stats.update(value_loss=value_loss.detach(), **value_stats)
    return value_loss


def _policy_loss(logprobs, ptx_loss, mb: Rollout, cfg: PPOConfig, stats: dict,
                 aggregate: Callable) -> torch.Tensor:
    loss, policy_stats = PF.clipped_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.response_mask,
                                                cfg.clip_range, aggregate)
    stats.update(policy_loss=loss.detach(), **policy_stats)
    if ptx_loss is not None:
        # PPO-ptx: + gamma * E_pretrain[log pi(x)], as a loss (InstructGPT eq. 2)
        loss = loss + cfg.ptx_coef * ptx_loss
        stats["ptx_loss"] = ptx_loss.detach()
    return loss
