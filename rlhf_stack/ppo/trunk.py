"""The frozen trunk: the blocks below every adapter on PPO's shared base, run once per rollout.

With LoRA on the top blocks only (`lora.last_n_layers`), the blocks below the lowest adapter
compute one function for the policy, the reference, the value and the reward adapters, and it
does not change during training. Their output for a rollout batch is computed once, right after
sampling (`Trunk.hidden`); every later pass over that batch (reference and value in the rollout,
policy and value in each PPO epoch) runs only the blocks above it (`Trunk.top`). On the
quickstart (adapters on 4 of 30 blocks) every pass but the first skips 26/30 of the block work.

The trunk's output for a rollout need not even be computed after sampling: sampling runs the same
blocks over the same tokens (`Trunk.record` keeps their output, `sampled_hidden` lays it out).
A reward model hosted on the same base reads it too, plus the few tokens its chat template adds,
run on the sampling's key/value cache (`Trunk.extend`, `trunk_reward.py`).

The split runs the backbone's own forward over a slice of its blocks (the bottom slice without
the final norm; the top slice from the hidden states as `inputs_embeds`), so positions, masks
and rotary embeddings are computed exactly as in one full pass. A model whose forward does more
to `inputs_embeds` (Gemma scales them) would differ: `Trunk.build` checks the split against a
full forward on a probe batch and returns None (no trunk, the full passes run) when they differ.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from rlhf_stack import modeling

Tensor = torch.Tensor


def first_adapted_block(backbone: nn.Module) -> int:
    """Index of the lowest decoder block holding any adapter (the number of blocks when none does)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    blocks = modeling.transformer_blocks(backbone)
    for index, block in enumerate(blocks):
        if any(isinstance(module, BaseTunerLayer) for module in block.modules()):
            return index
    return len(blocks)


@contextmanager
def _only_blocks(backbone: nn.Module, start: int, stop: int | None, final_norm: bool):
    """Run `backbone` over blocks[start:stop] only (and without its final norm unless asked)."""
    layers, norm = backbone.layers, backbone.norm
    backbone.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        backbone.norm = nn.Identity()
    try:
        yield
    finally:
        backbone.layers, backbone.norm = layers, norm


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding; `(b, T) -> (b, T)`, as generate() computes them."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


class Trunk:
    """The bottom `depth` blocks of a decoder backbone (e.g. LlamaModel), split from the rest."""

    def __init__(self, backbone: nn.Module, depth: int) -> None:
        self.backbone = backbone
        self.depth = depth

    @torch.no_grad()
    def hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """`(b, T) -> (b, T, H)`: the hidden states after the frozen blocks (no gradient)."""
        with _only_blocks(self.backbone, 0, self.depth, final_norm=False):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                 position_ids=position_ids_from_mask(attention_mask)).last_hidden_state

    def top(self, hidden: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """`(b, T, H) -> (b, T, H)`: the remaining blocks and the final norm, from `hidden`, with
        whatever adapter is active (the backbone's last_hidden_state of a full pass). attention_mask:
        `(b, T)` (positions then skip its left padding), or a packed row's `(1, 1, T, T)` one with its
        `position_ids` (`flat.Packing`)."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        with _only_blocks(self.backbone, self.depth, None, final_norm=True):
            return self.backbone(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False,
                                 position_ids=position_ids).last_hidden_state

    def top_packed(self, hidden: Tensor, packing) -> Tensor:
        """`(b, W, H) -> (n, H)`: the remaining blocks over the packed row of `hidden` (`flat.Packing`),
        their outputs at the used positions only."""
        mask = packing.attention_mask(self.backbone.config, hidden.dtype)
        return self.top(packing.gather(hidden), mask, packing.positions)[0, packing.out]

    @torch.no_grad()
    def extend(self, cache, rows: Tensor, cache_mask: Tensor, input_ids: Tensor, input_mask: Tensor,
               start: Tensor) -> Tensor:
        """`(b, S, H)`: the trunk's output for `input_ids` `(b, S)` that continue the sequences of
        `cache`'s rows `rows` `(b,)` (a whole model's key/value cache, e.g. `generate()`'s; only its
        bottom `depth` layers are read, none is changed). Row r attends the cache columns `cache_mask`
        `(b, C)` keeps and its own tokens `input_mask` keeps; they sit at positions start[r], start[r] + 1, ..."""
        from transformers import DynamicCache

        bottom = DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows])
                                              for layer in cache.layers[:self.depth]])
        positions = start[:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        with _only_blocks(self.backbone, 0, self.depth, final_norm=False):
            return self.backbone(input_ids=input_ids, attention_mask=torch.cat([cache_mask, input_mask], 1),
                                 position_ids=positions, cache=bottom, use_cache=True).last_hidden_state

    @contextmanager
    def record(self):
        """While sampling: collect the trunk's output of every forward pass of the base (the prompt
        pass, each decoding step) from a hook on its last block; `sampled_hidden` lays the chunks
        out as `hidden` would compute them for the finished sequences."""
        chunks: list[Tensor] = []

        def keep(_module, _args, output):
            chunks.append((output[0] if isinstance(output, tuple) else output).detach())

        handle = self.backbone.layers[self.depth - 1].register_forward_hook(keep)
        try:
            yield chunks
        finally:
            handle.remove()

    @classmethod
    def build(cls, backbone: nn.Module, probe_ids: Tensor, probe_mask: Tensor, atol: float = 1e-4) -> Trunk | None:
        """The trunk of `backbone` when at least one block lies below every adapter and the split
        pass equals a full pass on the probe batch (to `atol`); else None."""
        if not (hasattr(backbone, "layers") and hasattr(backbone, "norm")):
            return None
        depth = first_adapted_block(backbone)
        return cls.checked(backbone, depth, probe_ids, probe_mask, atol) if depth else None

    @classmethod
    def checked(cls, backbone: nn.Module, depth: int, probe_ids: Tensor, probe_mask: Tensor,
                atol: float = 1e-4) -> Trunk | None:
        """The trunk of the bottom `depth` blocks when the split pass equals a full pass on the probe
        batch (to `atol`); else None."""
        trunk = cls(backbone, depth)
        with torch.no_grad():
            full = backbone(input_ids=probe_ids, attention_mask=probe_mask, use_cache=False,
                            position_ids=position_ids_from_mask(probe_mask)).last_hidden_state
            split = trunk.top(trunk.hidden(probe_ids, probe_mask), probe_mask)
        keep = probe_mask.bool()
        if not torch.allclose(full[keep].float(), split[keep].float(), atol=atol, rtol=1e-4):
            return None
        return trunk


def sampled_hidden(chunks: list[Tensor], rows: int, width: int, plan=None) -> Tensor:
    """`(rows, width, H)`: the trunk's output recorded while sampling (`Trunk.record`), as `Trunk.hidden`
    gives it for `[prompt | response][:, :width]`. The first chunks are the prompt pass: the passes
    of `plan` (a `prefill.PromptPlan`, laid out by `prefill.assemble`), else one padded pass (run
    once per prompt for runs of identical prompts, `rollout.prefill_groups`); either is repeated to
    every row of a prompt. Each later chunk is one decoding step, the column of the token it fed.
    Up to float rounding (a cached decoding step vs one pass) it equals `hidden` on every position
    the mask keeps; after a row's EOS the sampler fed padding it attended to, positions every later
    pass masks out."""
    if plan is not None:
        from rlhf_stack.ppo.prefill import assemble

        chunks = [assemble(plan, chunks[:plan.n_chunks], dim=1), *chunks[plan.n_chunks:]]
    first = chunks[0]
    if first.shape[0] != rows:
        first = first.repeat_interleave(rows // first.shape[0], 0)
    return torch.cat([first, *chunks[1:]], 1)[:, :width]
