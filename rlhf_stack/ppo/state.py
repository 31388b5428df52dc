"""Resumable PPO state on disk, the per-step logs, and the data order.

A checkpoint `output_dir/checkpoints/step-N/` holds everything the next step depends on: the
trainable weights (adapters + value head, or full models), AdamW and LR-scheduler states, the KL
controller and score moments, every process's RNG states, and the step. Data positions are a
pure function of the step (`IndexStream`), so they need no state. The directory is written as
`step-N.partial` and renamed when complete, so a kill -9 never leaves a checkpoint that looks whole.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "state.json"
KEEP_CHECKPOINTS = 2  # resume needs only the newest; one more guards against a corrupt disk write


# ---- data order -------------------------------------------------------------------------------


class IndexStream:
    """An endless stream of item indices: each epoch a fresh permutation seeded by (seed, epoch).

    `take(start, count)` returns positions start..start+count-1 of the stream, so the data a step
    uses is a function of the step alone and resuming needs no sampler state.
    """

    def __init__(self, n_items: int, seed: int) -> None:
        if n_items < 1:
            raise ValueError("IndexStream needs at least one item")
        self.n_items, self.seed = n_items, seed
        self._cache: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cache = {e: order for e, order in self._cache.items() if e >= epoch - 1}  # bounded
            self._cache[epoch] = torch.randperm(self.n_items, generator=generator).tolist()
        return self._cache[epoch]

    def take(self, start: int, count: int) -> list[int]:
        return [self._epoch(i // self.n_items)[i % self.n_items] for i in range(start, start + count)]


# ---- checkpoints --------------------------------------------------------------------------------


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint_state(root: Path, step: int, *, model, optimizer, scheduler, controllers: dict,
                          accelerator) -> Path:
    """Write step-N atomically (all processes call this; each saves its own RNG state)."""
    from safetensors.torch import save_file

    final = root / f"{CHECKPOINT_PREFIX}{step}"
    partial = root / f"{CHECKPOINT_PREFIX}{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), partial / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state(model), str(partial / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        state = {"step": step, "world_size": accelerator.num_processes,
                 **{name: c.state_dict() for name, c in controllers.items()}}
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)  # the commit point
        for old in sorted(completed_checkpoints(root))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(root / f"{CHECKPOINT_PREFIX}{old}", ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def completed_checkpoints(root: Path) -> list[int]:
    """Steps of the whole checkpoints under root (a `.partial` directory never counts)."""
    steps = []
    for path in root.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if suffix.isdigit() and (path / STATE_FILE).is_file():
            steps.append(int(suffix))
    return sorted(steps)


def load_checkpoint_state(path: Path, *, model, optimizer, scheduler, controllers: dict, accelerator) -> int:
    """Restore everything saved by save_checkpoint_state; return the step it was taken after."""
    from safetensors.torch import load_file

    state = json.loads((path / STATE_FILE).read_text())
    if state["world_size"] != accelerator.num_processes:
        from rlhf_stack.errors import ConfigError

        raise ConfigError(f"{path} was written by {state['world_size']} processes; resume it with the same "
                          f"number (now {accelerator.num_processes}) or start a fresh output_dir")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in weights]
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks trainable weights {missing[:3]}...")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=accelerator.device))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    for name, controller in controllers.items():
        controller.load_state_dict(state[name])
    set_rng_state(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return int(state["step"])


# ---- logs ---------------------------------------------------------------------------------------


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
    return [line + "\n" for line in path.read_text().splitlines() if line.strip()]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA max allocated on GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
