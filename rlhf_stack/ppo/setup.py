"""What train_ppo builds once before the loop, and the summary it writes after it.

Accelerator, tokenizer, prompt and corpus data, optimizer + LR schedule, KL controller, resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_stack.ppo.control import AdaptiveKLController, FixedKLController, RunningMoments
from rlhf_stack.ppo.rollout import generation_config  # noqa: F401  (re-exported for the trainer)
from rlhf_stack.ppo.scoring import build_reward, check_reward_config  # noqa: F401


def make_accelerator(cfg):
    """One code path for CPU, one GPU and `accelerate launch` (DDP); trackers from report_to."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    trackers = [r for r in cfg.report_to if r != "none"]
    # A shared LoRA base under gradient checkpointing runs value and policy passes separately
    # (ActorCritic.needs_split_backward): each pass leaves the other's parameters unused.
    split = cfg.policy.tuning == "lora" and cfg.policy.gradient_checkpointing
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if split else []
    return Accelerator(cpu=not torch.cuda.is_available(), log_with=trackers or None, project_dir=cfg.output_dir,
                       kwargs_handlers=handlers)


def policy_tokenizer(cfg):
    """The policy's tokenizer, padding on the left for batched generation."""
    from rlhf_stack import modeling

    return modeling.load_tokenizer(cfg.policy.tokenizer or cfg.policy.name_or_path, cfg.policy.chat_template,
                                   padding_side="left")


# ---- data ---------------------------------------------------------------------------------------


@dataclass
class PPOData:
    prompts: list[dict]  # training prompt rows
    prompt_ids: list[list[int]]  # their chat-formatted token ids
    prompt_stream: object  # IndexStream over the training prompts
    eval_rows: list[dict]  # held-out prompt rows
    ptx: PtxBatches | None


class PtxBatches:
    """Corpus batches for PPO-ptx; batch k of process r is a function of (step, micro-batch, r)."""

    def __init__(self, token_ids: list[list[int]], batch_size: int, micro_per_step: int, pad_id: int,
                 seed: int) -> None:
        from rlhf_stack.ppo.state import IndexStream

        self.token_ids, self.batch_size, self.micro_per_step, self.pad_id = token_ids, batch_size, micro_per_step, pad_id
        self.stream = IndexStream(len(token_ids), seed + 1)

    def batch(self, step: int, micro_index: int, acc) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels), each `(batch_size, T)`, right-padded; labels -100 on padding."""
        k = ((step - 1) * self.micro_per_step + micro_index) * acc.num_processes + acc.process_index
        seqs = [self.token_ids[i] for i in self.stream.take(k * self.batch_size, self.batch_size)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(seqs):
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return ids.to(acc.device), mask.to(acc.device), labels.to(acc.device)


def load_data(cfg, tokenizer) -> PPOData:
    from rlhf_stack.data import load_rows, split_train_eval
    from rlhf_stack.errors import DataError
    from rlhf_stack.ppo.rollout import encode_prompts
    from rlhf_stack.ppo.state import IndexStream

    p = cfg.prompts
    rows = load_rows(p.path, "prompts", columns=p.columns, split=p.split, max_rows=p.max_rows, keep_lines=True)
    if p.eval_path:
        train_rows, eval_rows = rows, load_rows(p.eval_path, "prompts", keep_lines=True)
    else:
        train_rows, eval_rows = split_train_eval(rows, p.eval_fraction, seed=cfg.seed)
    if len(train_rows) < cfg.batch_size:
        raise DataError(f"{p.path}: {len(train_rows)} training prompts, fewer than batch_size {cfg.batch_size}")
    prompt_ids = encode_prompts(train_rows, tokenizer, cfg.max_prompt_length, p.path)
    ptx = None
    if cfg.ptx_coef > 0:
        d = cfg.ptx_data
        texts = [r["text"] for r in load_rows(d.path, "corpus", columns=d.columns, split=d.split, max_rows=d.max_rows)]
        # Each text ends with EOS so the LM loss also keeps the policy's habit of stopping.
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:cfg.ptx_max_length - 1] + [tokenizer.eos_token_id]
               for t in texts]
        micro_per_step = cfg.ppo_epochs * cfg.batch_size // cfg.micro_batch_size
        ptx = PtxBatches(ids, cfg.micro_batch_size, micro_per_step, tokenizer.pad_token_id, cfg.seed)
    return PPOData(train_rows, prompt_ids, IndexStream(len(train_rows), cfg.seed), eval_rows, ptx)


# ---- reward -------------------------------------------------------------------------------------


def reward_for(cfg, reward_fns, device, model, info):
    """(CombinedReward, info): the reward sources, where a LoRA RM over the policy's own base is
    hosted on the shared base as one more adapter (`shared_reward`), and `info` saying where the
    RM went."""
    from dataclasses import replace

    from rlhf_stack.ppo.shared_reward import REWARD, host_reward_model

    def host(path: str):
        return host_reward_model(model, path, info.base_model)

    reward = build_reward(cfg, reward_fns, device, host if cfg.host_reward_model and model.shared else None)
    if any(src.kind == "reward_model" for src in cfg.rewards):
        hosted = model.shared and REWARD in model.policy.peft_config
        info = replace(info, reward_model="adapter-on-shared-base" if hosted else "separate-model")
    return reward, info


# ---- optimisation and control -------------------------------------------------------------------


def optimizer_and_scheduler(cfg, model):
    """AdamW with one group for the policy and one for the value function; LR schedule over all updates."""
    from transformers import get_scheduler

    groups = [{"params": model.policy_params, "lr": cfg.learning_rate},
              {"params": model.value_params, "lr": cfg.value_learning_rate or cfg.learning_rate}]
    # The fused kernel (one pass per parameter group, CPU and CUDA) is several times faster than
    # the per-tensor loop; transformers' Trainer picks it too ("adamw_torch_fused").
    params = [p for group in groups for p in group["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    total_updates = cfg.steps * cfg.ppo_epochs * (cfg.batch_size // cfg.mini_batch_size)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_updates),
                              num_training_steps=total_updates)
    return optimizer, scheduler


def controllers(cfg):
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    return kl_ctl, RunningMoments()


def maybe_resume(cfg, run, controllers_by_name: dict) -> int:
    """Load the newest whole checkpoint under output_dir/checkpoints (when cfg.resume); return its step."""
    from rlhf_stack.ppo.state import CHECKPOINT_PREFIX, completed_checkpoints, load_checkpoint_state

    root = Path(cfg.output_dir) / "checkpoints"
    steps = completed_checkpoints(root)
    if not cfg.resume or not steps:
        return 0
    path = root / f"{CHECKPOINT_PREFIX}{steps[-1]}"
    step = load_checkpoint_state(path, model=run.accelerator.unwrap_model(run.model), optimizer=run.optimizer,
                                 scheduler=run.scheduler, controllers=controllers_by_name, accelerator=run.accelerator)
    if run.accelerator.is_main_process:
        print(f"[ppo] resuming from {path} (step {step} of {cfg.steps})")
    return step


# ---- after the loop -----------------------------------------------------------------------------

SUMMARY_KEYS = ("score", "reward", "kl", "kl_coef", "entropy", "response_length", "policy_loss", "value_loss",
                "approx_kl", "clipfrac", "ptx_loss")


def summarize(records: list[dict], runtime_s: float, steps_run: int) -> dict:
    """Final metrics: first and last step values, means over the last 10% of steps, speed, memory."""
    if not records:
        return {}
    tail = records[-max(1, len(records) // 10):]
    metrics: dict = {"steps": records[-1]["step"], "train_runtime_s": runtime_s,
                     "steps_per_s": steps_run / max(runtime_s, 1e-9),
                     "peak_memory_mb": max(r["peak_memory_mb"] for r in records)}
    for key in SUMMARY_KEYS:
        if key in records[-1]:
            metrics[f"{key}_first"] = records[0][key]
            metrics[key] = sum(r[key] for r in tail) / len(tail)
    return metrics


@torch.no_grad()
def eval_score(run, cfg, unwrapped) -> float | None:
    """Mean raw reward of sampled responses to held-out prompts (this process's share, averaged)."""
    from rlhf_stack.ppo.rollout import encode_prompts, generate, left_pad, truncate_at_eos

    acc, tok = run.accelerator, run.tokenizer
    if not run.eval_rows or not cfg.eval_max_prompts:
        return None
    rows = run.eval_rows[:cfg.eval_max_prompts][acc.process_index::acc.num_processes]
    total = torch.zeros(2, device=acc.device)
    for start in range(0, len(rows), cfg.batch_size):
        batch = rows[start:start + cfg.batch_size]
        ids, mask = left_pad(encode_prompts(batch, tok, 10**9, cfg.prompts.path), tok.pad_token_id, acc.device)
        response_ids, _, _ = truncate_at_eos(generate(unwrapped.policy, ids, mask, run.gen_config),
                                             tok.eos_token_id, tok.pad_token_id)
        scores, _ = run.reward([r["prompt"] for r in batch], tok.batch_decode(response_ids, skip_special_tokens=True))
        total += torch.tensor([float(scores.sum()), len(batch)], device=acc.device)
    total = acc.reduce(total, "sum")
    return float(total[0] / total[1])
