"""Stage 3: `train_ppo(cfg, reward_fns=None) -> StageResult`, the explicit PPO / PPO-ptx loop.

Each step: 1. generate (and evaluate the samples under policy, reference and value) 2. score
3. KL-penalised rewards 4. advantages 5. PPO epochs (+ ptx) 6. KL control, logs, checkpoint.
A NaN or inf is looked for before every update (`guard.py`, setting `on_nonfinite`): it stops the
run, or drops the step / the update, so no update and no checkpoint ever carries one.
The math is rlhf_stack.ppo.functional and .estimators, the update (step 5) `update.py`; this file
only orders them (STYLE.md items 4 and 6). The advantage estimator, the loss aggregation and the update (policy + value, or the
policy alone for a critic-free estimator) are chosen once, before the loop.
Runs on one CPU/GPU or under `accelerate launch` (DDP, FSDP2); sources: Ziegler et al. 2019,
Ouyang et al. 2022 (InstructGPT), Huang et al. 2024 ("The N+ Implementation Details of RLHF").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from rlhf_stack.config import StageResult
from rlhf_stack.ppo import estimators, update
from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.config import PPOConfig
from rlhf_stack.ppo.packed import packed_linears
from rlhf_stack.ppo.rollout import Rollout
from rlhf_stack.ppo.setup import Run


def train_ppo(cfg: PPOConfig, reward_fns: list[Callable] | None = None) -> StageResult:
    """Run PPO (PPO-ptx when cfg.ptx_coef > 0); return the policy checkpoint and final metrics."""
    from tqdm.auto import tqdm

    from rlhf_stack import distributed
    from rlhf_stack.ppo.checkpoint import CHECKPOINTS_DIR, save_checkpoint_state
    from rlhf_stack.ppo.data import step_prompt_indices
    from rlhf_stack.ppo.guard import StepGuard
    from rlhf_stack.ppo.logs import peak_memory_mb
    from rlhf_stack.ppo.rewards import process_scores
    from rlhf_stack.ppo.rollout import collect_rollout, left_pad
    from rlhf_stack.ppo.setup import build_run

    run = build_run(cfg, reward_fns)
    acc, tokenizer, data = run.accelerator, run.tokenizer, run.data
    unwrapped = run.actor_critic
    # Variants chosen once (STYLE.md item 7): KL estimator, advantage estimator, loss aggregation,
    # the update: policy + value (gae), or the policy alone (the critic-free ones), and the rows
    # it trains on: the whole batch, or each prompt's winner (best_of_k).
    kl_fn = PF.KL_ESTIMATORS[cfg.kl_estimator]
    advantage_fn = estimators.advantage_estimator(cfg.advantage_estimator, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                                                  whiten=cfg.whiten_advantages,
                                                  samples_per_prompt=cfg.samples_per_prompt)
    aggregate = PF.loss_aggregation(cfg.loss_aggregation, cfg.max_new_tokens)
    train_backward = partial(update.policy_and_value_backward if unwrapped.has_value else update.policy_backward,
                             aggregate=aggregate)
    trained_rows = update.winners if estimators.trains_on_winners(cfg.advantage_estimator) else update.every_row
    world, rank = acc.num_processes, acc.process_index
    # Merging writes into the base weights, which FSDP2 holds only as shards outside a forward.
    merge_lora = cfg.merge_lora_for_generation and unwrapped.shared and not distributed.is_sharded(unwrapped)
    held = run.held_reward  # a hosted RM scoring from the trunk's output that sampling recorded
    guard = StepGuard(cfg.on_nonfinite, acc, unwrapped, run.optimizer, run.output_dir / CHECKPOINTS_DIR,
                      updates_per_step=cfg.updates_per_step)
    bar = tqdm(total=cfg.steps, initial=run.start_step, desc="ppo",
               disable=not (acc.is_main_process and cfg.progress_bar))
    # The frozen weights (the shared base, reference and reward adapters) are packed for sampling once
    # for the whole run (`ppo/packed.py`); each generate() call packs only the trainable layers. A
    # merged adapter changes the base at every call, so then every call packs everything.
    # The LM head's input gradient runs packed too (a packed copy of its transpose; module doc).
    with packed_linears(unwrapped, enabled=cfg.pack_weights_for_sampling and not merge_lora, frozen_only=True,
                        transpose=(unwrapped.policy.get_output_embeddings(),)):
        started = time.perf_counter()
        for step in range(run.start_step + 1, cfg.steps + 1):
            t_start = time.perf_counter()
            # batch_size / samples_per_prompt prompts, each samples_per_prompt times in adjacent rows
            index = step_prompt_indices(data.prompt_stream, step, world, rank, cfg.prompts_per_step,
                                        cfg.samples_per_prompt)
            prompts = [data.prompts[i]["prompt"] for i in index]
            prompt_ids = [data.prompt_ids[i] for i in index]
            query_ids, query_mask = left_pad(prompt_ids, tokenizer.pad_token_id, acc.device)

            # 1. generate, then evaluate the samples under policy (pi_old), reference and value
            #    (through `call`: under FSDP2 that gathers the parameters the rollout's passes need).
            #    The sampler's draws are a function of (seed, step, row of the global batch): the same
            #    samples on any number of processes, and after a resume.
            phases: dict[str, float] = {}
            draws = (cfg.seed * 100_003 + step, rank * cfg.batch_size, world * cfg.batch_size)
            caches = [] if held is not None else None  # the sampling's key/value cache, for the hosted RM
            rollout = unwrapped.call(collect_rollout, unwrapped, unwrapped.policy, query_ids, query_mask, run.gen_config,
                                     eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                                     temperature=cfg.temperature, micro_batch_size=cfg.micro_batch_size,
                                     merge_lora=merge_lora, draws=draws, timings=phases,
                                     samples_per_prompt=cfg.samples_per_prompt, trunk_from_sampling=cfg.trunk_from_sampling,
                                     pack_weights=cfg.pack_weights_for_sampling, unpadded=cfg.unpadded_prompt_passes,
                                     keep_cache=caches)
            t_generate = time.perf_counter()

            # 2. score the decoded text (a failing reward source stops the run, naming the prompt),
            #    then normalise / clip / penalise missing EOS
            responses = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
            if caches and rollout.hidden is not None:  # the hosted RM then runs only the blocks above the trunk
                held.collect(unwrapped.trunk, caches[0], query_mask, rollout.hidden, prompts, prompt_ids,
                             [r[m.bool()].tolist() for r, m in zip(rollout.response_ids, rollout.response_mask, strict=True)],
                             responses)
            where = partial(_prompt_where, cfg, data.prompts, index)
            raw_scores, parts = _score(run, unwrapped, step, prompts, responses, where, guard)
            if held is not None:
                held.clear()
            raw_scores = raw_scores.to(acc.device)
            moments = run.moments.state_dict()  # put back if the step is dropped (on_nonfinite: skip_step)
            scores = process_scores(raw_scores, rollout.has_eos, acc.gather(raw_scores), cfg, run.moments)
            t_score = time.perf_counter()

            # 3. KL-penalised per-token rewards (Ziegler 2019 eq. 2; InstructGPT eq. 2)
            mask = rollout.response_mask
            kl = kl_fn(rollout.logprobs, rollout.ref_logprobs) * mask  # (b, t)
            kl_coef = run.kl_ctl.kl_coef
            rewards = PF.kl_penalized_rewards(scores, kl, mask, kl_coef)

            # 4. advantages: GAE (+ returns, whitened when configured), or a critic-free group
            #    baseline over each prompt's samples (estimators.py), over the global batch
            advantages, returns = _global_advantages(acc, advantage_fn, rewards, rollout.values, mask)
            rollout = replace(rollout, scores=scores, rewards=rewards, advantages=advantages, returns=returns)

            # 5. PPO epochs over mini-batches of the trained rows (+ ptx_coef * LM loss on a corpus
            #    batch); during value_warmup_steps only the value function learns (the policy is
            #    frozen). A NaN/inf score, reward or advantage drops the whole step under skip_step
            #    (and stops under stop).
            dropped = guard.check_batch(step, parts, responses, where, rollout)
            train_stats = {}
            if dropped:
                run.moments.load_state_dict(moments)
            else:
                backward = update.value_backward if step <= cfg.value_warmup_steps else train_backward
                train_stats = update.ppo_epochs(run, cfg, trained_rows(rollout), step, backward, guard)
            t_train = time.perf_counter()
            if run.average is not None:
                run.average.update()

            # 6. KL controller (on the mean KL of every process), logs, checkpoint
            seq_kl = acc.reduce(kl.sum(1).mean(), "mean").item()
            if not dropped:
                run.kl_ctl.update(seq_kl, cfg.batch_size * world)
            n_tokens = mask.sum()
            rollout_stats = {
                "score": raw_scores.mean(), "score_processed": scores.mean(), "reward": rewards.sum(1).mean(),
                "kl": kl.sum(1).mean(), "response_length": mask.sum(1).mean(), "eos_fraction": rollout.has_eos.float().mean(),
                **_value_stats(rollout), "entropy": PF.masked_mean(rollout.entropy, mask),  # of the sampling policy
                **{f"reward/{name}": v.to(acc.device).mean() for name, v in parts.items()},
            }
            record = {"step": step, **_mean_over_processes(acc, {**rollout_stats, **train_stats}), "kl_coef": kl_coef,
                      "lr": run.scheduler.get_last_lr()[0],
                      "time_generate_s": t_generate - t_start, "time_sample_s": phases["sample_s"],
                      "time_rollout_forward_s": phases["forward_s"], "time_score_s": t_score - t_generate,
                      "time_train_s": t_train - t_score, "time_step_s": t_train - t_start,
                      "elapsed_s": t_train - started,
                      "tokens_per_s": acc.reduce(n_tokens, "sum").item() / max(t_train - t_start, 1e-9),
                      "peak_memory_mb": peak_memory_mb(acc.device), **guard.record()}
            if acc.is_main_process:
                run.log.write(record)
                if step % cfg.sample_every_steps == 0 or step == cfg.steps:
                    run.log.write_samples(step, _sample_rows(prompts, responses, raw_scores, scores, cfg.samples_per_log))
            if cfg.report_to != ["none"]:
                acc.log({k: v for k, v in record.items() if k != "step"}, step=step)
            bar.update(1)
            bar.set_postfix(score=f"{record['score']:.3f}", kl=f"{record['kl']:.3f}")
            if cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < cfg.steps:
                save_checkpoint_state(run.output_dir / CHECKPOINTS_DIR, step, model=unwrapped, optimizer=run.optimizer,
                                      scheduler=run.scheduler, controllers=run.controllers, accelerator=acc,
                                      average=run.average)
        bar.close()
        if run.average is not None:
            run.average.copy_to_policy()  # the stage's policy is the average (policy_ema)
        runtime = time.perf_counter() - started
        return _finish(run, cfg, unwrapped, runtime)


# ---- setup and finish ---------------------------------------------------------------------------


def _global_advantages(acc, advantage_fn: Callable, rewards, values, mask) -> tuple:
    """advantage_fn on every process's rollouts at once, this process's rows returned: batch
    statistics (whitening, reinforce_baseline's std) are then the global batch's, as on one process
    with the whole batch. Rows are padded on the right to a common width (mask 0) to gather."""
    if acc.num_processes == 1:
        return advantage_fn(rewards, values, mask)
    width, rows = rewards.shape[1], slice(acc.process_index * len(rewards), (acc.process_index + 1) * len(rewards))
    parts = [acc.gather(acc.pad_across_processes(t, dim=1)) if t is not None else None for t in (rewards, values, mask)]
    advantages, returns = advantage_fn(*parts)
    return advantages[rows, :width], returns[rows, :width] if returns is not None else None


def _value_stats(rollout: Rollout) -> dict[str, torch.Tensor]:
    """Mean value estimate and return over real tokens; none without a value model."""
    if rollout.values is None:
        return {}
    mask = rollout.response_mask
    return {"value_mean": PF.masked_mean(rollout.values, mask), "return_mean": PF.masked_mean(rollout.returns, mask)}


def _mean_over_processes(acc, stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """One all-reduce for every statistic; plain floats for the log."""
    names = sorted(stats)
    stacked = torch.stack([torch.as_tensor(stats[n], dtype=torch.float32, device=acc.device) for n in names])
    return dict(zip(names, acc.reduce(stacked, "mean").tolist(), strict=True))


def _score(run: Run, unwrapped, step: int, prompts: list, responses: list[str], where: Callable[[int], str],
           guard) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """run.reward(prompts, responses), called through the policy model (a hosted RM runs on its
    base, which FSDP2 shards); a source that raises or returns the wrong thing stops the run here,
    before any update from this step, with the step, the prompt and the last good checkpoint added
    to its message."""
    from rlhf_stack.errors import RewardFunctionError
    from rlhf_stack.nonfinite import halt_note

    try:
        return unwrapped.call(run.reward, prompts, responses)
    except RewardFunctionError as exc:
        prompt = where(exc.index) if exc.index is not None else "the batch's prompts: " + ", ".join(
            where(i) for i in range(min(3, len(prompts)))) + (", ..." if len(prompts) > 3 else "")
        raise RewardFunctionError(f"ppo step {step}: {exc} ({prompt}). Stopped before any update from step {step}. "
                                  f"{halt_note(guard.last_checkpoint())}", exc.source, exc.index) from exc.__cause__


def _prompt_where(cfg: PPOConfig, rows: list[dict], index: list[int], i: int) -> str:
    """Row i of a step's batch as `prompt 13 (prompts.jsonl:14)`: its index among the training
    prompts, and its file line when known."""
    from rlhf_stack.data import LINE_KEY

    row = index[i]
    line = rows[row].get(LINE_KEY)
    return f"prompt {row} ({cfg.prompts.path}:{line})" if line is not None else f"prompt {row}"


def _sample_rows(prompts, responses, raw_scores, scores, n: int) -> list[dict]:
    from rlhf_stack.data import prompt_key

    return [{"prompt": prompt_key(p), "response": r, "score": float(s), "score_processed": float(sp)}
            for p, r, s, sp in list(zip(prompts, responses, raw_scores.tolist(), scores.tolist(), strict=True))[:n]]


def _finish(run: Run, cfg: PPOConfig, unwrapped, runtime: float) -> StageResult:
    from rlhf_stack import training
    from rlhf_stack.ppo.logs import summarize
    from rlhf_stack.ppo.models import PolicySaver
    from rlhf_stack.ppo.rollout import heldout_score

    acc = run.accelerator
    metrics = summarize(run.log.records() if run.log else [], runtime, cfg.steps - run.start_step)
    eval_score = unwrapped.call(heldout_score, unwrapped.policy, run.data.eval_rows[:cfg.eval_max_prompts],
                                run.tokenizer, run.gen_config, run.reward, acc, cfg.batch_size)
    metrics.update(eval_score=eval_score, resumed_from_step=run.start_step or None,
                   advantage_estimator=cfg.advantage_estimator, policy_ema=cfg.policy_ema,
                   models={"layout": run.info.layout, "reference": run.info.reference,
                           "value_init": run.info.value_init, "policy_base": run.info.base_model,
                           "reward_model": run.info.reward_model, "trunk_blocks": run.info.trunk_blocks},
                   **training.launch_metrics(unwrapped))
    fingerprints = training.data_fingerprints(cfg.prompts, cfg.ptx_data)
    record = training.stage_record("ppo", cfg, cfg.policy, unwrapped.policy, fingerprints, metrics)
    # every process: under FSDP2 the weights are gathered first; the main process writes
    training.finish_stage(PolicySaver(unwrapped), run.tokenizer, run.output_dir, record, cfg.keep_checkpoints)
    if cfg.report_to != ["none"]:
        acc.end_training()
    return StageResult(run.output_dir, metrics)
