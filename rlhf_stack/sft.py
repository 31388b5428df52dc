"""Stage 1: supervised instruction tuning (and continued pretraining on a corpus).

`train_sft(SFTConfig) -> StageResult`, built on TRL's SFTTrainer: the chat template is applied,
the loss covers response tokens only (prompt tokens carry label -100), eval loss drives early
stopping and the best checkpoint is kept. With `data_kind: corpus` the same stage is
self-supervised continued pretraining (loss on every token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator

from rlhf_stack.config import Config, DataConfig, ModelConfig, StageResult, TrainingConfig
from rlhf_stack.data import LINE_KEY, load_rows, prompt_messages, split_train_eval
from rlhf_stack.errors import DataError


class SFTConfig(Config):
    """Supervised fine-tuning: instructions -> a policy (InstructGPT step 1)."""

    model: ModelConfig
    """The model to tune: base LM (hub id, local dir, alias) and tuning method."""
    data: DataConfig
    """Training data: `instructions` rows, or `corpus` rows when data_kind is corpus."""
    data_kind: Literal["instructions", "corpus"] = "instructions"
    """`instructions`: prompt -> response pairs (loss on responses). `corpus`: plain text (loss on all)."""
    train: TrainingConfig = TrainingConfig()
    """Optimisation settings."""
    output_dir: str = "outputs/sft"
    """Where the checkpoint goes (model/adapter + tokenizer + stage.json; resume states inside)."""
    max_length: int = 512
    """Tokens per example (prompt + response); longer examples are truncated and counted."""
    completion_only_loss: bool = True
    """Loss on response tokens only. False trains on the prompt tokens too."""
    packing: bool = False
    """Pack several examples into one max_length row (faster on GPU; needs flash attention to be exact)."""
    eval_before_training: bool = True
    """Measure the eval loss of the untuned model first, so the gain is reported in stage.json."""
    keep_checkpoints: bool = False
    """Keep the intermediate Trainer checkpoints (optimizer states) after a successful run."""

    @field_validator("model")
    @classmethod
    def _method_fits(cls, model: ModelConfig) -> ModelConfig:
        from rlhf_stack.peft_methods import check_stage

        check_stage(model, "sft")
        return model


def train_sft(cfg: SFTConfig, callbacks: list | None = None) -> StageResult:
    """Run SFT; return the checkpoint directory and its metrics (also stored in stage.json).

    callbacks: extra `transformers.TrainerCallback`s (progress bars, timers, trackers).
    """
    from rlhf_stack import trainer_guard, training

    output_dir = Path(cfg.output_dir)
    # 1-3. data, model + tuning method, TRL trainer (see build_sft_trainer)
    trainer, metrics = build_sft_trainer(cfg)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    guard = trainer_guard.NonFiniteCallback.attach(trainer, cfg.train.on_nonfinite, "sft", output_dir)

    # 4. train (resuming from the newest whole checkpoint in output_dir when there is one)
    resume = training.resume_checkpoint(trainer, output_dir, "sft")
    if trainer.eval_dataset is not None and cfg.eval_before_training and resume is None:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    with training.frozen_weights_packed(cfg.train, trainer.model):
        result = trainer.train(resume_from_checkpoint=resume)
    runtime = max(result.metrics["train_runtime"], 1e-9)
    tokens_seen = max((e.get("num_tokens", 0) for e in trainer.state.log_history), default=0)
    metrics.update(train_loss=result.training_loss, train_runtime_s=runtime, resumed_from=resume,
                   train_samples_per_s=result.metrics["train_samples_per_second"],
                   train_tokens_per_s=float(tokens_seen) / runtime, steps=trainer.state.global_step,
                   **training.launch_metrics(trainer.model), **guard.metrics())

    # 5. final eval (on the best model: read from the evaluation that picked it when logged) and
    #    the checkpoint with stage.json
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = training.best_eval_metrics(trainer, "eval_loss")["eval_loss"]
        if "eval_loss_before" in metrics:
            metrics["eval_loss_drop"] = metrics["eval_loss_before"] - metrics["eval_loss"]
    training.write_log(output_dir, trainer.state.log_history)
    record = training.stage_record("sft", cfg, cfg.model, trainer.model, training.data_fingerprints(cfg.data),
                                   metrics)
    training.finish_stage(trainer.model, trainer.processing_class, output_dir, record, cfg.keep_checkpoints)
    return StageResult(output_dir, metrics)


def build_sft_trainer(cfg: SFTConfig):
    """(TRL SFTTrainer ready to train, metrics so far). Marks output_dir unfinished."""
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from rlhf_stack import modeling, training

    # 1. data: validated rows -> TRL conversational prompt/completion (or text) records
    tokenizer = modeling.load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.model.chat_template)
    train_rows, eval_rows = _load_splits(cfg)
    lengths = _check_lengths(cfg, tokenizer, train_rows)
    train_ds, eval_ds = _to_dataset(train_rows, cfg.data_kind), _to_dataset(eval_rows, cfg.data_kind)

    # 2. model + tuning method (LoRA / freeze / full), seeded as the reward and DPO stages are: the
    #    adapter init must not depend on what ran before in this process (a resume re-creates it)
    training.begin_stage(Path(cfg.output_dir))
    set_seed(cfg.train.seed)
    model = modeling.apply_tuning(modeling.load_causal_lm(cfg.model), cfg.model, "CAUSAL_LM")

    # 3. TRL SFTTrainer with early stopping on eval loss and the best checkpoint kept
    args = TRLSFTConfig(
        **training.trainer_arguments(cfg.train, Path(cfg.output_dir), has_eval=eval_ds is not None,
                                     metric="eval_loss", greater_is_better=False),
        max_length=cfg.max_length, packing=cfg.packing,
        completion_only_loss=cfg.completion_only_loss if cfg.data_kind == "instructions" else None,
    )
    callbacks = []
    if eval_ds is not None and cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = _labelled_positions_only(training.with_atomic_checkpoints(SFTTrainer))(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        callbacks=callbacks)
    return trainer, {"n_train": len(train_rows), "n_eval": len(eval_rows), **lengths}


def _labelled_positions_only(trainer_class: type) -> type:
    """`trainer_class` (TRL's SFTTrainer) with its LM head run on the labelled positions only, on every device.

    TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`) scores only the positions that
    carry a label where Triton runs (CUDA, XPU); elsewhere it scores every position, prompt and
    padding included, so that tile shapes stay fixed for compilers that would otherwise recompile
    per batch. On a CPU nothing recompiles, and with completion-only loss most positions carry no
    label: the quickstart's SFT spent ~40% of its step in that head. The loss is the same up to float
    rounding (tests/stages/test_sft_stage.py). When TRL no longer has the switch, nothing changes.
    """
    from contextlib import contextmanager

    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)

    @contextmanager
    def compact():
        if decide is None:
            yield
            return
        trl_utils._use_triton = lambda device: device.type == "cpu" or decide(device)
        try:
            yield
        finally:
            trl_utils._use_triton = decide

    class LabelledOnly(trainer_class):
        def compute_loss(self, *args, **kwargs):
            with compact():
                return super().compute_loss(*args, **kwargs)

    LabelledOnly.__name__ = LabelledOnly.__qualname__ = trainer_class.__name__
    return LabelledOnly


def _load_splits(cfg: SFTConfig) -> tuple[list[dict], list[dict]]:
    data = cfg.data
    rows = load_rows(data.path, cfg.data_kind, columns=data.columns, split=data.split, max_rows=data.max_rows,
                     keep_lines=True)
    if data.eval_path:
        return rows, load_rows(data.eval_path, cfg.data_kind, keep_lines=True)
    train, held = split_train_eval(rows, data.eval_fraction, seed=cfg.train.seed)
    return train, held


def to_prompt_completion(row: dict) -> dict:
    """Our instruction row -> TRL's conversational prompt/completion record."""
    if "messages" in row:
        # Multi-turn: the loss covers the last assistant turn; earlier turns are context.
        return {"prompt": row["messages"][:-1], "completion": [row["messages"][-1]]}
    *prompt, answer = prompt_messages(row["prompt"], row["response"])
    return {"prompt": prompt, "completion": [answer]}


def _to_dataset(rows: list[dict], kind: str):
    from datasets import Dataset

    if not rows:
        return None
    if kind == "corpus":
        return Dataset.from_list([{"text": r["text"]} for r in rows])
    return Dataset.from_list([to_prompt_completion(r) for r in rows])


def _check_lengths(cfg: SFTConfig, tokenizer, rows: list[dict]) -> dict:
    """Token counts; a prompt that leaves no room for its response is an error naming its line."""
    total, truncated, problems = 0, 0, []
    for row in rows:
        if cfg.data_kind == "corpus":
            n_prompt, n_all = 0, len(tokenizer(row["text"])["input_ids"])
        else:
            record = to_prompt_completion(row)
            n_prompt = len(tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True,
                                                         tokenize=True, return_dict=True)["input_ids"])
            n_all = len(tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=True,
                                                      return_dict=True)["input_ids"])
            if n_prompt >= cfg.max_length and len(problems) < 10:
                problems.append(f"{cfg.data.path}:{row.get(LINE_KEY, '?')}: the prompt is {n_prompt} tokens, "
                                f"max_length is {cfg.max_length}: no room for the response")
        total += min(n_all, cfg.max_length)
        truncated += n_all > cfg.max_length
    if problems:
        raise DataError("\n".join(problems) + "\n(raise max_length or shorten these prompts)")
    if truncated:
        print(f"[sft] {truncated} of {len(rows)} examples are longer than max_length={cfg.max_length} "
              "and will be truncated")
    return {"tokens": total, "n_truncated": truncated}
