"""A LoRA linear layer `W x + s * B(A(x))` as one autograd step, without its elementwise passes.

peft's LoRA `Linear` computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`. Run op by op, the
forward makes the adapter's `(tokens, out)` product, scales it in a second pass over memory and adds
it to the base output in a third; the backward scales the incoming gradient in another full pass,
and adds the adapter's input gradient to the base's in one more. The adapter's rank is small (16 in
our recipes), so those passes over `(tokens, out)` and `(tokens, in)` tensors cost about as much as
the adapter's products themselves. `FusedLoRALinear` folds them into the products: the adapter's
product is added into the base output by the same GEMM call (`addmm_` with `alpha = scaling`), the
scaling is applied to the rank-wide tensors only, and the two input gradients are summed the same
way. What is kept for the backward is what autograd keeps: the input (for A's gradient, only when A
trains) and the rank-wide `A x` (for B's).

The arithmetic is peft's up to two reorderings: the scaling is applied to `g @ B` instead of to `g`
(exact with a power-of-two scaling: peft's alpha = r or 2r, every recipe here), and a layer's two
input gradients are summed before autograd adds them to the other layers' that share its input
(q/k/v, gate/up), not one by one. So with a power-of-two scaling the outputs are bitwise peft's, and
the gradients agree to float rounding (tests: within 1e-5 of the gradient's norm, and a dropped
scaling or input gradient fails them).

On SmolLM2-135M with LoRA r16 on every linear layer, 8 rows of 86 tokens: a training pass takes 0.86x
the time, a pass without gradients 0.94x; in the real-model PPO benchmark the step's RSS peak fell by
~540 MB, as the temporaries glibc's heap kept are no longer made (benchmarks/RESULTS.md, twenty-third
session).

`fuse_lora_linears(model)` switches the LoRA linear layers inside the model's decoder blocks
(`ModelConfig.fuse_lora`, on by default). peft builds those layers after `modeling.configure_activations`
runs, so each block gets a forward pre-hook that switches its LoRA layers the first time it runs with
some (adapters added to those layers later, as PPO's value adapter, run through them too). A switched
layer takes the fused path only for the plain case, checked at every call: one active adapter of
vanilla LoRA (no DoRA, no bias on B), not merged, no dropout while training, a plain `nn.Linear`
base with frozen weights, no autocast, no extra arguments. Anything else runs peft's own forward.
Without gradients (sampling, scoring) the base layer runs as it is (packed weights included,
`ppo/packed.py`) and the adapter's product is added into its output. With gradients, a base layer
running through packed weights (PPO packs the frozen base for its whole run) lends its packed
product and input gradient (`PackedProduct`) to the fused step; otherwise torch's GEMM computes them.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class FusedLoRALinear(torch.autograd.Function):
    """x W^T (+ bias) + s (x A^T) B^T, W and bias frozen."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, lora_a: Tensor, lora_b: Tensor,
                scaling: float, product=None) -> Tensor:
        """product: the base's `x W^T + b` and its input gradient through packed weights
        (`ppo.packed.PackedProduct`), or None (torch's GEMM)."""
        rows = x.reshape(-1, x.shape[-1])
        down = rows @ lora_a.t()  # (tokens, r)
        out = F.linear(rows, weight, bias) if product is None else product(rows)
        out.addmm_(down, lora_b.t(), alpha=scaling)
        needs_x, needs_a, needs_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        ctx.save_for_backward(x if needs_a else None, weight if needs_x else None, lora_a if needs_x else None,
                              lora_b, down if needs_b else None)
        ctx.scaling, ctx.product = scaling, product
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, lora_a, lora_b, down = ctx.saved_tensors
        needs_x, needs_a, needs_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_a = grad_b = None
        if needs_b:
            grad_b = (grad_rows.t() @ down).mul_(ctx.scaling)
        if needs_x or needs_a:
            grad_down = (grad_rows @ lora_b).mul_(ctx.scaling)  # (tokens, r)
            if needs_a:
                grad_a = grad_down.t() @ x.reshape(-1, x.shape[-1])
            if needs_x:
                base_grad = grad_rows @ weight if ctx.product is None else ctx.product.input_grad(grad_rows)
                grad_x = base_grad.addmm_(grad_down, lora_a).view(*grad.shape[:-1], weight.shape[1])
        return grad_x, None, None, grad_a, grad_b, None, None


def _plain_adapter(layer: nn.Module, x: Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active vanilla LoRA adapter the fused path can run, or None (peft's forward runs)."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    base = layer.base_layer
    if (name not in layer.lora_A or name in layer.lora_variant or layer.lora_B[name].bias is not None
            or type(base) is not nn.Linear or base.weight.requires_grad
            or (base.bias is not None and base.bias.requires_grad)):
        return None
    if x.dtype != base.weight.dtype or x.dtype != layer.lora_A[name].weight.dtype:
        return None
    if torch.is_autocast_enabled(x.device.type):
        return None
    dropout = layer.lora_dropout[name]
    if layer.training and not (isinstance(dropout, nn.Identity) or getattr(dropout, "p", 1.0) == 0):
        return None
    return name


def _fused_forward(self: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    name = _plain_adapter(self, x, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b, scaling = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    if not torch.is_grad_enabled():
        out = self.base_layer(x).contiguous()  # the adapter's product is added into it in place
        rows = x.reshape(-1, x.shape[-1])
        out.view(-1, out.shape[-1]).addmm_(rows @ lora_a.t(), lora_b.t(), alpha=scaling)
        return out
    base = self.base_layer
    # packed weights (`ppo/packed.py`): float32 only, as x is (`_plain_adapter` matched their dtypes)
    product = getattr(base.__dict__.get("forward"), "product", None)
    return FusedLoRALinear.apply(x, base.weight, base.bias, lora_a, lora_b, scaling, product)


def _switch_lora_layers(block: nn.Module, _args) -> None:
    """Forward pre-hook of a decoder block: switch the LoRA linear layers it holds. Once it has found
    some, it looks no more (a walk over a block's ~80 modules at every call costs ~0.1 ms, 4 ms a
    forward of 30 blocks: too much for a decoding step); adapters peft adds into the same layers later,
    as PPO's value adapter, run through them. A block without LoRA layers keeps looking."""
    if block.__dict__.get("_rlhf_lora_switched"):
        return
    from peft.tuners.lora import Linear as LoraLinear

    for module in block.modules():
        if type(module) is LoraLinear:
            if "forward" not in module.__dict__:
                module.forward = MethodType(_fused_forward, module)
            block._rlhf_lora_switched = True


def fuse_lora_linears(model: nn.Module) -> int:
    """Hook every decoder block of `model` so that its LoRA linear layers, present or added later,
    take the fused path; returns how many blocks were hooked (a block already hooked is skipped;
    a model without recognisable blocks is left as it is: 0)."""
    from rlhf_stack.architecture import transformer_blocks

    try:
        blocks = transformer_blocks(model)
    except ValueError:
        return 0
    hooked = 0
    for block in blocks:
        if getattr(block, "_rlhf_fused_lora", False):
            continue
        block.register_forward_pre_hook(_switch_lora_layers)
        block._rlhf_fused_lora = True
        hooked += 1
    return hooked
