"""An exponential moving average of the policy's trainable weights (`PPOConfig.policy_ema`).

Each PPO step moves the responses it trained on by far more than it moves unseen responses of the
same prompts (benchmarks/RESULTS.md, sixth session): much of a step is noise that the next steps
partly undo. Averaging the weights over the last steps keeps what the steps agree on and averages
out what they do not. The run trains the raw weights as always (the average never feeds back into
sampling or the update); the stage saves the average as its policy.

    average <- decay * average + (1 - decay) * weights        once per PPO step

The average starts at the initial policy (the SFT weights), so with decay d the step-0 weights keep
a share d**steps in it. It is saved in every checkpoint, so a resumed run ends with the same average.
"""

from __future__ import annotations

import torch

AVERAGE_FILE = "policy_average.safetensors"  # in each checkpoint directory


class PolicyAverage:
    """The running average of `named` (the policy's trainable tensors by name, as the checkpoint's
    `trainable.safetensors` names them)."""

    def __init__(self, named: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.names, self.params, self.decay = list(named), list(named.values()), decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for avg, p in zip(self.shadow, self.params, strict=True):
            avg.lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.contiguous() for name, t in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [name for name in self.names if name not in state]
        if missing or len(state) != len(self.names):
            raise ValueError(f"the saved policy average has {len(state)} tensors, the policy {len(self.names)} "
                             f"(missing: {missing[:3]})")
        for name, avg in zip(self.names, self.shadow, strict=True):
            avg.copy_(state[name])

    @torch.no_grad()
    def copy_to_policy(self) -> None:
        """Write the average into the policy's weights (at the end of the run, before it is saved)."""
        for avg, p in zip(self.shadow, self.params, strict=True):
            p.copy_(avg)
