"""Stage 3's `on_nonfinite` (rlhf_stack.nonfinite): checks before every update, then a stop or a skip.

Two checks a step, each agreed by every process (one all-reduce) so all stop or skip together:
- `check_batch`, after step 4 and before any update: each reward source's scores, the
  KL-penalised rewards, the advantages and the returns. Under `skip_step` a problem here drops
  the whole step: no PPO epoch runs, the KL controller does not move, and the trainer puts the
  running score statistics back (`process_scores` already saw the batch);
- `check_update`, before each optimizer step: the mini-batch's losses, then its gradients per
  parameter group (policy, value) before clipping. Under `skip_step` a problem drops that update.
Under `stop` either raises `NonFiniteError` naming the step, the quantity and the last good checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rlhf_stack.errors import NonFiniteError
from rlhf_stack.nonfinite import first_nonfinite, nonfinite_grad, optimizer_groups, quote, stop_message

LOSSES = ("policy_loss", "value_loss", "ptx_loss")


class StepGuard:
    """The checks, the decision and the count of skipped updates of one `train_ppo` run."""

    def __init__(self, on_nonfinite: str, accelerator, actor_critic: torch.nn.Module, optimizer,
                 checkpoints: Path, updates_per_step: int) -> None:
        self.on_nonfinite, self.accelerator, self.checkpoints = on_nonfinite, accelerator, checkpoints
        self.groups = optimizer_groups(optimizer, actor_critic, ("policy", "value"))
        self.updates_per_step = updates_per_step
        self.skipped = 0  # updates skipped in the current step; `record` reads and resets it
        self.problem: str | None = None  # the current step's first problem

    def check_batch(self, step: int, parts: dict[str, torch.Tensor], responses: Sequence[str],
                    prompt_where: Callable[[int], str], rollout) -> bool:
        """True when the step's batch holds a NaN/inf under skip_step (the step is then dropped)."""
        mask = rollout.response_mask.bool()
        problem = score_problem(parts, responses, prompt_where) or first_nonfinite(
            [("rewards", rollout.rewards[mask]), ("advantages", rollout.advantages[mask]),
             ("returns", rollout.returns[mask] if rollout.returns is not None else None)])
        if self._decide(step, problem):
            self.skipped += self.updates_per_step
            return True
        return False

    def check_update(self, step: int, stats: dict[str, list[torch.Tensor]]) -> bool:
        """True when this mini-batch's update must be dropped (skip_step): a loss or gradient is NaN/inf."""
        problem = first_nonfinite((f"loss ({name})", value) for name in LOSSES for value in stats.get(name, []))
        if self._decide(step, problem or nonfinite_grad(self.groups)):
            self.skipped += 1
            return True
        return False

    def record(self) -> dict:
        """The step's log fields (skip_step only): updates skipped, and what was non-finite."""
        if self.on_nonfinite != "skip_step":
            return {}
        out = {"skipped_updates": self.skipped, **({"nonfinite": self.problem} if self.problem else {})}
        self.skipped, self.problem = 0, None
        return out

    def _decide(self, step: int, problem: str | None) -> bool:
        acc = self.accelerator
        if acc.num_processes > 1:  # every process must take the same branch
            flags = acc.reduce(torch.tensor([float(problem is not None)], device=acc.device), "sum")
            if float(flags[0]) > 0 and problem is None:
                problem = "values on another process"
        if problem is None:
            return False
        if self.on_nonfinite == "stop":
            raise NonFiniteError(stop_message("ppo", step, problem, self.last_checkpoint(), "on_nonfinite"))
        if acc.is_main_process:
            print(f"[ppo] step {step}: non-finite {problem}; update skipped (on_nonfinite: skip_step)", flush=True)
        self.problem = self.problem or problem
        return True

    def last_checkpoint(self) -> Path | None:
        from rlhf_stack.ppo.checkpoint import CHECKPOINT_PREFIX, completed_checkpoints

        steps = completed_checkpoints(self.checkpoints)
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{steps[-1]}" if steps else None


def score_problem(parts: dict[str, torch.Tensor], responses: Sequence[str],
                  prompt_where: Callable[[int], str]) -> str | None:
    """`scores: reward 'f' returned nan for response 2 of the step (prompt ...): '...'` for the first
    non-finite score of any source, or None."""
    for name, values in parts.items():
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0, 0])
            return (f"scores: reward {name!r} returned {float(values[i])} for response {i} of the step "
                    f"({prompt_where(i)}): {quote(responses[i])}")
    return None
