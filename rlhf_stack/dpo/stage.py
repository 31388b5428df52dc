"""DPO: the offline route from the SFT policy, on the same K-wise rankings as the reward model.

`train_dpo(DPOConfig) -> StageResult`. Direct Preference Optimization (Rafailov et al. 2023) fits
the policy so that its implicit reward beta * log pi(y|x) / pi_ref(y|x) orders each ranking's
completions the way the labelers did, with no reward model and no sampling. A batch element is one
whole ranking: each of its K completions' log-probability is computed once under the policy and
once under the reference, the prompt encoded once (the reward stage's shared-prompt batching), and
every C(K,2) comparison comes from those K numbers, where pairwise DPO would run 2*C(K,2)
sequences through each model. Losses (`functional.LOSSES`): `sigmoid` (DPO over every strictly
ordered pair), `ipo` (Azar et al. 2023), `plackett_luce` (listwise DPO over the whole ranking).

The reference is the SFT model, held the PPO way (`models.py`): under LoRA, one base copy serves
policy and reference. Metrics on the held-out rankings: the reward model's ranking metrics on the
implicit rewards (pairwise accuracy first), the mean implicit-reward margin, and the log-ratio of
the best completions (`trainer.eval_metrics_fn`). The checkpoint is the policy alone: a plain peft
adapter over the SFT base, or a full model.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from rlhf_stack.config import Config, DataConfig, ModelConfig, StageResult, TrainingConfig
from rlhf_stack.data import load_ranking_splits
from rlhf_stack.dpo.batching import PreferenceCollator, encode_preferences
from rlhf_stack.dpo.functional import LOSSES
from rlhf_stack.errors import ConfigError, ModelNotFoundError


class DPOConfig(Config):
    """Direct preference optimisation of the SFT policy on K-wise rankings (no reward model, no PPO)."""

    policy: ModelConfig
    """The policy init and reference: the SFT checkpoint (`@sft` in a recipe). `tuning: lora` keeps one
    base copy: an SFT LoRA adapter is trained further as a copy, the original frozen beside it as the
    reference (its own r, alpha and target modules; `lora` settings then do not apply); from a full
    SFT model the policy is a new adapter and the reference the model with adapters disabled.
    `full` / `freeze` hold a frozen copy of the SFT model as the reference. `tuning: peft` takes the
    methods that can be switched off (dora, rslora, ia3, loha, lokr, oft, boft) the LoRA way; PiSSA/OLoRA,
    prompt/prefix tuning and bottleneck adapters are refused (README "PEFT methods")."""
    data: DataConfig
    """Rankings (`{prompt, completions, ranks}` rows; TRL `{prompt, chosen, rejected}` rows are K=2).
    The held-out ones (eval_path / eval_fraction) give the eval metrics and pick the best checkpoint."""
    train: TrainingConfig = TrainingConfig()
    """Optimisation settings. `batch_size` counts RANKINGS (each brings its K completions), or
    completion sets under `group_labelers`. DPO wants a lower learning rate than SFT (TRL's default
    is 1e-6 for full tuning; ~5e-6..5e-5 with LoRA)."""
    output_dir: str = "outputs/dpo"
    """Where the checkpoint goes (the policy's adapter or weights + tokenizer + stage.json)."""
    loss: Literal["sigmoid", "ipo", "plackett_luce"] = "sigmoid"
    """`sigmoid`: DPO's -log sigmoid(beta * log-ratio gap), mean over a ranking's strictly ordered
    pairs (ties give none). `ipo`: IPO's squared distance of the log-ratio gap from 1/(2 beta), over the
    same pairs. `plackett_luce`: Plackett-Luce likelihood of the whole ranking (ties: Breslow)."""
    beta: float = Field(0.1, gt=0.0)
    """Strength of the pull towards the reference: the implicit reward is beta * log pi/pi_ref
    (for `ipo`, the paper's tau). Smaller beta lets the policy move further."""
    max_length: int = Field(512, ge=1)
    """Tokens per (prompt, completion) sequence; longer ones lose the start of the prompt (counted)."""
    share_prompt: bool = True
    """Encode the prompt tokens a ranking's K completions share once and reuse their key/value cache
    for all K, under the policy and under the reference (same log-probabilities up to float rounding).
    Off under `policy.gradient_checkpointing` and under FSDP (see `shares_prompt`)."""
    group_labelers: bool = False
    """Rankings of the same prompt and completions (one set ranked by several labelers, as the
    labeling tool collects them) form one example: the policy and the reference compute each
    completion's log-probability once per step, and each ranking keeps its own loss term, weighted
    as before (the same loss and gradients as those rankings side by side in one batch, tested).
    `train.batch_size` then counts completion sets, as in the reward stage's `group_labelers`."""
    keep_checkpoints: bool = False
    """Keep the intermediate Trainer checkpoints (optimizer states) after a successful run."""

    @field_validator("policy")
    @classmethod
    def _method_fits(cls, policy: ModelConfig) -> ModelConfig:
        from rlhf_stack.peft_methods import check_stage

        check_stage(policy, "dpo")
        return policy

    @property
    def shares_prompt(self) -> bool:
        """Prompt sharing in effect: it needs the prompt's key/value cache, which transformers drops
        under gradient checkpointing while training, so gradient checkpointing turns it off. So
        does an FSDP launch: the cache carries gradients past the blocks' outputs, where FSDP2's
        backward hooks would gather the parameters, and the backward fails."""
        from rlhf_stack.distributed import fsdp_requested

        return self.share_prompt and not self.policy.gradient_checkpointing and not fsdp_requested()


def train_dpo(cfg: DPOConfig, callbacks: list | None = None) -> StageResult:
    """Train the policy with DPO; return its checkpoint directory and metrics (also in stage.json).

    callbacks: extra `transformers.TrainerCallback`s (progress bars, timers, trackers).
    """
    from transformers import set_seed

    from rlhf_stack import modeling, trainer_guard, training
    from rlhf_stack.dpo.models import build_policy, policy_only
    from rlhf_stack.dpo.trainer import RankingDPOTrainer, eval_metrics_fn

    output_dir = Path(cfg.output_dir)
    # 1. data: validated rankings (all-tied ones kept out, counted), every completion tokenised once
    train_rows, eval_rows, n_all_tied = load_ranking_splits(cfg.data, cfg.train.seed, "dpo")
    _check_policy_path(cfg.policy.name_or_path)
    tokenizer = modeling.load_tokenizer(cfg.policy.tokenizer or cfg.policy.name_or_path, cfg.policy.chat_template)
    train_ds, n_truncated = encode_preferences(train_rows, tokenizer, cfg.max_length, cfg.group_labelers)
    eval_ds, _ = encode_preferences(eval_rows, tokenizer, cfg.max_length, cfg.group_labelers)

    # 2. policy + frozen reference (one base copy under LoRA)
    training.begin_stage(output_dir)
    set_seed(cfg.train.seed)
    model, reference, info = build_policy(cfg.policy)

    # 3. Trainer with the K-wise DPO loss; early stopping on held-out implicit-reward accuracy
    has_eval = bool(eval_ds)
    args, callbacks = training.ranking_trainer_setup(cfg.train, output_dir, has_eval=has_eval, callbacks=callbacks)
    trainer = RankingDPOTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds or None,
        data_collator=PreferenceCollator(tokenizer.pad_token_id, cfg.shares_prompt), processing_class=tokenizer,
        callbacks=callbacks, compute_metrics=eval_metrics_fn() if has_eval else None,
        objective=partial(LOSSES[cfg.loss], beta=cfg.beta), reference=reference, beta=cfg.beta)
    guard = trainer_guard.NonFiniteCallback.attach(trainer, cfg.train.on_nonfinite, "dpo", output_dir)

    # 4. train, resuming from the newest whole checkpoint in output_dir when there is one
    metrics: dict = {"n_train": len(train_rows), "n_eval": len(eval_rows), "n_train_sets": len(train_ds),
                     "n_eval_sets": len(eval_ds), "n_all_tied_skipped": n_all_tied,
                     "n_truncated": n_truncated, "n_train_pairs": sum(r["n_pairs"] for r in train_ds),
                     "mean_k": sum(len(r["ranks"]) for r in train_ds) / len(train_ds),
                     "share_prompt": cfg.shares_prompt,
                     "models": {"layout": info.layout, "reference": info.reference, "base_model": info.base_model}}
    resume = training.resume_checkpoint(trainer, output_dir, "dpo")
    with training.frozen_weights_packed(cfg.train, trainer.model, reference.ref_model):
        result = trainer.train(resume_from_checkpoint=resume)
    metrics.update(training.train_metrics(result, trainer, resume), **guard.metrics())

    # 5. final eval (the best model), checkpoint (the policy alone) + stage.json
    if has_eval:
        metrics.update(training.best_eval_metrics(trainer, training.RANKING_METRIC))
    model = policy_only(trainer.model, reference).eval()
    training.write_log(output_dir, trainer.state.log_history)
    record = training.stage_record("dpo", cfg, cfg.policy, model, training.data_fingerprints(cfg.data), metrics)
    training.finish_stage(model, tokenizer, output_dir, record, cfg.keep_checkpoints)
    return StageResult(output_dir, metrics)


def _check_policy_path(name_or_path: str) -> None:
    from rlhf_stack.modeling import resolve_model_path

    try:
        resolve_model_path(name_or_path)
    except ModelNotFoundError as exc:
        raise ConfigError(f"policy.name_or_path: {exc} (run the SFT stage first, or fix the path)") from None
