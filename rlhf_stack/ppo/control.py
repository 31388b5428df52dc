"""The small pieces of PPO state that live across steps: the KL coefficient and score moments.

Kept apart from `functional.py`, which holds only pure functions. Each class stores plain Python
floats and round-trips through `state_dict()` / `load_state_dict()` (JSON-friendly), so a
resumed run continues with the same kl_coef and normalisation statistics.
"""

from __future__ import annotations

import math

import torch


class FixedKLController:
    """A constant KL coefficient; `update` is a no-op (InstructGPT uses a fixed beta)."""

    def __init__(self, kl_coef: float) -> None:
        self.kl_coef = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep kl_coef as it is; same signature as AdaptiveKLController.update."""

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


class AdaptiveKLController:
    """Proportional controller steering the measured KL toward `target` (Ziegler 2019, eq. 3).

    error = clip(current_kl / target - 1, -0.2, 0.2);  kl_coef *= 1 + error * n_steps / horizon.
    The +-20% clip keeps one noisy KL estimate from swinging the coefficient; `horizon` (in
    samples/steps, same unit as n_steps) sets how fast it reacts.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.kl_coef = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move kl_coef after a batch whose mean sequence KL was `current_kl`, over `n_steps`."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


class RunningMoments:
    """Running mean and (unbiased) std of every value seen, for normalising reward scores.

    Merges each batch with Chan et al.'s parallel form of Welford's update, in float64, so the
    result equals the mean/std of all batches concatenated without storing them. Under data
    parallelism, gather the scores from every rank before `update` so all ranks agree.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0  # population variance (divide by count)
        self.count = 0

    @property
    def std(self) -> float:
        """Unbiased std of everything seen so far (as torch.std); 0.0 before two values."""
        if self.count < 2:
            return 0.0
        return math.sqrt(self.var * self.count / (self.count - 1))

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Fold the values of `x` (any shape, e.g. scores `(b,)`) in; return this batch's (mean, std).

        The batch std is unbiased (as torch.std), 0.0 for a one-element batch.
        """
        x = x.detach().double().flatten()
        n_batch = x.numel()
        if n_batch == 0:
            raise ValueError("RunningMoments.update got an empty tensor")
        batch_mean = x.mean().item()
        batch_var = x.var(unbiased=False).item()
        # Chan et al. 1979: combine (mean, M2, count) of the history with those of the batch.
        total = self.count + n_batch
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n_batch + delta**2 * self.count * n_batch / total
        self.mean += delta * n_batch / total
        self.var = m2 / total
        self.count = total
        batch_std = math.sqrt(batch_var * n_batch / (n_batch - 1)) if n_batch > 1 else 0.0
        return batch_mean, batch_std

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean = float(state["mean"])
        self.var = float(state["var"])
        self.count = int(state["count"])
