"""Sampling (and frozen layers' products in training) on CPU through oneDNN-packed linear weights.

A decoding step multiplies a handful of rows (the batch) by every weight matrix of the model.
At those shapes torch's default CPU GEMM (MKL) is far from this hardware's bound: on the 2-core
AMD EPYC these figures come from, SmolLM2-135M's 210 decoder products at batch 8 take 50 ms and
its 49k-row LM head 17 ms; oneDNN with the weights reordered once into its blocked layout
(`mkldnn._reorder_linear_weight`, the kernel torch.compile's CPU backend uses) takes 21 ms and
4 ms (benchmarks/packed_linear.py). Stage 3's sampling ran 1.4-1.5x the tokens/s of plain
`generate()` (benchmarks/RESULTS.md, twelfth session).

`packed_linears(model)` reorders every float32 `nn.Linear` weight of a CPU model when it starts
and puts the originals back when it ends; the copies (one more set of the weights, for the
duration only) are freed then. It hands glibc's free pages back to the OS on the way in and out
(`malloc_trim`): without that, the copies came on top of the activations the last PPO update
freed and glibc kept, and the real-model PPO benchmark's peak RSS rose by 75-165 MB.

Reordering SmolLM2-135M's weights takes 0.25-0.35 s, paid at every `generate()` call. A caller
whose frozen weights stay as they are for longer packs those once: `packed_linears(model,
frozen_only=True)` around the whole run (PPO's steps, an evaluation's batches), and each call's
context inside it packs only what is left, the trainable layers, whose weights the optimizer
changes between calls. Whoever holds the outer context must not change a frozen weight meanwhile
(merging an adapter into the base does: PPO skips the outer context then). The Trainer stages (SFT,
reward model, DPO) hold one around `trainer.train` (`training.frozen_weights_packed`).

Inside it, with autograd off a layer runs the packed product. With autograd on, a trainable layer
runs its own forward (the oneDNN op has no backward), so a stray training pass stays correct; a
frozen one runs the packed product (`PackedProduct`; a fused LoRA layer borrows it for its base
product, `fused_lora.py`), and the layers the caller names (`transpose`: PPO names the LM head)
their input gradient `g W` too, through a packed copy of W^T made at the first backward. At PPO's
training shapes (300-540 rows) oneDNN took 0.4-0.5x MKL's time for both products on this CPU
(benchmarks/RESULTS.md, twenty-seventh session). The W^T copies of every adapted block saved
only ~5% more of the quickstart's PPO epochs, and with LoRA on every block they cost one more copy
of the model (the real-model PPO benchmark's peak rose to 0.62x TRL's): only the LM head's, the
largest product, is made. Outputs and gradients equal the plain ones up to float rounding (tested).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

TRIM_BYTES = 64 << 20  # packing at least this much hands glibc's free pages back on the way in and out


@cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library, another OS)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Hand the pages the C heap holds free back to the OS (glibc `malloc_trim(0)`); False where
    there is no glibc. A training step frees its activations into glibc's heap, which keeps them
    resident; without this, the packed copies would come on top of that memory."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@cache
def packing_available() -> bool:
    """This torch build has oneDNN's packed linear and it agrees with `F.linear` on a probe."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(24, 16, generator=generator)
        bias = torch.randn(24, generator=generator)
        x = torch.randn(3, 5, 16, generator=generator)
        packed = ops._reorder_linear_weight(weight, 8)
        out = ops._linear_pointwise(x, packed, bias, "none", [], "")
        return bool(torch.allclose(out, F.linear(x, weight, bias), atol=1e-5, rtol=1e-5))
    except (RuntimeError, AttributeError) as err:  # an op missing or refusing these shapes
        logger.info("oneDNN packed linear unavailable (%s); sampling uses torch's default GEMM", err)
        return False


class PackedProduct:
    """`x W^T (+ b)` of a layer through the packed copy of W, and the input gradient `g W` of that
    product: through a packed copy of W^T, made at the first backward and kept while this lives,
    when `transpose`; else through torch's GEMM (no copy)."""

    def __init__(self, module: nn.Linear, packed: Tensor, rows: int, transpose: bool = False) -> None:
        self.module, self.packed, self.rows, self.transpose = module, packed, rows, transpose
        self._transposed: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.module.bias, "none", [], "")

    def input_grad(self, grad: Tensor) -> Tensor:
        if not self.transpose:
            return grad @ self.module.weight
        if self._transposed is None:
            weight_t = self.module.weight.detach().t().contiguous()
            self._transposed = torch.ops.mkldnn._reorder_linear_weight(weight_t, self.rows)
        return torch.ops.mkldnn._linear_pointwise(grad.contiguous(), self._transposed, None, "none", [], "")


class _FrozenPackedLinear(torch.autograd.Function):
    """A frozen layer's product with autograd on: forward and input gradient both packed."""

    @staticmethod
    def forward(ctx, x: Tensor, product: PackedProduct) -> Tensor:
        ctx.product = product
        return product(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.product.input_grad(grad), None


def _trains(module: nn.Linear) -> bool:
    return module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad)


def _packed_forward(module: nn.Linear, product: PackedProduct):
    def forward(x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or (torch.is_grad_enabled() and _trains(module)):
            return F.linear(x, module.weight, module.bias)
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenPackedLinear.apply(x, product)
        return product(x)

    forward.product = product  # what a fused LoRA layer over this base computes with (`fused_lora.py`)
    return forward


@contextmanager
def packed_linears(model: nn.Module, enabled: bool = True, rows: int = 8, frozen_only: bool = False,
                   transpose: tuple[nn.Module, ...] = ()):
    """Run `model`'s plain float32 `nn.Linear` layers through packed weights for the duration.

    Yields the number of layers packed (0 when disabled, off the CPU, or unavailable). `rows`:
    the batch the packing is tuned for. Only exact `nn.Linear` instances (a peft LoRA layer's base
    layer and its A/B matrices are ones) whose weight is a plain float32 CPU tensor: subclasses
    (quantised layers) and sharded (DTensor) weights keep their own forward, and so does a layer
    whose `forward` something else already replaced (an enclosing `packed_linears`, an accelerate
    hook): it is neither packed nor, at the end, stripped of that forward. frozen_only: only the
    layers whose weight requires no gradient (module doc). transpose: the frozen layers whose input
    gradient runs through a packed W^T (one more copy of their weight once a backward reaches them).
    """
    patched: list[nn.Linear] = []
    large = False  # copies worth handing glibc's free pages back for (a few adapters' are not)
    try:
        if enabled and packing_available():
            patched = [module for module in model.modules()
                       if type(module) is nn.Linear and "forward" not in module.__dict__
                       and type(module.weight) in (Tensor, nn.Parameter)
                       and module.weight.dtype == torch.float32 and module.weight.device.type == "cpu"
                       and not (frozen_only and module.weight.requires_grad)]
        large = sum(module.weight.numel() * 4 for module in patched) >= TRIM_BYTES
        if large:
            release_free_heap()  # what the last update freed, so the copies do not come on top of it
        for module in patched:
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), rows)
            product = PackedProduct(module, packed, rows, transpose=any(module is t for t in transpose))
            module.forward = _packed_forward(module, product)
        yield len(patched)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)  # the instance attribute: the class's forward again
        if large:
            release_free_heap()  # the copies, freed above
