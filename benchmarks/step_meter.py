"""Per-step clock, memory and optimizer-update counter for a benchmark worker process.

One `StepMeter` per process, the same code on both sides of a comparison (ours and TRL 1.12's PPO;
`ppo_vs_trl.py`, `trl_ppo.py`). The worker calls `step_end(response_tokens)` once at the end of
every PPO step, from the side's own once-per-step hook. Per step it records:

- time_s: wall clock between this step's end and the previous one's (after a CUDA sync on a GPU);
  step 1 has none (its window includes loading the models);
- peak_memory_mb: the peak since the previous step's end. On CPU the process's peak RSS (Linux
  VmHWM, reset at every step end by writing 5 to /proc/self/clear_refs, so each window is one
  step's own peak); on CUDA torch.cuda.max_memory_allocated, reset with reset_peak_memory_stats.
  `lifetime_peak_mb` is the largest window, loading included;
- updates: optimizer updates applied during the step, counted by torch's global post-step hook
  on every `torch.optim.Optimizer` whose step really ran (accelerate's wrapper does not count:
  between accumulation boundaries it skips the inner step, and it is that inner step that counts).

Pure Python plus torch, imported lazily: it runs in either virtual environment.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


class StepMeter:
    """Step ends, per-step peak memory and optimizer updates of this process."""

    def __init__(self, cuda: bool) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.cuda = cuda
        self.updates = 0
        self.per_step_reset = True  # False where /proc/self/clear_refs cannot be written
        self.steps: list[dict] = []
        self._last_end: float | None = None
        self._updates_at_last_end = 0
        self._hook = register_optimizer_step_post_hook(self._count_update)  # global: every optimizer

    def _count_update(self, optimizer, args, kwargs) -> None:
        if type(optimizer).__name__ != "AcceleratedOptimizer":  # its inner optimizer counts instead
            self.updates += 1

    def step_end(self, response_tokens: int) -> None:
        """Close the current step: its time, peak memory, updates and the response tokens it sampled."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        time_s = None if self._last_end is None else now - self._last_end
        self.steps.append({"step": len(self.steps) + 1, "time_s": time_s, "response_tokens": int(response_tokens),
                           "tokens_per_s": None if time_s is None else response_tokens / time_s,
                           "steps_per_s": None if time_s is None else 1 / time_s,
                           "peak_memory_mb": self._peak(reset=True),
                           "updates": self.updates - self._updates_at_last_end})
        self._updates_at_last_end = self.updates
        self._last_end = time.perf_counter()  # the reset and bookkeeping above are not the next step's

    def close(self) -> None:
        """Stop counting updates (the hook is process-wide)."""
        self._hook.remove()

    def lifetime_peak_mb(self) -> float:
        """The largest window so far, the one still open included (model loading is in step 1's)."""
        return max([s["peak_memory_mb"] for s in self.steps] + [self._peak(reset=False)])

    def _peak(self, reset: bool) -> float:
        if self.cuda:
            import torch

            peak = torch.cuda.max_memory_allocated() / 2**20
            if reset:
                torch.cuda.reset_peak_memory_stats()
            return peak
        hwm = next(line for line in STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
        if reset and self.per_step_reset:
            try:
                CLEAR_REFS.write_text("5")  # VmHWM := current RSS (Linux >= 4.0)
            except OSError:  # not allowed here: every window then reads the peak so far
                self.per_step_reset = False
        return int(hwm.split()[1]) / 1024


def medians(steps: list[dict], warmup: int) -> dict:
    """{figure: {median, min, max, n}} over the steps after the first `warmup` ones."""
    measured = [s for s in steps if s["step"] > warmup]
    out = {}
    for key in ("tokens_per_s", "steps_per_s", "peak_memory_mb", "response_tokens"):
        values = [s[key] for s in measured if s[key] is not None]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                        "n": len(values)}
    return out
