"""`on_nonfinite` for the transformers-Trainer stages (SFT, reward model, DPO): `NonFiniteCallback`.

The checks and messages are `nonfinite.py`'s, shared with PPO (`ppo/guard.py`). This module imports
transformers; `nonfinite.py` does not, so configs and the CLI load without it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from rlhf_stack.nonfinite import nonfinite_grad, optimizer_groups, stop_message
from rlhf_stack.training import last_trainer_checkpoint


class NonFiniteCallback(TrainerCallback):
    """`train.on_nonfinite` for a transformers Trainer (SFT, reward model, DPO), through its public hooks.

    `attach` wraps the trainer's `training_step` (one micro-batch's forward + backward) to look at
    the loss it returns and, after the micro-batch that completes a step, at the gradients, before
    the Trainer clips them. `on_pre_optimizer_step` then stops (`NonFiniteError`: Trainer
    checkpoints are written only after an optimizer step, so none holds the bad update) or drops
    the update: gradients set to None, so AdamW leaves weights and moments alone, and the LR
    scheduler's state put back after the Trainer's `lr_scheduler.step()`. A dropped step still
    counts in `global_step` (its batch is used up, as with a step fp16 loss scaling skips) and
    appends `{"skipped_updates": n, "nonfinite": what, "step": k}` to the log history: the count
    reaches logs/train_log.jsonl and, with the history, every Trainer checkpoint, so it survives resume.
    """

    def __init__(self, on_nonfinite: str, stage: str, output_dir: Path) -> None:
        self.on_nonfinite, self.stage, self.output_dir = on_nonfinite, stage, Path(output_dir)
        self.skipped = 0
        self._trainer = None
        self._problem: str | None = None  # found in the step being accumulated
        self._restore = None  # (LR-scheduler state, group learning rates, problem) of a dropped step
        self._window = [0, 0]  # steps, dropped steps since the last logged training loss

    @classmethod
    def attach(cls, trainer, on_nonfinite: str, stage: str, output_dir: Path) -> NonFiniteCallback:
        callback = cls(on_nonfinite, stage, output_dir)
        callback._trainer = trainer
        step = trainer.training_step
        trainer.training_step = lambda model, inputs, num_items_in_batch=None: callback._after_backward(
            model, step(model, inputs, num_items_in_batch))
        trainer.add_callback(callback)
        return callback

    def metrics(self) -> dict:
        """What goes into stage.json: the count of dropped updates (skip_step only)."""
        return {"skipped_updates": self.skipped} if self.on_nonfinite == "skip_step" else {}

    def _after_backward(self, model, loss: torch.Tensor) -> torch.Tensor:

        trainer = self._trainer
        if self._problem is None and not bool(torch.isfinite(loss).all()):
            self._problem = "loss"
        if self._problem is None and trainer.accelerator.sync_gradients:  # the step's last micro-batch
            unwrapped = trainer.accelerator.unwrap_model(model)
            self._problem = nonfinite_grad(optimizer_groups(trainer.optimizer, unwrapped))
        return loss

    def on_train_begin(self, args, state, control, **kwargs):
        # On resume the log history is the checkpoint's: so is the count.
        self.skipped = max((e["skipped_updates"] for e in state.log_history if "skipped_updates" in e), default=0)
        self._problem = self._restore = None
        self._window = [0, 0]

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        from rlhf_stack.errors import NonFiniteError

        problem, self._problem = self._agreed(self._problem), None
        if problem is None:
            return
        step = state.global_step + 1
        if self.on_nonfinite == "stop":
            raise NonFiniteError(stop_message(self.stage, step, problem, last_trainer_checkpoint(self.output_dir),
                                              "train.on_nonfinite"))
        optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without a gradient
        self._restore = (copy.deepcopy(lr_scheduler.state_dict()), [g["lr"] for g in optimizer.param_groups], problem)
        if state.is_world_process_zero:
            print(f"[{self.stage}] step {step}: non-finite {problem}; update skipped "
                  "(train.on_nonfinite: skip_step)", flush=True)

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self._window[0] += 1
        if self._restore is None:
            return
        self._window[1] += 1
        scheduler_state, learning_rates, problem = self._restore
        lr_scheduler.load_state_dict(scheduler_state)
        for group, lr in zip(optimizer.param_groups, learning_rates, strict=True):
            group["lr"] = lr
        self.skipped += 1
        state.log_history.append({"skipped_updates": self.skipped, "nonfinite": problem, "step": state.global_step})
        self._restore = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        if self._window[0] and self._window[1] == self._window[0]:
            # Every step since the last log was dropped: the Trainer's NaN filter logs a made-up
            # loss (0.0 right after a log); the history records NaN, which the report leaves out.
            state.log_history[-1]["loss"] = math.nan
        self._window = [0, 0]

    def _agreed(self, problem: str | None) -> str | None:
        """The same answer on every process (one all-reduce when distributed)."""
        acc = self._trainer.accelerator
        if acc.num_processes > 1:
            flags = acc.reduce(torch.tensor([float(problem is not None)], device=acc.device), "sum")
            if float(flags[0]) > 0 and problem is None:
                problem = "values on another process"
        return problem
