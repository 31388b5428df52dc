"""LoRA linear layers as one autograd step (`fused_lora.py`): the same outputs and gradients as peft's
own forward (bitwise outputs with a power-of-two scaling, gradients to float rounding); peft's forward
wherever the fused path does not apply."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rlhf_stack.fused_lora import FusedLoRALinear, fuse_lora_linears
from rlhf_stack.gated_mlp import fuse_gated_mlps
from rlhf_stack.rebuild import enable_rebuilds
from tests.conftest import loss_and_grads

IDS = torch.randint(3, 500, (3, 9), generator=torch.Generator().manual_seed(1))


def lora_model(tiny_causal_lm, alpha: int = 32, dropout: float = 0.0, **extra):
    """The tiny LM with LoRA r16 on every linear layer, B random (peft starts it at zero, which
    would hide any error in the adapter's product)."""
    base = tiny_causal_lm()
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules="all-linear", **extra))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model


def fused_calls(monkeypatch) -> list[int]:
    calls = []
    apply = FusedLoRALinear.apply
    monkeypatch.setattr(FusedLoRALinear, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


def assert_same_gradients(grads: dict, fused_grads: dict) -> None:
    """The same gradients up to the order in which autograd sums an input's gradient contributions
    (q/k/v and gate/up share their input, and peft's layers add theirs one by one)."""
    assert grads.keys() == fused_grads.keys()
    for name, grad in grads.items():
        assert (fused_grads[name] - grad).norm() <= 1e-5 * grad.norm(), name


@pytest.mark.parametrize("alpha", [32, 24])  # scaling 2 (exact), 1.5
@pytest.mark.parametrize("rebuilt", [False, True])
def test_same_outputs_and_gradients_as_peft(tiny_causal_lm, monkeypatch, rebuilt, alpha):
    plain = lora_model(tiny_causal_lm, alpha=alpha).train()
    fused = copy.deepcopy(plain)
    layers = plain.config.num_hidden_layers
    assert fuse_lora_linears(fused) == layers
    assert fuse_lora_linears(fused) == 0  # hooked once
    if rebuilt:  # the input LoRA A keeps is a norm output or the gated product: rebuilt, not kept
        fuse_gated_mlps(plain), fuse_gated_mlps(fused), enable_rebuilds(fused)
    calls = fused_calls(monkeypatch)
    logits, grads = loss_and_grads(plain, IDS)
    fused_logits, fused_grads = loss_and_grads(fused, IDS)
    assert len(calls) == 7 * layers  # q, k, v, o, gate, up, down of every block
    if alpha == 32:  # a power-of-two scaling: the forward is bitwise peft's
        assert torch.equal(logits, fused_logits)
    else:
        torch.testing.assert_close(fused_logits, logits, rtol=1e-6, atol=1e-6)
    assert len(grads) == 2 * 7 * layers
    assert_same_gradients(grads, fused_grads)


def test_without_gradients_the_base_layer_runs_and_the_product_is_added(tiny_causal_lm, monkeypatch):
    plain = lora_model(tiny_causal_lm)
    fused = copy.deepcopy(plain)
    fuse_lora_linears(fused)
    calls = fused_calls(monkeypatch)
    with torch.no_grad():
        assert torch.equal(plain(input_ids=IDS).logits, fused(input_ids=IDS).logits)
    assert calls == []


def test_frozen_adapter_gives_only_the_input_gradient(tiny_causal_lm):
    """An adapter that does not train (the reference's, or the value's while the policy trains)
    still passes the gradient on to the layers below."""
    plain = lora_model(tiny_causal_lm).train()
    for name, param in plain.named_parameters():
        if "lora" in name and ".layers.1." in name:
            param.requires_grad_(False)
    fused = copy.deepcopy(plain)
    fuse_lora_linears(fused)
    logits, grads = loss_and_grads(plain, IDS)
    fused_logits, fused_grads = loss_and_grads(fused, IDS)
    assert torch.equal(logits, fused_logits)
    assert not any(".layers.1." in name for name in fused_grads)
    assert_same_gradients(grads, fused_grads)


@pytest.mark.parametrize("case", ["dropout", "dora", "two_adapters", "disabled", "merged"])
def test_peft_forward_runs_where_the_fused_path_does_not_apply(tiny_causal_lm, monkeypatch, case):
    extra = {"use_dora": True} if case == "dora" else {}
    plain = lora_model(tiny_causal_lm, dropout=0.1 if case == "dropout" else 0.0, **extra).train()
    if case == "two_adapters":
        plain.add_adapter("other", LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        plain.base_model.set_adapter(["default", "other"])
    fused = copy.deepcopy(plain)
    fuse_lora_linears(fused)
    calls = fused_calls(monkeypatch)
    if case in ("disabled", "merged"):  # no adapter in the pass: nothing to train, the outputs compared
        if case == "merged":
            plain.merge_adapter()
            fused.merge_adapter()
        with plain.disable_adapter() if case == "disabled" else torch.enable_grad():
            logits = plain(input_ids=IDS).logits
        with fused.disable_adapter() if case == "disabled" else torch.enable_grad():
            fused_logits = fused(input_ids=IDS).logits
        assert calls == [] and torch.equal(logits, fused_logits)
        return
    torch.manual_seed(3)  # the same dropout masks on both sides
    logits, grads = loss_and_grads(plain, IDS)
    torch.manual_seed(3)
    fused_logits, fused_grads = loss_and_grads(fused, IDS)
    assert calls == []
    assert torch.equal(logits, fused_logits)
    assert grads.keys() == fused_grads.keys() and all(torch.equal(grads[n], fused_grads[n]) for n in grads)


def test_adapters_added_after_the_hook_are_switched(tiny_causal_lm, monkeypatch):
    """peft builds the LoRA layers after `configure_activations` runs: the blocks switch them when they run."""
    base = tiny_causal_lm()
    fuse_lora_linears(base)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    calls = fused_calls(monkeypatch)
    loss_and_grads(model.train(), IDS)
    assert len(calls) == 2 * base.config.num_hidden_layers


def test_a_model_without_blocks_is_left_alone():
    assert fuse_lora_linears(torch.nn.Linear(4, 4)) == 0
