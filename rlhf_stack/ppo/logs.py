"""PPO's logs: one JSONL record a step, sample tables, memory, and the summary of a run."""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path

import torch


class RunLog:
    """Append-only JSONL logs: one record per step, and sample tables every N steps."""

    def __init__(self, log_path: Path, samples_path: Path, resume_step: int) -> None:
        self.log_path, self.samples_path = log_path, samples_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed run re-does the steps after its checkpoint: drop their old records first.
        for path in (log_path, samples_path):
            kept = [line for line in _read_lines(path) if json.loads(line)["step"] <= resume_step]
            path.write_text("".join(kept))

    def write(self, record: dict) -> None:
        with self.log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def write_samples(self, step: int, rows: list[dict]) -> None:
        with self.samples_path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in _read_lines(self.log_path)]


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    # "\n" only: splitlines() would also cut at a U+2028 inside a logged sample's text
    return [line + "\n" for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA max allocated on GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


SUMMARY_KEYS = ("score", "reward", "kl", "kl_coef", "entropy", "response_length", "policy_loss", "value_loss",
                "approx_kl", "clipfrac", "ptx_loss")


def summarize(records: list[dict], runtime_s: float, steps_run: int) -> dict:
    """Final metrics: first and last step values, means over the last 10% of steps, speed, memory."""
    if not records:
        return {}
    tail = records[-max(1, len(records) // 10):]
    metrics: dict = {"steps": records[-1]["step"], "train_runtime_s": runtime_s,
                     "steps_per_s": steps_run / max(runtime_s, 1e-9),
                     "peak_memory_mb": max(r["peak_memory_mb"] for r in records)}
    for key in SUMMARY_KEYS:
        # A key may be missing from some steps: no policy_loss during value_warmup_steps, no
        # value_loss ever with a critic-free estimator. Each figure comes from the steps that have
        # it, and a finite value (a step dropped by on_nonfinite: skip_step may log NaN scores).
        having = [r[key] for r in records if math.isfinite(r.get(key, math.nan))]
        if having and key in records[-1]:
            tail_values = [r[key] for r in tail if math.isfinite(r.get(key, math.nan))] or having[-1:]
            metrics[f"{key}_first"] = having[0]
            metrics[key] = sum(tail_values) / len(tail_values)
    if any("skipped_updates" in r for r in records):  # on_nonfinite: skip_step
        metrics["skipped_updates"] = sum(r.get("skipped_updates", 0) for r in records)
    return metrics
