"""The prompt pass before sampling: each distinct prompt once, the shared start once, no padding.

Sampling runs a left-padded batch of prompts. One plain pass over that batch computes every pad
column, every copy of a prompt sampled k times, and, k-fold again, the start that chat templates
give every prompt (SmolLM2's: a 24-token system message before a median 14 tokens of question).
On the quickstart's batches of 8 prompts that pass took ~0.8 s of a ~3.5 s sampling call.

`plan_prompts` lays the work out instead: the prefix every distinct prompt shares runs once; the
rest of each prompt, but its last token (`generate()` feeds that one), runs in a few passes over
the prompts sorted by length, grouped so that the padding a pass adds costs less than another
pass would (a pass costs about `PASS_COST_ROWS_*` rows' worth of work beyond its rows: on a CPU
the weights stream from memory once per pass, on an accelerator a pass launches its kernels).
`prefill` runs the plan and returns the KV cache `generate()` continues from, laid out as the
padded pass would have left it (`(rows, heads, p - 1, d)`, left-padded, zeros under the padding).
`assemble` does that layout, also for anything else recorded per pass (`trunk.sampled_hidden`).

The outputs are those of the padded pass up to float rounding (tests: 1e-5, plain and LoRA
models, samples and recorded log pi unchanged). Only models whose cache is a plain full-attention
`DynamicCache` take this path (`plan_prompts` returns None otherwise: sliding windows, recurrent
state), and not under FSDP2, where every process must run the same passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor

# A pass's fixed cost in rows of work (see the docstring). CPU: streaming float32 weights takes as
# long as ~10-16 rows of their products at this machine's ~100 GFLOP/s and ~20 GB/s. Accelerators:
# an H100's ~1,000 TFLOP/s over ~3 TB/s makes reading bf16 weights worth ~300 rows (an estimate;
# no GPU has measured it here).
PASS_COST_ROWS_CPU = 16
PASS_COST_ROWS_ACCELERATOR = 256


@dataclass(frozen=True)
class PromptPlan:
    """How the prompt pass of a left-padded `(rows, p)` batch runs (`plan_prompts`)."""

    width: int  # p - 1: the cache's columns (the last prompt token is generate()'s)
    group: int  # rows come in runs of `group` copies of one prompt
    prefix: list[int]  # tokens every distinct prompt starts with, run once
    rests: list[list[int]]  # per distinct prompt: its tokens after the prefix, but the last
    passes: list[list[int]]  # distinct prompts run together, each pass's rests non-empty

    @property
    def n_chunks(self) -> int:
        """Forward passes `prefill` makes (a hook on the model sees this many outputs)."""
        return int(bool(self.prefix)) + len(self.passes)


def plan_prompts(model, query_ids: Tensor, query_mask: Tensor, group: int = 1) -> PromptPlan | None:
    """The plan for `model`'s prompt pass over `query_ids` (left-padded, runs of `group` identical
    rows) before `generate()`; None where the padded pass must run (see the module docstring)."""
    if query_ids.shape[1] < 2:
        return None
    prompts = [ids[mask.bool()].tolist()[:-1] for ids, mask in zip(query_ids[::group], query_mask[::group], strict=True)]
    return plan_sequences(model, prompts, query_ids.shape[1] - 1, group, query_ids.device)


def plan_sequences(model, sequences: list[list[int]], width: int, group: int, device) -> PromptPlan | None:
    """The plan for running `sequences` (token lists, each >= 1 token) through `model` unpadded,
    their shared start once; None where `model`'s cache cannot be laid out or under FSDP2."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    from rlhf_stack import distributed

    if distributed.world_size() > 1 and distributed.is_sharded(model):
        return None
    try:
        layers = DynamicCache(config=model.config).layers
    except (AttributeError, TypeError, ValueError):
        return None
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    shared = common_prefix_length(sequences)
    rests = [s[shared:] for s in sequences]
    cost = PASS_COST_ROWS_CPU if torch.device(device).type == "cpu" else PASS_COST_ROWS_ACCELERATOR
    return PromptPlan(width, group, sequences[0][:shared], rests, _passes(rests, cost))


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many first tokens all `sequences` (token lists) have in common."""
    shared, shortest = 0, min(map(len, sequences), default=0)
    while shared < shortest and all(s[shared] == sequences[0][shared] for s in sequences):
        shared += 1
    return shared


def _passes(rests: list[list[int]], pass_cost: int) -> list[list[int]]:
    """Prompts with a non-empty rest, sorted by length and cut into runs that minimise the work:
    sum over passes of (pass_cost + rows x the longest rest), by dynamic programming."""
    order = sorted((i for i, rest in enumerate(rests) if rest), key=lambda i: len(rests[i]))
    best, cut = [0] + [None] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        width = len(rests[order[end - 1]])
        best[end], cut[end] = min((best[start] + pass_cost + (end - start) * width, start) for start in range(end))
    passes, end = [], len(order)
    while end:
        passes.append(order[cut[end]:end])
        end = cut[end]
    return passes[::-1]


def assemble(plan: PromptPlan, chunks: list[Tensor], dim: int) -> Tensor:
    """Per-pass outputs -> the padded layout `(distinct prompts, ..., width, ...)`, sequence on `dim`.

    chunks: what `prefill`'s passes gave, in order (the prefix pass first when there is one, its
    batch 1); a pass's rows hold their rests right-aligned. Columns left of a prompt are 0."""
    prefix, passes = (chunks[0], chunks[1:]) if plan.prefix else (None, chunks)
    like = chunks[0]
    shape = list(like.shape)
    shape[0], shape[dim] = len(plan.rests), plan.width
    out = like.new_zeros(shape)
    p = len(plan.prefix)
    for members, chunk in zip(plan.passes, passes, strict=True):
        for row, member in enumerate(members):
            n = len(plan.rests[member])
            out[member].narrow(dim - 1, plan.width - n, n).copy_(chunk[row].narrow(dim - 1, chunk.shape[dim] - n, n))
    if prefix is not None:
        for member, rest in enumerate(plan.rests):
            out[member].narrow(dim - 1, plan.width - len(rest) - p, p).copy_(prefix[0])
    return out


def run_passes(model, plan: PromptPlan, device, **kwargs):
    """Run `plan` through `model` (kwargs to every call); yield `(members, output, cache)` per pass:
    the prefix pass first (members None, batch 1), then each pass over `members` with their rests
    right-aligned, continuing the prefix's cache. The cache of a pass holds the prefix too."""
    from transformers import DynamicCache

    p = len(plan.prefix)
    prefix = []
    if p:
        ids = torch.tensor([plan.prefix], device=device)
        cache = DynamicCache(config=model.config)
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(p, device=device)[None],
                       cache=cache, use_cache=True, **kwargs)
        prefix = [(layer.keys, layer.values) for layer in cache.layers]
        yield None, output, cache
    for members in plan.passes:
        # The rests left-padded, positions after the prefix: `rollout.left_pad` and
        # `trunk.position_ids_from_mask` do the same, but both modules import this one.
        n, width = len(members), max(len(plan.rests[m]) for m in members)
        ids = torch.zeros((n, width), dtype=torch.long, device=device)  # pad id 0: masked anyway
        rest_mask = torch.zeros((n, width), dtype=torch.long, device=device)
        for row, member in enumerate(members):
            rest = plan.rests[member]
            ids[row, width - len(rest):] = torch.tensor(rest, device=device)
            rest_mask[row, width - len(rest):] = 1
        cache = DynamicCache(ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix],
                             config=model.config) if p else DynamicCache(config=model.config)
        output = model(input_ids=ids, attention_mask=torch.cat([rest_mask.new_ones((n, p)), rest_mask], 1),
                       position_ids=p + (rest_mask.cumsum(1) - 1).clamp(min=0), cache=cache, use_cache=True,
                       **kwargs)
        yield members, output, cache


@torch.no_grad()
def prefill(model, plan: PromptPlan, device):
    """Run `plan`; the KV cache of every row's prompt but its last token (`(rows, h, width, d)`)."""
    from transformers import DynamicCache

    pieces = []
    for members, _output, cache in run_passes(model, plan, device, logits_to_keep=1):
        start = 0 if members is None else len(plan.prefix)  # a pass's cache starts with the prefix's
        pieces.append([(layer.keys[:, :, start:], layer.values[:, :, start:]) for layer in cache.layers])
    layers = []
    for per_layer in zip(*pieces, strict=True):
        keys = assemble(plan, [k for k, _ in per_layer], dim=2)
        values = assemble(plan, [v for _, v in per_layer], dim=2)
        if plan.group > 1:
            keys, values = keys.repeat_interleave(plan.group, 0), values.repeat_interleave(plan.group, 0)
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers, config=model.config)


@torch.no_grad()
def last_hidden(backbone, plan: PromptPlan, device) -> Tensor:
    """`(sequences, H)`: the decoder `backbone`'s last hidden state at each planned sequence's last
    token (a sequence that is the shared prefix itself: the prefix's last position)."""
    out = None
    for members, output, _cache in run_passes(backbone, plan, device):
        hidden = output.last_hidden_state
        if out is None:
            out = hidden.new_empty((len(plan.rests), hidden.shape[-1]))
        if members is None:
            out[:] = hidden[0, -1]  # kept only where the rest is empty; the passes overwrite the others
        else:
            out[members] = hidden[:, -1]
    return out
