"""What the Trainer-based stages (SFT, reward model, DPO) share: arguments, checkpoints and resume,
evals, logs and stage.json (`on_nonfinite` for them: `trainer_guard.NonFiniteCallback`), and the
frozen weights packed for oneDNN around `trainer.train` on CPU (`frozen_weights_packed`).

A stage's `output_dir` is its checkpoint: model files + tokenizer + `checkpoint_manifest.json` +
`stage.json` (written last, the commit marker), with Trainer states for resume under
`output_dir/checkpoints/` and the training log under `output_dir/logs/`. Every checkpoint is
written whole or not at all and verified before a resume trusts it (`checkpointing.py`).
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhf_stack import checkpointing
from rlhf_stack.config import DataConfig, ModelConfig, TrainingConfig, config_to_dict
from rlhf_stack.data import fingerprint
from rlhf_stack.modeling import count_parameters, read_stage_info, save_checkpoint, saved_weight_bytes
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


@contextmanager
def frozen_weights_packed(train: TrainingConfig, *models):
    """Around `trainer.train`: each model's frozen float32 CPU linear layers run through oneDNN-packed
    copies made once for the run (`train.pack_frozen_weights`; `ppo/packed.py`), and a frozen LM
    head's input gradient through a packed copy of its transpose. A None model is skipped. Yields the
    layers packed."""
    from rlhf_stack.ppo.packed import packed_linears

    with ExitStack() as stack:
        packed = 0
        for model in (model for model in models if model is not None):
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            transpose = (head,) if head is not None and not head.weight.requires_grad else ()
            packed += stack.enter_context(packed_linears(model, enabled=train.pack_frozen_weights,
                                                         frozen_only=True, transpose=transpose))
        yield packed


def train_metrics(result, trainer, resumed_from: str | None) -> dict[str, Any]:
    """What a ranking stage records about `trainer.train(...)`'s run (`result` is its TrainOutput)."""
    return {"train_loss": result.training_loss, "train_runtime_s": result.metrics["train_runtime"],
            "train_rankings_per_s": result.metrics["train_samples_per_second"],
            "steps": trainer.state.global_step, "resumed_from": resumed_from, **launch_metrics(trainer.model)}


def launch_metrics(model) -> dict[str, Any]:
    """How the stage ran: its number of processes, and whether the model was sharded (FSDP2)."""
    from rlhf_stack import distributed

    return {"world_size": distributed.world_size(), "sharded": distributed.is_sharded(model)}


class AtomicCheckpoints:
    """Mixin for a transformers.Trainer subclass (list it first): each `checkpoint-N` is written
    whole or not at all, the `checkpointing` way.

    The Trainer still writes the checkpoint itself (model, optimizer, scheduler, RNG, trainer
    state), but while it saves, its output directory is the staging root `checkpoints/.partial`;
    then the files are committed (fsync, manifest, rename) and the rotation (`save_total_limit`)
    runs on the real directory, after the commit, so it can never delete the previous checkpoint
    before the new one is whole. A failed write raises `CheckpointWriteError`.
    """

    _staging_root: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = Path(super()._get_output_dir(trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        partial = checkpointing.partial_path(final)
        try:
            if self.args.should_save:
                # A killed save's leftover in the staging root would take part in the Trainer's
                # own rotation there (which counts every checkpoint-* it finds): start empty.
                shutil.rmtree(partial.parent, ignore_errors=True)
                checkpointing.start(final)
            self.accelerator.wait_for_everyone()
            self._staging_root = str(partial.parent)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_root = None
            if self.state.best_model_checkpoint == str(partial):  # the new one is the best: its real name
                self.state.best_model_checkpoint = str(final)
                if self.args.should_save:
                    self.state.save_to_json(str(partial / "trainer_state.json"))
            self.accelerator.wait_for_everyone()  # every process's RNG state is in
            if self.args.should_save:
                checkpointing.commit(partial, final)
                rotate_checkpoints(str(run_dir), save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        except Exception as exc:
            # Under `accelerate launch` the failing process exits and torchrun stops the others.
            unwrapped = self.accelerator.unwrap_model(self.model)
            estimate = saved_weight_bytes(unwrapped) + checkpointing.tensor_bytes(
                self.optimizer.state_dict() if self.optimizer is not None else {})
            previous = [p for p in trainer_checkpoints(run_dir) if p != final]
            error = checkpointing.write_failure(exc, final, estimate, previous[-1] if previous else None)
            if error is None:
                raise
            raise error from exc
        self.accelerator.wait_for_everyone()


@functools.cache
def with_atomic_checkpoints(trainer_class: type) -> type:
    """`trainer_class` with `AtomicCheckpoints` mixed in (for library trainers such as TRL's)."""
    return type(trainer_class.__name__, (AtomicCheckpoints, trainer_class), {"__module__": __name__})


def trainer_checkpoints(root: Path) -> list[Path]:
    """Every `checkpoint-N` directory under root, oldest first (whole or not)."""
    found = [p for p in Path(root).glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


def last_trainer_checkpoint(output_dir: Path) -> str | None:
    """The newest `checkpoint-N` under output_dir/checkpoints that has its manifest (None: none yet)."""
    whole = [p for p in trainer_checkpoints(Path(output_dir) / CHECKPOINTS_DIR)
             if (p / checkpointing.MANIFEST_FILE).is_file()]
    return str(whole[-1]) if whole else None


def resume_checkpoint(trainer, output_dir: Path, label: str) -> str | None:
    """The newest whole `checkpoint-N` under output_dir/checkpoints (None: start fresh).

    Newer ones whose files do not match their manifest (or that have none) are moved to
    `checkpoints/corrupt/` by the main process, each with a printed reason; the choice is printed.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    main = trainer.accelerator.is_main_process
    if main:
        checkpointing.drop_damaged(trainer_checkpoints(root), label)
    trainer.accelerator.wait_for_everyone()
    newest = last_trainer_checkpoint(output_dir)
    if newest and main:
        print(f"[{label}] resuming from {newest}", flush=True)
    return newest


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
    """Write the log (main process only: under FSDP every process holds the same history, and two
    processes writing one file at once can leave a hole of NUL bytes), through a temporary file."""
    from rlhf_stack import distributed
    from rlhf_stack.pipeline.manifest import write_atomic

    path = output_dir / LOGS_DIR / name
    if distributed.is_main_process():
        write_atomic(path, "".join(json.dumps(entry) + "\n" for entry in log_history))
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

    from rlhf_stack.model_card import invocation

    return {
        "stage": stage,
        "base_model": model_cfg.name_or_path,
        "tuning": model_cfg.tuning,
        "method": model_cfg.adapter_method or model_cfg.tuning,  # lora, dora, ia3, ...; full / freeze
        "command": invocation(),
        "config": config_to_dict(cfg),
        "data": fingerprints,
        "metrics": metrics,
        "parameters": {"trainable": trainable, "total": total},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }


def finish_stage(model, tokenizer, output_dir: Path, record: dict, keep_checkpoints: bool) -> Path:
    """Write the final model + tokenizer, then stage.json (commit marker); drop resume states.

    The files are first written whole into checkpoints/final (`modeling.save_checkpoint`: fsync'd,
    recorded in checkpoint_manifest.json); a full disk stops there, before anything moves, with the
    resume states intact. Then they move up, stage.json last.

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
    checkpointing.fsync_dir(output_dir)
    (staging / STAGE_FILE).rename(output_dir / STAGE_FILE)  # last: the directory is now finished
    checkpointing.fsync_dir(output_dir)
    shutil.rmtree(staging, ignore_errors=True)
    if not keep_checkpoints:
        shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
    assert read_stage_info(output_dir) is not None
    distributed.barrier()
    return output_dir
