"""Sampling through oneDNN-packed weights (`ppo/packed.py`): the same outputs, the layers restored."""

import pytest
import torch
from torch import nn

from rlhf_stack.ppo.packed import packed_linears, packing_available

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch build has no oneDNN: nothing to pack")


def linears(model) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("lora", [False, True])
def test_packed_layers_compute_the_plain_logits_and_are_restored(tiny_causal_lm, lora):
    """Every plain float32 Linear (a LoRA layer's base and its A/B too) is packed, the logits equal
    the unpacked model's to 1e-5 at a decoding batch and at a training-sized one, and every layer
    gets its own forward back when the context ends."""
    assert packing_available()
    model = tiny_causal_lm(lora)
    ids = torch.randint(3, 200, (6, 11))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with packed_linears(model) as n:
            assert n == len(linears(model)) > 0
            assert all("forward" in m.__dict__ for m in linears(model))
            packed = model(input_ids=ids).logits
            one_row = model(input_ids=ids[:1]).logits
    assert all("forward" not in m.__dict__ for m in linears(model))
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_row, plain[:1], atol=1e-5, rtol=1e-5)


def test_a_pass_with_autograd_on_uses_the_layers_own_forward(tiny_causal_lm):
    """The packed op has no backward: with autograd on, the layer computes as unpacked and the
    gradients are the plain ones."""
    model = tiny_causal_lm()
    ids = torch.randint(3, 200, (2, 7))
    model(input_ids=ids).logits.square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with packed_linears(model):
        model(input_ids=ids).logits.square().mean().backward()
    for grad, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, grad)


def test_layers_are_restored_when_the_body_raises_and_nothing_is_packed_when_off(tiny_causal_lm):
    model = tiny_causal_lm()
    with pytest.raises(RuntimeError, match="boom"), packed_linears(model):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in linears(model))
    with packed_linears(model, enabled=False) as n:
        assert n == 0
    with packed_linears(model.to(torch.float64)) as n:  # float32 only
        assert n == 0


def test_a_nested_context_leaves_the_outer_ones_layers_packed(tiny_causal_lm):
    """An inner context packs nothing more, and its exit leaves the outer packing in place until
    that ends. A layer whose forward someone else replaced (e.g. an accelerate hook) is not
    touched: not packed, and its forward still there afterwards."""
    model = tiny_causal_lm()
    hooked = linears(model)[0]
    hooked.forward = lambda x: nn.Linear.forward(hooked, x)
    ids = torch.randint(3, 200, (2, 5))
    with torch.no_grad(), packed_linears(model) as outer:
        assert outer == len(linears(model)) - 1
        forwards = {m: m.__dict__["forward"] for m in linears(model)}
        with packed_linears(model) as inner:
            assert inner == 0
        assert all(m.__dict__["forward"] is forwards[m] for m in linears(model))
        model(input_ids=ids)
    assert [m for m in linears(model) if "forward" in m.__dict__] == [hooked]



def test_frozen_layers_packed_once_for_a_run_and_the_trainable_ones_at_each_call(tiny_causal_lm):
    """PPO's layout: an outer `frozen_only` context packs the frozen base for the whole run, and each
    call's context packs only the trainable LoRA matrices, afresh: an optimizer change to a
    trainable weight between calls shows in the next call's logits as in the unpacked model."""
    model = tiny_causal_lm(lora=True)
    trainable = [m for name, m in model.named_modules() if type(m) is nn.Linear and "lora_" in name]
    frozen = [m for m in linears(model) if m not in trainable]
    for p in model.parameters():
        p.requires_grad_(False)
    for m in trainable:
        m.weight.requires_grad_(True)
    ids = torch.randint(3, 200, (4, 9))

    def optimizer_step(sign=1.0):
        with torch.no_grad():
            for m in trainable:
                m.weight.add_(sign * 0.05)

    want = []
    with torch.no_grad():
        for _ in range(2):
            want.append(model(input_ids=ids).logits)
            optimizer_step()
    optimizer_step(-2.0)
    with torch.no_grad(), packed_linears(model, frozen_only=True) as outer:
        assert outer == len(frozen) > 0 and all("forward" not in m.__dict__ for m in trainable)
        forwards = {m: m.__dict__["forward"] for m in frozen}
        for expected in want:
            with packed_linears(model) as inner:
                assert inner == len(trainable)
                got = model(input_ids=ids).logits
            assert all(m.__dict__["forward"] is forwards[m] for m in frozen)  # kept, not packed again
            assert all("forward" not in m.__dict__ for m in trainable)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            optimizer_step()
    assert all("forward" not in m.__dict__ for m in linears(model))


@pytest.mark.parametrize("fused", [False, True])
def test_a_training_pass_through_packed_frozen_weights_gives_the_plain_gradients(tiny_causal_lm, fused):
    """With autograd on, a frozen layer's product runs through its packed W (the fused LoRA step
    borrows it for its base product), and a layer named in `transpose` its input gradient through a
    packed W^T: the LoRA gradients equal the plain ones to float rounding, and W^T copies exist only
    for the named layers a backward reached. Unfused: only the LM head is named (PPO's choice);
    fused: every layer, so the fused step's base input gradients must go through them."""
    from rlhf_stack.fused_lora import fuse_lora_linears

    model = tiny_causal_lm(lora=True)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    if fused:
        assert fuse_lora_linears(model) > 0
    head = model.get_output_embeddings()
    ids = torch.randint(3, 200, (3, 10))

    def grads():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    with packed_linears(model, frozen_only=True, transpose=tuple(linears(model)) if fused else (head,)) as n:
        assert n > 0
        packed = grads()
        products = {m: m.__dict__["forward"].product for m in linears(model) if "forward" in m.__dict__}
        bases = {name: m.base_layer.__dict__["forward"].product for name, m in model.named_modules()
                 if hasattr(m, "base_layer") and "forward" in m.base_layer.__dict__}
    assert products[head]._transposed is not None
    if fused:  # every base layer's input gradient ran packed, but the first block's q/k/v (no input gradient)
        without = sorted(name.split(".")[-1] for name, p in bases.items() if p._transposed is None)
        assert len(bases) > 3 and without == ["k_proj", "q_proj", "v_proj"]
        assert all(".layers.0." in name for name, p in bases.items() if p._transposed is None)
    else:
        assert [m for m, p in products.items() if p._transposed is not None] == [head]
    for name, grad in plain.items():
        torch.testing.assert_close(packed[name], grad, atol=1e-5 * grad.norm().item() + 1e-7, rtol=1e-4)
