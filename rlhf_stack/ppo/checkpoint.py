"""Resumable PPO state on disk.

A checkpoint `output_dir/checkpoints/step-N/` holds everything the next step depends on: the
trainable weights (adapters + value head, or full models), AdamW and LR-scheduler states, the KL
controller and score moments, the policy's weight average (`policy_ema`), every process's RNG
states, and the step. Data positions are a pure function of the step (`data.IndexStream`), so
they need no state. The directory is written the `checkpointing` way: into `.partial/step-N`,
fsync'd, sizes and sha256 recorded in its manifest, then renamed; a kill -9 or a full disk never
leaves a checkpoint that looks whole, and a resume takes the newest one whose files still match
their manifest.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from rlhf_stack import checkpointing
from rlhf_stack.pipeline.layout import CHECKPOINTS_DIR  # noqa: F401  (under the stage's output_dir)
from rlhf_stack.ppo.averaging import AVERAGE_FILE

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "state.json"
KEEP_CHECKPOINTS = 2  # resume needs only the newest; one more guards against a corrupt disk write


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


def save_checkpoint_state(root: Path, step: int, *, model, optimizer, scheduler, controllers: dict,
                          accelerator, average=None) -> Path:
    """Write step-N whole or not at all (all processes call this; each saves its own RNG state).

    A failed write (a full disk: ENOSPC, or any OSError) raises `CheckpointWriteError` naming the
    path and the space needed; the partial files are gone and the previous step-M is untouched.
    Under FSDP2 the weights and optimizer states are gathered whole first (a collective), so the
    files are the same as an unsharded run's, apart from the optimizer's keys (`sharded` records which).
    """
    from safetensors.torch import save_file

    from rlhf_stack import distributed

    final = root / f"{CHECKPOINT_PREFIX}{step}"
    partial = checkpointing.partial_path(final)
    main = accelerator.is_main_process
    weights, optimizer_state = distributed.trainable_weights(model), distributed.optimizer_state(model, optimizer)
    try:
        if main:
            checkpointing.start(final)
        accelerator.wait_for_everyone()
        torch.save(rng_state(), partial / f"rng-{accelerator.process_index}.pt")
        if main:
            save_file(weights, str(partial / "trainable.safetensors"))
            torch.save(optimizer_state, partial / "optimizer.pt")
            torch.save(scheduler.state_dict(), partial / "scheduler.pt")
            if average is not None:
                save_file(average.state_dict(), str(partial / AVERAGE_FILE))
            state = {"step": step, "world_size": accelerator.num_processes, "sharded": distributed.is_sharded(model),
                     **{name: c.state_dict() for name, c in controllers.items()}}
            checkpointing.write_bytes(partial / STATE_FILE, json.dumps(state, indent=2).encode())
        accelerator.wait_for_everyone()
        if main:
            checkpointing.commit(partial, final)  # the commit point
            for old in completed_checkpoints(root)[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(root / f"{CHECKPOINT_PREFIX}{old}", ignore_errors=True)
    except Exception as exc:
        # Under `accelerate launch` the failing process exits and torchrun stops the others.
        estimate = checkpointing.tensor_bytes([weights, optimizer_state])
        previous = [root / f"{CHECKPOINT_PREFIX}{s}" for s in completed_checkpoints(root) if s != step]
        error = checkpointing.write_failure(exc, final, estimate, previous[-1] if previous else None)
        if error is None:
            raise
        raise error from exc
    accelerator.wait_for_everyone()
    return final


def checkpoint_dirs(root: Path) -> list[Path]:
    """Every `step-N` directory under root, oldest first (whole or not: see `completed_checkpoints`)."""
    found = []
    for path in root.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if suffix.isdigit() and path.is_dir():
            found.append((int(suffix), path))
    return [path for _, path in sorted(found)]


def completed_checkpoints(root: Path) -> list[int]:
    """Steps of the committed checkpoints under root (those with a manifest; a partial one never
    counts). Whether their files still match it is `checkpointing.verify`'s question."""
    return [int(p.name[len(CHECKPOINT_PREFIX):]) for p in checkpoint_dirs(root)
            if (p / checkpointing.MANIFEST_FILE).is_file()]


def load_checkpoint_state(path: Path, *, model, optimizer, scheduler, controllers: dict, accelerator,
                          average=None) -> int:
    """Restore everything saved by save_checkpoint_state; return the step it was taken after."""
    from safetensors.torch import load_file

    from rlhf_stack import distributed
    from rlhf_stack.errors import ConfigError

    state = json.loads((path / STATE_FILE).read_text())
    if state["world_size"] != accelerator.num_processes:
        raise ConfigError(f"{path} was written by {state['world_size']} processes; resume it with the same "
                          f"number (now {accelerator.num_processes}) or start a fresh output_dir")
    if state.get("sharded", False) != distributed.is_sharded(model):
        kinds = {True: "sharded (FSDP2)", False: "unsharded"}
        raise ConfigError(f"{path} was written by a {kinds[state.get('sharded', False)]} run; resume it the same "
                          f"way (now {kinds[distributed.is_sharded(model)]}) or start a fresh output_dir")
    weights = load_file(str(path / "trainable.safetensors"))
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in weights]
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks trainable weights {missing[:3]}...")
    distributed.load_weights(model, weights)
    # map to "cpu": the states move to their parameters' devices on load (a saved "cpu:0" tag, as
    # gathered FSDP2 states carry, cannot be mapped back by torch.load)
    distributed.load_optimizer_state(model, optimizer, torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    for name, controller in controllers.items():
        controller.load_state_dict(state[name])
    if average is not None:
        if not (path / AVERAGE_FILE).is_file():
            raise ConfigError(f"{path} holds no policy average (it was written with policy_ema unset); resume it "
                              "with policy_ema unset or start a fresh output_dir")
        average.load_state_dict(load_file(str(path / AVERAGE_FILE)))
    set_rng_state(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return int(state["step"])


def resume_latest(root: Path, *, model, optimizer, scheduler, controllers: dict, accelerator, average=None) -> int:
    """Load the newest whole checkpoint under `root` into the given objects; return its step
    (0 when there is none: the run starts from step 1). Newer checkpoints whose files no longer
    match their manifest are moved to `root/corrupt/`, each with a printed reason."""
    if accelerator.is_main_process:
        checkpointing.drop_damaged(checkpoint_dirs(root), "ppo")
    accelerator.wait_for_everyone()
    steps = completed_checkpoints(root)
    if not steps:
        return 0
    path = root / f"{CHECKPOINT_PREFIX}{steps[-1]}"
    step = load_checkpoint_state(path, model=model, optimizer=optimizer, scheduler=scheduler,
                                 controllers=controllers, accelerator=accelerator, average=average)
    if accelerator.is_main_process:
        print(f"[ppo] resuming from {path} (step {step})", flush=True)
    return step
