"""Activations rebuilt in the backward from tensors autograd keeps anyway, instead of kept.

A decoder block's backward keeps some tensors that are cheap functions of others it keeps too:
- a norm's output (the input of the attention's q, k, v and of the MLP's gate and up projections) is
  kept by those projections' LoRA A (or, under full tuning, their weights) for the weights' gradients,
  while the norm itself keeps its input for its own backward;
- the gated MLP's product (`gated_mlp.py`) is kept by the down projection for the same reason, while
  the product's step keeps the gate's and the up projection's outputs.

`enable_rebuilds(model)` wraps each decoder block's forward in `scope()`: saved-tensor hooks that
swap any saved view of an offered tensor (a norm's output, the product) for a recipe, and run the
recipe when the backward asks for it. A norm's recipe calls the norm's own forward again on the input
it kept; the product's recipe runs the product's own ops on `gate` and `up`. The same ops on the same
inputs give the same bits, so outputs and gradients are bitwise equal (tests compare with
`torch.equal`). Nothing about who saves the tensor is assumed (peft's LoRA A, DoRA, a full weight).

On SmolLM2-135M, LoRA on every linear layer, 8 rows of 110 tokens: two norm outputs (2 MB each) and
one product (5.4 MB) per block, ~9.4 MB x 30 blocks leave memory while a pass's activations are held;
the backward pays one norm or product per rebuilt tensor (benchmarks/gated_mlp_memory.py).

The scope stands aside when saved-tensor hooks are already active (non-reentrant gradient
checkpointing, offloading): those hooks decide what is kept then, and a recipe would keep its inputs
alive past them. It also does nothing without gradients.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from types import MethodType

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

Tensor = torch.Tensor
_local = threading.local()


class _Offer:
    """A tensor the current scope may rebuild: its storage (weakly: an address is reused once the
    tensor dies) and how to make it again."""

    __slots__ = ("ref", "address", "dtype", "make")

    def __init__(self, tensor: Tensor, make: Callable[[], Tensor]):
        storage = tensor.untyped_storage()
        self.ref, self.address, self.dtype, self.make = StorageWeakRef(storage), storage.data_ptr(), tensor.dtype, make

    def holds(self, tensor: Tensor) -> bool:
        return (tensor.dtype == self.dtype and tensor.untyped_storage().data_ptr() == self.address
                and not self.ref.expired())


class _Recipe:
    """What is saved in place of a view of an offered tensor."""

    __slots__ = ("make", "size", "stride", "offset")

    def __init__(self, make: Callable[[], Tensor], view: Tensor):
        self.make, self.size, self.stride, self.offset = make, view.size(), view.stride(), view.storage_offset()

    def tensor(self) -> Tensor:
        return self.make().as_strided(self.size, self.stride, self.offset)


def offer(tensor: Tensor, make: Callable[[], Tensor]) -> None:
    """Let the enclosing scope save `make` instead of `tensor`; `make()` must return bitwise the same
    values as a fresh contiguous tensor, and must not hold `tensor` itself. Outside a scope: nothing."""
    offers = getattr(_local, "offers", None)
    if offers is not None and tensor.untyped_storage().data_ptr() != 0:  # an empty tensor has no address
        offers.append(_Offer(tensor, make))


def _outer_saved_tensor_hooks() -> bool:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is not None and top(False) is not None


@contextlib.contextmanager
def scope():
    """Tensors offered inside are saved as recipes by the autograd nodes made inside."""
    if not torch.is_grad_enabled() or _outer_saved_tensor_hooks():
        yield
        return
    offers: list[_Offer] = []

    def pack(tensor: Tensor):
        for candidate in offers:
            if candidate.holds(tensor):
                return _Recipe(candidate.make, tensor)
        return tensor

    def unpack(packed):
        return packed.tensor() if isinstance(packed, _Recipe) else packed

    outer, _local.offers = getattr(_local, "offers", None), offers
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _local.offers = outer
        offers.clear()  # every saved node holds `pack`: it must not hold the offers' inputs past the forward


def _scoped_forward(self: nn.Module, *args, **kwargs):
    with scope():
        return type(self).forward(self, *args, **kwargs)


def _rebuilt_norm(norm: nn.Module, x: Tensor, version: int) -> Tensor:
    if x._version != version:
        raise RuntimeError(f"{type(norm).__name__}'s input was modified in place after the forward; "
                           "its output cannot be rebuilt (set rebuild_activations: false)")
    with torch.no_grad():
        return type(norm).forward(norm, x)


def _offering_forward(self: nn.Module, x: Tensor) -> Tensor:
    out = type(self).forward(self, x)
    if torch.is_grad_enabled():
        offer(out, lambda norm=self, x=x, version=x._version: _rebuilt_norm(norm, x, version))
    return out


def _is_norm(module: nn.Module) -> bool:
    """A stateless norm (RMSNorm, LayerNorm): its output is its own forward of its input, again."""
    return (type(module).__name__.endswith("Norm") and not list(module.children())
            and isinstance(getattr(module, "weight", None), nn.Parameter) and "forward" not in module.__dict__)


def enable_rebuilds(model: nn.Module) -> int:
    """Scope every decoder block of `model` and offer its norms' outputs; returns how many blocks.
    A block or norm whose `forward` something else already replaced is left alone (so a second
    call changes nothing). A model without recognisable blocks is left as it is (0)."""
    from rlhf_stack.architecture import transformer_blocks

    try:
        blocks = transformer_blocks(model)
    except ValueError:
        return 0
    scoped = 0
    for block in blocks:
        if "forward" in block.__dict__:
            continue
        block.forward = MethodType(_scoped_forward, block)
        scoped += 1
        for module in block.modules():
            if _is_norm(module):
                module.forward = MethodType(_offering_forward, module)
    return scoped
