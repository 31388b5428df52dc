"""Sharded training through accelerate's FSDP2 plugin, on GPUs and on CPU processes alike.

Every stage runs under `accelerate launch --config_file recipes/accelerate/fsdp.yaml`: the
launcher sets `ACCELERATE_USE_FSDP` and the `FSDP_*` variables, accelerate builds its
`FullyShardedDataParallelPlugin` from them, and `accelerator.prepare` applies torch's
`fully_shard` (one unit per transformer block, `fsdp_version: 2`). What this module adds:

- `accelerator()`: the stages' one way to build an `Accelerator` (PPO's own, and the shared
  state a transformers `Trainer` picks up, `trainer_kwargs`). accelerate 1.15 turns a CPU process
  of a torchrun launch into a MULTI_CPU rank and drops the FSDP plugin the launcher asked for
  (accelerate/state.py, `AcceleratorState.__init__`: only the accelerator types get the FSDP
  branch), although torch's `fully_shard` runs on CPU over gloo. `_restore_fsdp` puts the plugin
  back, so a two-process CPU run shards for real: the test of this path on a machine without a GPU.
- `full_state_dict`: the gathered weights of a sharded model (every process must call it; the
  main one gets the tensors), so checkpoints are plain HF/peft directories.
- `is_sharded`, `world_size`, `is_main_process`, `barrier`: the questions the stages ask.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator


def fsdp_requested() -> bool:
    """`accelerate launch` was given an FSDP config (it exports ACCELERATE_USE_FSDP to every process)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def accelerator(**kwargs: Any) -> Accelerator:
    """An `Accelerator` on CUDA when present, else the CPU; under an FSDP launch, with FSDP in effect."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available(), **kwargs)
    _restore_fsdp(acc)
    return acc


def trainer_kwargs() -> dict[str, Any]:
    """Extra `TrainingArguments` keywords. Under an FSDP launch on CPU: accelerate's process-wide
    state is created here the way `accelerator()` does, and `use_configured_state` makes the
    Trainer keep it (it would reset it and lose FSDP again). {} anywhere else."""
    if not (fsdp_requested() and not torch.cuda.is_available()):
        return {}
    accelerator()
    return {"accelerator_config": {"use_configured_state": True}}


def _restore_fsdp(acc: Accelerator) -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = acc.state
    if fsdp_requested() and state.distributed_type == DistributedType.MULTI_CPU:
        # Both shared states: every later AcceleratorState() copies PartialState's type over its own.
        PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
        if getattr(state, "fsdp_plugin", None) is None:
            state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables, as accelerate does


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` (or any module in it) was sharded by `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole state dict of a sharded model, gathered to plain CPU tensors on the main process
    ({} on the others); None when `model` is not sharded (save it as it is). A collective: every
    process calls it, with the same model."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: whole CPU tensor} of the parameters that require grad. Under FSDP2 each is gathered
    from its shards: a collective, so every process calls it and the main one saves the result."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            tensor = param.detach()
            out[name] = (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).cpu().contiguous()
    return out


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (as `trainable_weights` returns them) into the model's parameters, each
    process keeping its own shard of a sharded one (every process reads the file: no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            param = params[name]
            if isinstance(param, DTensor):
                tensor = distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements,
                                           src_data_rank=None)
            param.copy_(tensor.to(param.device))


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict; under FSDP2 gathered whole, keyed by parameter name (every
    process calls it; the main process saves it)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of `optimizer_state` (every process passes the whole state it read)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor as an ordinary tensor (e.g. the gradient norm FSDP2 returns, replicated); else as is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
