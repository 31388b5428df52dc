"""The gated MLP's product `act(gate(x)) * up(x)` as one autograd step that keeps less for the backward.

Llama-family MLPs (Llama, Mistral, Qwen2/3, SmolLM2, ...) compute `down(act(gate(x)) * up(x))`. Run by
autograd op by op, the backward keeps three tensors of the intermediate width for that product: the
gate's output (for the activation's gradient), and the activation's output and the up projection's
output (for the product's). The activation's output is a function of the gate's output, so keeping it
is redundant: `GatedProduct` keeps only the gate's and the up projection's outputs and recomputes the
activation in the backward, one elementwise pass over a tensor the backward reads anyway.

Same arithmetic, same results: the forward runs the very ops it replaces, and the backward runs the
ones autograd would (`aten.silu_backward` on `grad * up`, and `grad * act(gate)`), so outputs and
gradients are bitwise equal (tests compare with `torch.equal`). It saves one `(tokens, intermediate)`
tensor per block while a pass's activations are held: on SmolLM2-135M, 30 x 5.4 MB for 8 rows of 110
tokens, ~14% of what the pass keeps (benchmarks/RESULTS.md, twenty-first session).

The product itself is the down projection's input, kept by its LoRA A (or full weight) for the weight's
gradient. It is offered to `rebuild.py`: inside a block that `enable_rebuilds` scoped, the backward
rebuilds it from `gate` and `up` with the same two ops instead of keeping it.

`fuse_gated_mlps(model)` switches every such MLP of a model a stage trains (`ModelConfig.fuse_gated_mlp`,
on by default). Only MLPs whose own forward gives exactly the fused result on a probe are switched
(transformers' `SiLUActivation` and `nn.SiLU` both pass); any other MLP (another activation, a fused
gate_up projection, extra steps) keeps its forward.
Without gradients (sampling, scoring) the plain ops run, with no autograd function in the way.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_stack.rebuild import offer

Tensor = torch.Tensor


class GatedProduct(torch.autograd.Function):
    """silu(gate) * up, keeping only `gate` and `up` for the backward."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


def _fused_forward(self: nn.Module, x: Tensor) -> Tensor:
    """The MLP's forward, bound to it as a method (a deep copy of the model rebinds it to the copy)."""
    gate, up = self.gate_proj(x), self.up_proj(x)
    if not torch.is_grad_enabled():
        return self.down_proj(self.act_fn(gate) * up)
    product = GatedProduct.apply(gate, up)
    offer(product, lambda gate=gate, up=up: _product_again(gate, up))
    return self.down_proj(product)


@torch.no_grad()
def _product_again(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up  # GatedProduct.forward's ops: bitwise its output


def _is_gated(module: nn.Module) -> bool:
    """Has the parts of a gated MLP and its class's own forward (the probe decides the rest)."""
    return (all(isinstance(getattr(module, name, None), nn.Module)
                for name in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            and "forward" not in module.__dict__)


@torch.no_grad()
def _same_as_own_forward(mlp: nn.Module) -> bool:
    """Whether the MLP's own forward is exactly down(silu(gate(x)) * up(x)) on a random probe."""
    weight = next(mlp.parameters())
    width = mlp.gate_proj.in_features if hasattr(mlp.gate_proj, "in_features") else weight.shape[-1]
    probe = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0)).to(weight.device, weight.dtype)
    modes = [(module, module.training) for module in mlp.modules()]
    mlp.eval()  # no dropout in adapters: the probe must be deterministic
    try:
        return torch.equal(mlp(probe), mlp.down_proj(F.silu(mlp.gate_proj(probe)) * mlp.up_proj(probe)))
    finally:
        for module, training in modes:
            module.training = training


def fuse_gated_mlps(model: nn.Module) -> int:
    """Switch every SiLU gated MLP of `model` to the fused product; returns how many were switched.

    Each MLP class is probed once (its own forward against the fused formula, exact equality); an
    MLP whose `forward` something else already replaced (a hook, an earlier call) is left alone.
    """
    verdict: dict[type, bool] = {}
    switched = 0
    for module in model.modules():
        if not _is_gated(module):
            continue
        kind = type(module)
        if kind not in verdict:
            verdict[kind] = _same_as_own_forward(module)
        if verdict[kind]:
            module.forward = MethodType(_fused_forward, module)
            switched += 1
    return switched
