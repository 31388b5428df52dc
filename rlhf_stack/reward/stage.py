"""Stage 2: a reward model trained from K-wise human rankings (InstructGPT, Ouyang et al. 2022, §3.5).

`train_reward(RewardConfig) -> StageResult`. A batch element is one whole ranking: its K
completions are scored once each (K forward sequences, not the 2*C(K,2) of pairwise expansion)
and all C(K,2) comparisons come from those K scores, so one prompt's comparisons never straddle
batches. The outer loop is transformers' Trainer (`trainer.py` plugs in `compute_loss`); rankings
become tensors in `batching.py`; the losses are pure functions in `functional.py`.

Initialisation (`init_from`):
- None: the base model of `model.name_or_path` with a fresh score head;
- a peft adapter checkpoint (e.g. the SFT stage's) of the same kind as this stage's method (LoRA,
  DoRA, rsLoRA and a saved PiSSA/OLoRA are one kind; IA3, LoHa, ... each its own): the SFT adapter
  keeps training as a sequence-classification adapter on the ORIGINAL base, plus the new score
  head; the reward checkpoint stays one plain adapter over that base (its shape from the SFT
  adapter; `last_n_layers` then only limits which of its layers keep training); a bottleneck
  checkpoint with method bottleneck likewise;
- any other checkpoint: loaded as a sequence classifier (a LoRA adapter merged first), then the
  stage's tuning method is applied.

After training, `normalize_with` sets a bias so the reward of a reference set of demonstrations
has mean 0 (InstructGPT §3.5); it is stored in stage.json (`reward_bias`) and added by
`scorer.RewardScorer` everywhere the RM is used.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import ValidationInfo, field_validator

from rlhf_stack.config import Config, DataConfig, DataPath, ModelConfig, StageResult, TrainingConfig
from rlhf_stack.data import load_ranking_splits, load_rows, row_prompt
from rlhf_stack.errors import ConfigError
from rlhf_stack.reward.batching import RankingCollator, encode_conversation, encode_rankings
from rlhf_stack.reward.functional import center_penalty, listwise_loss, ranking_loss
from rlhf_stack.reward.negatives import add_off_prompt_negatives, off_prompt_accuracy
from rlhf_stack.reward.scorer import BIAS_KEY, score_sequences


class RewardConfig(Config):
    """Reward model from rankings (InstructGPT step 2)."""

    model: ModelConfig
    """Base model (hub id, local dir, alias) whose backbone gets a one-output score head; tuning method."""
    data: DataConfig
    """Rankings (`{prompt, completions, ranks}` rows; TRL `{prompt, chosen, rejected}` rows are K=2)."""
    train: TrainingConfig = TrainingConfig()
    """Optimisation settings. `batch_size` counts RANKINGS (each brings its K completions), or
    completion sets under `group_labelers`."""
    output_dir: str = "outputs/reward"
    """Where the checkpoint goes (model/adapter + score head + tokenizer + stage.json)."""
    init_from: str | None = None
    """Checkpoint to start from instead of the base model, e.g. the SFT checkpoint (`@sft` in a
    recipe): InstructGPT initialises its RM from the SFT model. See the module docstring for LoRA."""
    max_length: int = 512
    """Tokens per (prompt, completion) sequence; longer ones lose the start of the prompt."""
    loss: Literal["pairwise", "listwise"] = "pairwise"
    """`pairwise`: InstructGPT's mean -log sigmoid(r_i - r_j) over a ranking's pairs. `listwise`:
    Plackett-Luce likelihood of the whole ranking (ties: Breslow)."""
    margin: float = 0.0
    """Pairwise only: a pair must win by margin * (rank gap) before its loss fades (0: no margin)."""
    center_coef: float = 0.0
    """Weight of the penalty (mean reward of a ranking)^2, keeping rewards centred (0: off; ~0.01)."""
    micro_batch_completions: int | None = None
    """Forward/backward at most this many completions at once (memory bound for large K); the loss
    still sees whole rankings (gradients are cached per completion score, one extra forward).
    None: a batch's completions go through in one pass."""
    share_prompt: bool = True
    """Encode the prompt tokens a ranking's K completions share once and reuse their key/value
    cache for all K (same scores up to float rounding; on the demo data 204 instead of 333 tokens
    a ranking, ~1.2x faster on CPU).
    Turn off for a model whose cache cannot be indexed by batch row. Off under
    `model.gradient_checkpointing` and under FSDP (see `shares_prompt`)."""
    group_labelers: bool = False
    """Rankings of the same prompt and completions (one set ranked by several labelers, as the
    labeling tool collects them) form one example: its completions are scored once per step, and
    each ranking keeps its own loss term, weighted as before. Each completion is then fitted once
    per epoch, not once per labeler (InstructGPT trains on a prompt's comparisons as one batch
    element for that reason). `train.batch_size` then counts completion sets: on the demo data
    (2 labelers a set) batch_size 2 keeps 4 rankings a step, at half the tokens. Off: every
    ranking is its own example."""
    off_prompt_negatives: int = 0
    """Each training ranking gains this many completions taken from rankings of OTHER prompts,
    ranked below all of its own (`negatives.py`): labelers rank samples of one prompt, so without
    them nothing teaches the RM that an answer to another question is worse, and PPO can drift
    off topic unpunished. One ranking of K then scores K + n completions. The held-out rankings
    stay as labelled; `eval_off_prompt_accuracy` (reported whatever this is) measures how often
    the RM puts a held-out answer above an off-prompt one. 0: off. On the demo, 1 took that from 49%
    to 74% and the labelers' held-out pairs from 72% to 66%, and did not clearly raise PPO's gold wins
    (benchmarks/RESULTS.md, fifteenth session)."""
    normalize_with: DataPath | None = None
    """Instructions/demonstrations file (e.g. the SFT data): after training, a bias makes their mean
    reward 0. None: no bias."""
    normalize_max_rows: int = 512
    """Use at most this many rows of `normalize_with`."""
    eval_before_training: bool = False
    """Measure the untrained model's eval metrics first (reported with the suffix `_before`)."""
    keep_checkpoints: bool = False
    """Keep the intermediate Trainer checkpoints (optimizer states) after a successful run."""

    @property
    def shares_prompt(self) -> bool:
        """Prompt sharing in effect: it needs the prompt's key/value cache, which transformers drops
        under gradient checkpointing while training, so gradient checkpointing turns it off. So
        does an FSDP launch: the cache carries gradients past the blocks' outputs, where FSDP2's
        backward hooks would gather the parameters, and the backward fails."""
        from rlhf_stack.distributed import fsdp_requested

        return self.share_prompt and not self.model.gradient_checkpointing and not fsdp_requested()

    @field_validator("model")
    @classmethod
    def _method_fits(cls, model: ModelConfig) -> ModelConfig:
        from rlhf_stack.peft_methods import check_stage

        check_stage(model, "reward")
        return model

    @field_validator("margin", "center_coef", "off_prompt_negatives")
    @classmethod
    def _non_negative(cls, value: float, info: ValidationInfo) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        if info.field_name == "margin" and value and info.data.get("loss") == "listwise":
            raise ValueError("margin applies to the pairwise loss only; set margin: 0 with loss: listwise")
        return value

    @field_validator("micro_batch_completions", "normalize_max_rows", "max_length")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be >= 1")
        return value


def train_reward(cfg: RewardConfig, callbacks: list | None = None) -> StageResult:
    """Train the reward model; return its checkpoint directory and metrics (also in stage.json).

    callbacks: extra `transformers.TrainerCallback`s (progress bars, timers, trackers).
    """
    from transformers import set_seed

    from rlhf_stack import modeling, trainer_guard, training
    from rlhf_stack.reward.trainer import RankingTrainer, eval_metrics_fn

    output_dir = Path(cfg.output_dir)
    # 1. data: validated rankings, all-tied rows kept out (counted), every completion tokenised once
    train_rows, eval_rows, n_all_tied = load_ranking_splits(cfg.data, cfg.train.seed, "reward")
    labelled_rows = len(train_rows)
    try:
        train_rows = add_off_prompt_negatives(train_rows, cfg.off_prompt_negatives, cfg.train.seed)
    except ValueError as exc:
        raise ConfigError(f"off_prompt_negatives: {exc} ({cfg.data.path})") from None
    _check_init_from(cfg.init_from)
    tokenizer = modeling.load_tokenizer(cfg.model.tokenizer or cfg.init_from or cfg.model.name_or_path,
                                        cfg.model.chat_template)
    train_ds, n_truncated = encode_rankings(train_rows, tokenizer, cfg.max_length, group_labelers=cfg.group_labelers)
    eval_ds, _ = encode_rankings(eval_rows, tokenizer, cfg.max_length, group_labelers=cfg.group_labelers)

    # 2. model: sequence classifier with one output (random head), tuning method applied
    training.begin_stage(output_dir)
    set_seed(cfg.train.seed)
    model = load_reward_model(cfg, tokenizer)

    # 3. Trainer with the K-wise loss; early stopping on eval pairwise accuracy, best model kept
    has_eval = bool(eval_ds)
    args, callbacks = training.ranking_trainer_setup(cfg.train, output_dir, has_eval=has_eval, callbacks=callbacks)
    trainer = RankingTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds or None,
        data_collator=RankingCollator(tokenizer.pad_token_id, cfg.shares_prompt), processing_class=tokenizer, callbacks=callbacks,
        compute_metrics=eval_metrics_fn() if has_eval else None,
        objective=make_objective(cfg), micro_batch_completions=cfg.micro_batch_completions)
    guard = trainer_guard.NonFiniteCallback.attach(trainer, cfg.train.on_nonfinite, "reward", output_dir)

    # 4. train, resuming from the newest whole checkpoint in output_dir when there is one
    metrics: dict = {"n_train": labelled_rows, "off_prompt_negatives": cfg.off_prompt_negatives,
                     "n_eval": len(eval_rows), "n_train_sets": len(train_ds),
                     "n_eval_sets": len(eval_ds), "n_all_tied_skipped": n_all_tied,
                     "n_truncated": n_truncated, "n_train_pairs": sum(r["n_pairs"] for r in train_ds),
                     "mean_k": sum(len(r["ranks"]) for r in train_ds) / len(train_ds), "share_prompt": cfg.shares_prompt}
    resume = training.resume_checkpoint(trainer, output_dir, "reward")
    if has_eval and cfg.eval_before_training and resume is None:
        metrics.update({f"{k}_before": v for k, v in training.eval_metrics(trainer).items()})
    with training.frozen_weights_packed(cfg.train, trainer.model):
        result = trainer.train(resume_from_checkpoint=resume)
    metrics.update(training.train_metrics(result, trainer, resume), **guard.metrics())

    # 5. final eval (best model), normalisation bias, checkpoint + stage.json
    if has_eval:
        metrics.update(training.best_eval_metrics(trainer, training.RANKING_METRIC))
        # The noise ceiling of eval_pairwise_accuracy: how often the annotators of these same
        # held-out rankings order a pair alike (None when no prompt has two annotators).
        from rlhf_stack.metrics.agreement import annotator_agreement

        metrics["eval_labeler_agreement"] = annotator_agreement(eval_rows)
    model = trainer.model.eval()
    if has_eval:
        metrics["eval_off_prompt_accuracy"] = off_prompt_accuracy(
            model, tokenizer, eval_rows, cfg.max_length, cfg.train.batch_size * 4, cfg.train.seed)
    norm = reward_normalization(model, tokenizer, cfg)
    metrics["bias"] = norm["bias"]
    training.write_log(output_dir, trainer.state.log_history)
    fingerprints = training.data_fingerprints(cfg.data)
    if cfg.normalize_with:
        fingerprints.update(training.data_fingerprints(DataConfig(path=cfg.normalize_with)))
    record = training.stage_record("reward", cfg, cfg.model, model, fingerprints, metrics)
    record.update({BIAS_KEY: norm["bias"], "normalization": norm, "init_from": cfg.init_from})
    training.finish_stage(model, tokenizer, output_dir, record, cfg.keep_checkpoints)
    return StageResult(output_dir, metrics)


# ---- 2. model -------------------------------------------------------------------------------------


def load_reward_model(cfg: RewardConfig, tokenizer):
    """One-output sequence classifier with the stage's tuning method (see module docstring)."""
    from rlhf_stack import bottleneck, modeling

    init = cfg.init_from
    if init and _continues_sft_adapter(cfg, init):
        model = _continue_adapter(init, cfg, tokenizer)
    elif init and cfg.model.adapter_method == "bottleneck" and bottleneck.is_bottleneck_dir(init):
        # the SFT bottleneck adapters keep training, with a new score head
        model = modeling.load_sequence_classifier(cfg.model.model_copy(update={"name_or_path": init}), merge=False)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.rlhf_bottleneck["task_type"] = "SEQ_CLS"
        model.score.requires_grad_(True)
    else:
        if init:
            modeling.check_trainable_init(init, "init_from")
        source = cfg.model.model_copy(update={"name_or_path": init}) if init else cfg.model
        model = modeling.load_sequence_classifier(source, merge=True)
        model.config.pad_token_id = tokenizer.pad_token_id
        model = modeling.apply_tuning(model, cfg.model, "SEQ_CLS")
    return model


def _continues_sft_adapter(cfg: RewardConfig, init: str) -> bool:
    """Whether init_from is a peft adapter of the same kind as this stage's method (LoRA and DoRA are
    one kind): it then keeps training on the original base; any other init is merged first."""
    from peft import PeftConfig

    from rlhf_stack import modeling
    from rlhf_stack.peft_methods import METHODS, PEFT_TYPES

    method = cfg.model.adapter_method
    if method is None or not modeling.is_adapter_dir(init):
        return False
    return str(PeftConfig.from_pretrained(init).peft_type.value) == PEFT_TYPES.get(METHODS[method].peft_class)


def _check_init_from(init: str | None) -> None:
    from rlhf_stack.errors import ModelNotFoundError
    from rlhf_stack.modeling import resolve_model_path

    try:
        if init:
            resolve_model_path(init)
    except ModelNotFoundError as exc:
        raise ConfigError(f"init_from: {exc} (run the SFT stage first, or fix the path)") from None


def _continue_adapter(init: str, cfg: RewardConfig, tokenizer):
    """The SFT adapter re-opened as a SEQ_CLS adapter (+ trainable score head) on its base."""
    import dataclasses

    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from rlhf_stack import modeling

    settings = cfg.model.peft_settings
    base_cfg = cfg.model.model_copy(update={"name_or_path": modeling.adapter_base(init)})
    base = modeling.load_sequence_classifier(base_cfg, merge=True)
    base.config.pad_token_id = tokenizer.pad_token_id
    modeling.configure_activations(base, cfg.model)  # apply_tuning is not called on this path
    sft = PeftConfig.from_pretrained(init)
    changes = {"task_type": "SEQ_CLS", "modules_to_save": ["score"], "inference_mode": False}
    if hasattr(sft, "lora_dropout"):
        changes["lora_dropout"] = settings.options.get("lora_dropout", sft.lora_dropout)
    model = get_peft_model(base, dataclasses.replace(sft, **changes))
    state = get_peft_model_state_dict(model)  # fresh score head + empty adapters, in peft's saved naming
    sft_weights = load_peft_weights(init)
    unknown = sorted(set(sft_weights) - set(state))
    if unknown:
        raise ConfigError(f"init_from: {init}: adapter weights do not fit the base model ({unknown[:3]})")
    set_peft_model_state_dict(model, {**state, **sft_weights})
    keep = settings.last_n_layers
    if keep:  # train only the top blocks' adapters: backward then stops at the lowest trainable block
        blocks = modeling.transformer_blocks(model.get_base_model())
        for block in blocks[:max(0, len(blocks) - keep)]:
            block.requires_grad_(False)
    return model


# ---- 3. loss ----------------------------------------------------------------------------------------


def make_objective(cfg: RewardConfig):
    """scores (B, K), ranks (B, K) -> scalar: the configured loss (+ centring penalty), chosen once."""
    base = partial(ranking_loss, margin=cfg.margin) if cfg.loss == "pairwise" else listwise_loss
    if not cfg.center_coef:
        return base
    return lambda scores, ranks: base(scores, ranks) + cfg.center_coef * center_penalty(scores, ranks)


# ---- 5. normalisation --------------------------------------------------------------------------------


def reward_normalization(model, tokenizer, cfg: RewardConfig) -> dict:
    """{bias, n, mean_before, std}: bias = -mean reward of the reference demonstrations (0 without)."""
    if not cfg.normalize_with:
        return {"bias": 0.0, "path": None}
    rows = load_rows(cfg.normalize_with, "instructions", max_rows=cfg.normalize_max_rows)
    seqs = []
    for row in rows:
        response = row["messages"][-1]["content"] if "messages" in row else row["response"]
        seqs.append(encode_conversation(tokenizer, row_prompt(row), response, cfg.max_length)[0])
    device = next(model.parameters()).device
    scores = score_sequences(model, seqs, tokenizer.pad_token_id, cfg.train.batch_size * 4, device)
    mean = float(scores.mean())
    return {"bias": -mean, "path": cfg.normalize_with, "n": len(seqs), "mean_before": mean,
            "std": float(scores.std()) if len(seqs) > 1 else 0.0}
