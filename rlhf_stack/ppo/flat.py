"""Stage 3's passes over one packed row: no padding, the rows' shared start once.

Stage 3 lays a batch of rollouts out `[left-padded prompt | right-padded response]`. Above the
frozen trunk (`trunk.py`) every pass over a micro-batch (reference and value in the rollout,
policy and value in each PPO epoch) ran every column of that layout, and the LM head and its
log-softmax ran at every response column, kept or not. Measured on the quickstart (mini-batches
of 4, 2026-12-04): a third of the columns of the update passes were padding (3,752 columns for
2,526 tokens in one step), each row repeated the 24-token system turn SmolLM2's chat template
starts every prompt with, and the PPO-ptx corpus rows (right-padded) were 18% padding.

`pack` lays a micro-batch out as one row instead: the tokens every row starts with, once, then
each row's other tokens, each at its position in its own row, with a `(N, N)` mask that lets a
token attend the shared start and the earlier tokens of its own row: the padded pass's attention
without the padding. A row's tokens after the last output anything reads are left out (attention
is causal: nothing used depends on them). The blocks above the trunk run over that row
(`Trunk.top` with the mask); the heads (LM head, value head) and the log-softmax run only at the
outputs used, and `Packing.scatter` puts those back in the `(b, t)` layout, 0 elsewhere.

Without a trunk (full tuning, adapters on every block) the whole decoder runs over the packed
row of tokens (`decoder_pass`), the same way.

One row's attention grows with the square of its length, so a micro-batch packs only when the
packed row costs less than the padded batch (`_pays`, counting each block's products per token and
its attention per query-key pair): the CPU-sized micro-batches here (4-8 rows of ~100 tokens) pack,
a GPU's large ones (64 rows of 512 tokens) stay padded.

The results equal the padded passes' up to float rounding (tests: log-probs, values, the ptx loss
and the gradients of all three). PPOConfig.packed_passes turns it off. Only attention that takes a
custom `(N, N)` mask packs (transformers' "sdpa", boolean, and "eager", additive); with another
(flash-attention kernels, which read no such mask) the padded passes run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_stack.ppo.prefill import common_prefix_length

Tensor = torch.Tensor

MASKED_ATTENTION = ("sdpa", "eager")  # transformers' attention implementations that apply a 4D mask as given


def supported(config) -> bool:
    """Whether a model with this config can run a packed row (its attention applies our mask)."""
    return getattr(config, "_attn_implementation", None) in MASKED_ATTENTION


@dataclass(frozen=True)
class Packing:
    """Where the tokens of a `(b, W)` batch sit in one packed row of `N`, and which outputs are used."""

    take: Tensor  # (N,) flat indices into the batch's b * W columns, in the packed row's order
    positions: Tensor  # (1, N) each token's position in its own row
    mask: Tensor  # (1, 1, N, N) bool: query token attends key token
    out: Tensor  # (n,) the used outputs' indices in the packed row
    rows: Tensor  # (n,) and their row
    cols: Tensor  # (n,) and column in the batch

    def gather(self, x: Tensor) -> Tensor:
        """`(b, W, ...) -> (1, N, ...)`: the packed row of a per-column tensor."""
        return x.reshape(-1, *x.shape[2:])[self.take].unsqueeze(0)

    def attention_mask(self, config, dtype: torch.dtype) -> Tensor:
        """The mask as `config`'s attention reads it: boolean for "sdpa", additive for "eager"."""
        if config._attn_implementation == "eager":
            return torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device).masked_fill(
                ~self.mask, torch.finfo(dtype).min)
        return self.mask

    def scatter(self, values: Tensor, shape: tuple[int, int], offset: int = 0) -> Tensor:
        """`(n,) -> shape`: each used output's value at (row, column - offset), 0 elsewhere."""
        return values.new_zeros(shape).index_put((self.rows, self.cols - offset), values)


def pack(keep: Tensor, used: Tensor, ids: Tensor | None = None, config=None) -> Packing | None:
    """The packed layout of a batch: keep `(b, W)` marks the columns that hold tokens, used `(b, W)`
    the columns whose outputs are read (all kept), ids `(b, W)` the tokens, to find the start every
    row shares (None: share nothing). The shared start ends before any row's first used output.
    With the model's `config`: None when the packed row would cost more than the padded batch."""
    b, width = keep.shape
    device = keep.device
    column = torch.arange(width, device=device)
    last_used = torch.where(used, column, -1).amax(1)
    keep = keep.bool() & (column[None, :] <= last_used[:, None])  # later tokens feed no used output
    position = keep.long().cumsum(1) - 1
    shared = _shared_start(keep, used, position, ids) if ids is not None and b > 1 else 0
    in_start, rest = keep & (position < shared), keep & (position >= shared)
    flat = torch.arange(b * width, device=device).view(b, width)
    take = torch.cat([flat[0][in_start[0]], flat[rest]])
    # segment 0: the shared start (attended by every row); r + 1: row r's own tokens
    row_of = torch.arange(1, b + 1, device=device)[:, None].expand(b, width)
    segment = torch.cat([torch.zeros(shared, dtype=torch.long, device=device), row_of[rest]])
    n = len(take)
    if config is not None and not _pays(n, b, width, config):
        return None
    mask = (torch.ones(n, n, dtype=torch.bool, device=device).tril()
            & ((segment[:, None] == segment[None, :]) | (segment[None, :] == 0)))
    index = torch.full((b * width,), -1, dtype=torch.long, device=device)
    index[take] = torch.arange(n, device=device)
    rows, cols = used.nonzero(as_tuple=True)
    return Packing(take, position.reshape(-1)[take].unsqueeze(0), mask[None, None], index[rows * width + cols],
                   rows, cols)


def _shared_start(keep: Tensor, used: Tensor, position: Tensor, ids: Tensor) -> int:
    """How many first tokens every row has in common, up to the first used output of any row."""
    limit = int(torch.where(used, position, keep.shape[1]).amin())
    return common_prefix_length([row[kept][:limit].tolist() for row, kept in zip(ids, keep, strict=True)])


def _pays(n: int, rows: int, width: int, config) -> bool:
    """Whether one packed row of `n` tokens costs less than `rows` padded rows of `width`: a block's
    products cost ~2 x its weights per token, its attention ~4 x the hidden size per query-key pair
    (SDPA computes every pair a mask allows or not)."""
    hidden = config.hidden_size
    per_token = 2 * (4 * hidden * hidden + 3 * hidden * getattr(config, "intermediate_size", 4 * hidden))
    per_pair = 4 * hidden
    return n * per_token + n * n * per_pair < rows * width * (per_token + width * per_pair)


def response_packing(input_ids: Tensor, attention_mask: Tensor, n_response: int, config=None) -> Packing | None:
    """A rollout micro-batch `[prompt | response]` `(b, T)`: the passes run over its first T - 1
    columns, and the outputs used are those predicting each kept response token (None: `pack`)."""
    keep = attention_mask[:, :-1].bool()
    used = torch.zeros_like(keep)
    used[:, -n_response:] = attention_mask[:, -n_response:].bool()
    return pack(keep, used, input_ids[:, :-1], config)


def corpus_packing(attention_mask: Tensor, labels: Tensor, config=None) -> Packing | None:
    """PPO-ptx corpus rows `(b, T)`, right-padded: the outputs used predict each labelled next token
    (None: `pack`). Corpus rows share no start worth finding (the first output is read at position 0)."""
    used = torch.zeros_like(attention_mask, dtype=torch.bool)
    used[:, :-1] = labels[:, 1:] != -100
    return pack(attention_mask.bool(), used, config=config)


def decoder_pass(decoder, ids: Tensor, packing: Packing) -> Tensor:
    """`(n, H)`: every block of `decoder` (e.g. a LlamaModel) over the packed row of the tokens
    `ids` `(b, W)`, its last hidden state at the used outputs."""
    mask = packing.attention_mask(decoder.config, decoder.get_input_embeddings().weight.dtype)
    return decoder(input_ids=packing.gather(ids), attention_mask=mask, position_ids=packing.positions,
                   use_cache=False).last_hidden_state[0, packing.out]
