"""The gated MLP's fused product (`gated_mlp.py`): bitwise the same results, one tensor less kept."""

import copy

import pytest
import torch
from torch import nn

from rlhf_stack.gated_mlp import GatedProduct, fuse_gated_mlps
from rlhf_stack.rebuild import enable_rebuilds
from tests.conftest import loss_and_grads


def kept_bytes(model, ids) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one forward (weights included)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids).logits.sum()
    return sum(storages.values())


@pytest.mark.parametrize("rebuild", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_fused_mlps_give_bitwise_the_same_logits_and_gradients(tiny_causal_lm, lora, rebuild):
    """Full tuning and LoRA on every linear layer, alone and with the activations rebuilt in the
    backward (`rebuild.py`: the norms' outputs and the product): every MLP is switched, and the
    logits and every parameter's gradient equal the plain model's exactly (torch.equal)."""
    plain = tiny_causal_lm(lora).train()
    fused = copy.deepcopy(plain)
    assert fuse_gated_mlps(fused) == plain.config.num_hidden_layers
    if rebuild:
        assert enable_rebuilds(fused) == plain.config.num_hidden_layers
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())  # both passes must draw nothing
    ids = torch.randint(3, 500, (3, 9))
    plain_logits, plain_grads = loss_and_grads(plain, ids)
    fused_logits, fused_grads = loss_and_grads(fused, ids)
    assert torch.equal(plain_logits, fused_logits)
    assert plain_grads.keys() == fused_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        assert torch.equal(grad, fused_grads[name]), name


def test_the_fused_pass_keeps_one_intermediate_tensor_per_block_less(tiny_causal_lm):
    """What autograd keeps for the backward shrinks by exactly the activation's output: one
    (tokens, intermediate) float32 tensor per block."""
    plain = tiny_causal_lm().train()
    ids = torch.randint(3, 500, (4, 10))
    before = kept_bytes(plain, ids)
    fuse_gated_mlps(plain)
    after = kept_bytes(plain, ids)
    config = plain.config
    assert before - after == config.num_hidden_layers * ids.numel() * config.intermediate_size * 4


def test_without_gradients_the_plain_ops_run(tiny_causal_lm, monkeypatch):
    """Under no_grad (sampling, scoring) the autograd function is not called, and the output is the same."""
    model = tiny_causal_lm()
    ids = torch.randint(3, 500, (2, 7))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    fuse_gated_mlps(model)
    monkeypatch.setattr(GatedProduct, "apply", lambda *a: pytest.fail("GatedProduct ran without gradients"))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain)


def test_an_mlp_that_computes_something_else_keeps_its_forward(tiny_causal_lm):
    """Another activation (the probe disagrees) or a forward already replaced: not switched."""
    model = tiny_causal_lm()
    mlps = [layer.mlp for layer in model.model.layers]
    mlps[0].act_fn = nn.GELU()
    mlps[1].forward = mlps[1].forward  # an instance-level forward, as a hook would leave
    assert fuse_gated_mlps(model) == 0
    assert "forward" not in mlps[0].__dict__


def test_switching_twice_changes_nothing_and_a_deep_copy_runs_its_own_weights(tiny_causal_lm):
    """A second call finds every MLP switched already; a deep copy's fused forward uses the copy's
    weights, not the original's."""
    model = tiny_causal_lm()
    assert fuse_gated_mlps(model) == 2
    assert fuse_gated_mlps(model) == 0
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer in twin.model.layers:
            layer.mlp.up_proj.weight.mul_(2.0)
    ids = torch.randint(3, 500, (2, 5))
    out, twin_out = model(input_ids=ids).logits, twin(input_ids=ids).logits
    assert not torch.equal(out, twin_out)

