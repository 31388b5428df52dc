"""Non-finite values in training, found before the optimizer step (shared by PPO and the Trainer stages).

`on_nonfinite` (PPOConfig; `train.on_nonfinite` of SFT, the reward model and DPO) says what happens then:
- `stop` (the default): `errors.NonFiniteError` at that step, naming the step, the quantity (the
  loss, the gradient of which parameter group, PPO's scores, rewards or advantages) and the last
  good checkpoint. The bad update is never applied and nothing is saved after it, so no
  checkpoint ever holds a NaN, and a re-run resumes from the last good one.
- `skip_step`: that update is dropped (gradients cleared; no optimizer or LR-scheduler step) and
  counted: `skipped_updates` in the stage's log and metrics, and a line in the run report.

Gradients are checked before clipping: clipping by a NaN norm spreads one NaN to every gradient,
after which the culprit could no longer be named. The Trainer stages plug in through
`trainer_guard.NonFiniteCallback`; PPO's checks are `ppo/guard.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

RESPONSE_CHARS = 80  # of a response quoted in a one-line error


def first_nonfinite_index(tensors: Sequence[torch.Tensor | None]) -> int | None:
    """The position of the first tensor holding a NaN or inf (None entries are skipped), or None
    when all are finite. One host sync whatever the number of tensors."""
    # A sharded (FSDP2) tensor is checked on this process's shard; callers agree across processes.
    present = [(i, t.to_local() if hasattr(t, "to_local") else t) for i, t in enumerate(tensors) if t is not None]
    if not present:
        return None
    device = present[0][1].device
    finite = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in present]).cpu()
    bad = (~finite).nonzero()
    return present[int(bad[0, 0])][0] if len(bad) else None


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """The name of the first tensor holding a NaN or inf, or None when all are finite."""
    named = list(named)
    index = first_nonfinite_index([t for _, t in named])
    return None if index is None else named[index][0]


def nonfinite_grad(groups: Sequence[tuple[str, Sequence[tuple[str, torch.Tensor]]]]) -> str | None:
    """`grad of param group 'value' (first: v_head.weight)` for the first parameter, group by
    group, whose gradient holds a NaN or inf; None when every gradient is finite.

    groups: (group name, [(parameter name, parameter), ...]) in the optimizer's order.
    """
    flat = [(group, name, p) for group, params in groups for name, p in params]
    index = first_nonfinite_index([p.grad for _, _, p in flat])
    if index is None:
        return None
    group, name, _ = flat[index]
    return f"grad of param group '{group}' (first: {name})"


def optimizer_groups(optimizer, model: torch.nn.Module, labels: Sequence[str] = ()) -> list[tuple[str, list]]:
    """The optimizer's parameter groups as (label, [(parameter name, parameter), ...]); a group
    without a label is called by its index."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [(labels[i] if i < len(labels) else str(i), [(names.get(id(p), f"param {j}"), p)
                                                      for j, p in enumerate(group["params"])])
            for i, group in enumerate(optimizer.param_groups)]


def quote(text: str, limit: int = RESPONSE_CHARS) -> str:
    """A response for a one-line message: cut at `limit` characters, quoted, newlines escaped."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def stop_message(stage: str, step: int, quantity: str, last_checkpoint: Path | str | None, key: str) -> str:
    """The one-line message of `NonFiniteError`: where, what, what was kept, and the way on."""
    return (f"{stage} step {step}: non-finite {quantity}; stopped before that update. "
            f"{halt_note(last_checkpoint)}. To drop such updates instead, set {key}: skip_step")


def halt_note(last_checkpoint: Path | str | None) -> str:
    """What a clean stop kept, and how a re-run goes on."""
    if last_checkpoint is None:
        return "Nothing was saved, and no checkpoint was written before: a re-run starts from the beginning"
    return f"Nothing was saved after it; last good checkpoint: {last_checkpoint} (a re-run resumes from it)"
