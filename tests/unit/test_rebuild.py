"""Activations rebuilt in the backward (`rebuild.py`): not kept, and bitwise the same gradients
(the bitwise comparison with the fused MLP is in test_gated_mlp.py)."""

import copy

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from rlhf_stack import rebuild
from rlhf_stack.gated_mlp import GatedProduct, fuse_gated_mlps
from rlhf_stack.rebuild import enable_rebuilds
from tests.conftest import loss_and_grads


def record_storages(monkeypatch, model) -> dict[str, list[StorageWeakRef]]:
    """Weak references to the storage of every norm output and gated product made from now on."""
    made = {"norm": [], "product": []}
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.register_forward_hook(lambda m, i, out: made["norm"].append(StorageWeakRef(out.untyped_storage())))
    forward = GatedProduct.forward

    def recording(ctx, gate, up):
        product = forward(ctx, gate, up)
        made["product"].append(StorageWeakRef(product.untyped_storage()))
        return product

    monkeypatch.setattr(GatedProduct, "forward", staticmethod(recording))
    return made


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("rebuilt", [True, False])
def test_rebuilt_tensors_do_not_outlive_the_forward(tiny_causal_lm, monkeypatch, lora, rebuilt):
    """LoRA A (or the full weights) of q/k/v, gate/up and down would keep the blocks' norm outputs
    and the products for their weights' gradients. Rebuilt, none of them is held once the forward
    is done, though the graph is; the backward still gives every gradient. Not rebuilt, all are kept.
    (The final norm feeds a frozen LM head under LoRA, which keeps nothing of it either way.)"""
    model = tiny_causal_lm(lora).train()
    fuse_gated_mlps(model)
    if rebuilt:
        assert enable_rebuilds(model) == model.config.num_hidden_layers
    made = record_storages(monkeypatch, model)
    loss = model(input_ids=torch.randint(3, 500, (3, 8))).logits.square().mean()
    layers = model.config.num_hidden_layers
    in_blocks = made["norm"][:2 * layers]  # input and post-attention norms, block by block; then the final norm
    assert len(in_blocks) == 2 * layers and len(made["product"]) == layers
    assert [ref.expired() for ref in in_blocks + made["product"]] == [rebuilt] * (3 * layers)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_under_gradient_checkpointing_the_scope_stands_aside(tiny_causal_lm, monkeypatch):
    """Checkpointing's own saved-tensor hooks decide what is kept: no recipe is made (it would keep
    its inputs alive past them), and the gradients equal the plain model's."""
    plain = tiny_causal_lm().train()
    rebuilt = copy.deepcopy(plain)
    fuse_gated_mlps(rebuilt)
    enable_rebuilds(rebuilt)
    for model in (plain, rebuilt):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    monkeypatch.setattr(rebuild._Recipe, "__init__", lambda *a: pytest.fail("a recipe was made"))
    ids = torch.randint(3, 500, (2, 6))
    (_, plain_grads), (_, rebuilt_grads) = loss_and_grads(plain, ids), loss_and_grads(rebuilt, ids)
    assert plain_grads.keys() == rebuilt_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.equal(grad, rebuilt_grads[name]), name


def test_without_gradients_or_twice_nothing_changes(tiny_causal_lm, monkeypatch):
    """No scope without gradients (sampling, scoring); a second call scopes nothing more; a deep copy
    is scoped too and computes with its own weights."""
    model = tiny_causal_lm()
    ids = torch.randint(3, 500, (2, 5))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    assert enable_rebuilds(model) == 2 and enable_rebuilds(model) == 0
    monkeypatch.setattr(rebuild, "offer", lambda *a: pytest.fail("offered without gradients"))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain)
    twin = copy.deepcopy(model)
    assert "forward" in twin.model.layers[0].__dict__
    with torch.no_grad():
        twin.model.layers[0].input_layernorm.weight.mul_(2.0)
        assert not torch.equal(twin(input_ids=ids).logits, plain)


def test_a_norm_input_changed_in_place_is_an_error_not_a_wrong_gradient(tiny_causal_lm):
    """The recipe runs the norm on the input it kept: if that input was modified in place after the
    forward, the rebuild would differ, so the backward raises instead."""
    model = tiny_causal_lm(True).train()
    enable_rebuilds(model)
    captured = []
    model.base_model.model.model.layers[1].post_attention_layernorm.register_forward_hook(
        lambda m, inputs, out: captured.append(inputs[0]))
    loss = model(input_ids=torch.randint(3, 500, (2, 5))).logits.square().mean()
    with torch.no_grad():
        captured[0].add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_a_peft_wrapped_model_is_scoped(tiny_causal_lm):
    """The blocks are found under peft's wrapper (stages apply it after LoRA too, e.g. a value model)."""
    model = tiny_causal_lm(True)
    assert enable_rebuilds(model) == model.config.num_hidden_layers
