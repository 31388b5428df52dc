"""What the Trainer-based stages (SFT, reward model, DPO) share: arguments, resume, evals, logs, stage.json.

A stage's `output_dir` is its checkpoint: model files + tokenizer + `stage.json` (written last, the
commit marker), with Trainer states for resume under `output_dir/checkpoints/` and the training log
under `output_dir/logs/`.
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhf_stack.config import DataConfig, ModelConfig, TrainingConfig, config_to_dict
from rlhf_stack.data import fingerprint
from rlhf_stack.modeling import count_parameters, read_stage_info, save_checkpoint
from rlhf_stack.pipeline.layout import CHECKPOINTS_DIR, LOGS_DIR, STAGE_FILE, TRAIN_LOG

RANKING_METRIC = "eval_pairwise_accuracy"  # what the ranking stages keep their best model by
RESERVED = {CHECKPOINTS_DIR, LOGS_DIR}


def trainer_arguments(train: TrainingConfig, output_dir: Path, *, has_eval: bool, metric: str,
                      greater_is_better: bool, **extra) -> dict[str, Any]:
    """Keyword arguments for transformers.TrainingArguments (and TRL configs built on it).
    Under an FSDP launch on CPU this also sets up accelerate's state (`distributed.trainer_kwargs`)."""
    from rlhf_stack import distributed

    cuda = torch.cuda.is_available()
    strategy = ("steps" if train.eval_every_steps else "epoch") if has_eval else "no"
    return dict(
        output_dir=str(output_dir / CHECKPOINTS_DIR),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=train.weight_decay,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum_steps,
        max_grad_norm=train.max_grad_norm,
        logging_steps=train.logging_steps,
        eval_strategy=strategy,
        eval_steps=train.eval_every_steps,
        save_strategy=strategy if has_eval else "steps",
        save_steps=train.eval_every_steps or 500,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=greater_is_better if has_eval else None,
        report_to=[r for r in train.report_to if r != "none"] or "none",
        seed=train.seed,
        data_seed=train.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        gradient_checkpointing=False,  # applied by modeling.apply_tuning from ModelConfig
        dataloader_num_workers=0,
        **distributed.trainer_kwargs(),
        **extra,
    )


def ranking_trainer_setup(train: TrainingConfig, output_dir: Path, *, has_eval: bool,
                          callbacks: list | None) -> tuple[Any, list]:
    """(TrainingArguments, callbacks) of a stage that trains on whole rankings (reward model, DPO):
    the batch's labels are the ranks, the best model is the one with the highest held-out pairwise
    accuracy, and early stopping watches it when `train.early_stopping_patience` is set."""
    from transformers import EarlyStoppingCallback, TrainingArguments

    args = TrainingArguments(**trainer_arguments(train, output_dir, has_eval=has_eval, metric=RANKING_METRIC,
                                                 greater_is_better=True),
                             label_names=["ranks"], remove_unused_columns=False)
    callbacks = list(callbacks or [])
    if has_eval and train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience))
    return args, callbacks


def train_metrics(result, trainer, resumed_from: str | None) -> dict[str, Any]:
    """What a ranking stage records about `trainer.train(...)`'s run (`result` is its TrainOutput)."""
    return {"train_loss": result.training_loss, "train_runtime_s": result.metrics["train_runtime"],
            "train_rankings_per_s": result.metrics["train_samples_per_second"],
            "steps": trainer.state.global_step, "resumed_from": resumed_from, **launch_metrics(trainer.model)}


def launch_metrics(model) -> dict[str, Any]:
    """How the stage ran: its number of processes, and whether the model was sharded (FSDP2)."""
    from rlhf_stack import distributed

    return {"world_size": distributed.world_size(), "sharded": distributed.is_sharded(model)}


def last_trainer_checkpoint(output_dir: Path) -> str | None:
    """The newest `checkpoint-N` under output_dir/checkpoints that holds a trainer state."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    found = [p for p in root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not found:
        return None
    return str(max(found, key=lambda p: int(p.name.rsplit("-", 1)[-1])))


def begin_stage(output_dir: Path) -> None:
    """Mark the directory unfinished (drop stage.json) before anything in it changes."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STAGE_FILE).unlink(missing_ok=True)


def clear_model_files(output_dir: Path) -> None:
    """Remove the previous run's model files (keep resume states and logs)."""
    for item in output_dir.iterdir():
        if item.name in RESERVED:
            continue
        shutil.rmtree(item) if item.is_dir() else item.unlink()


def write_log(output_dir: Path, log_history: list[dict], name: str = TRAIN_LOG) -> Path:
    logs = output_dir / LOGS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / name
    path.write_text("".join(json.dumps(entry) + "\n" for entry in log_history))
    return path


def eval_metrics(trainer) -> dict:
    """`trainer.evaluate()` without the timing entries and the epoch."""
    raw = trainer.evaluate()
    return {k: v for k, v in raw.items() if not k.endswith(("_runtime", "_per_second")) and k != "epoch"}


def best_eval_metrics(trainer, metric: str) -> dict:
    """Eval metrics of the model training ended with (the best by `metric`, reloaded): taken from the
    log of the evaluation that picked it (saves a pass over the eval set), else measured now."""
    best = trainer.state.best_global_step
    logged = [e for e in trainer.state.log_history if metric in e and e.get("step") == best]
    if best is not None and logged:
        return {k: v for k, v in logged[-1].items() if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))}
    return eval_metrics(trainer)


def data_fingerprints(*data: DataConfig | None) -> dict[str, str]:
    out = {}
    for cfg in data:
        if cfg is None:
            continue
        out[cfg.path] = fingerprint(cfg.path)
        if cfg.eval_path:
            out[cfg.eval_path] = fingerprint(cfg.eval_path)
    return out


def stage_record(stage: str, cfg, model_cfg: ModelConfig, model, fingerprints: dict, metrics: dict) -> dict:
    """The content of stage.json: enough to know what produced a checkpoint and how it did."""
    trainable, total = count_parameters(model)
    import transformers

    return {
        "stage": stage,
        "base_model": model_cfg.name_or_path,
        "tuning": model_cfg.tuning,
        "config": config_to_dict(cfg),
        "data": fingerprints,
        "metrics": metrics,
        "parameters": {"trainable": trainable, "total": total},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }


def finish_stage(model, tokenizer, output_dir: Path, record: dict, keep_checkpoints: bool) -> Path:
    """Write the final model + tokenizer, then stage.json (commit marker); drop resume states.

    Every process calls it: a sharded model (FSDP2) is gathered whole first (a collective; the
    weights to gather are `model.sharded` when the saver wraps one, as PPO's does), and the main
    process writes a plain HF/peft checkpoint while the others wait."""
    from rlhf_stack import distributed

    state_dict = distributed.full_state_dict(getattr(model, "sharded", model))
    if not distributed.is_main_process():
        distributed.barrier()
        return output_dir
    clear_model_files(output_dir)
    staging = output_dir / CHECKPOINTS_DIR / "final"
    save_checkpoint(model, tokenizer, staging, record, state_dict=state_dict)
    for item in staging.iterdir():
        if item.name != STAGE_FILE:
            item.rename(output_dir / item.name)
    (staging / STAGE_FILE).rename(output_dir / STAGE_FILE)  # last: the directory is now finished
    shutil.rmtree(staging, ignore_errors=True)
    if not keep_checkpoints:
        shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
    assert read_stage_info(output_dir) is not None
    distributed.barrier()
    return output_dir
