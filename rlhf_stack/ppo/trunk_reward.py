"""A reward model scoring samples from the bottom blocks they were sampled with.

A reward model trained from the SFT model with adapters on its top blocks only (the quickstart's:
LoRA on 4 of 30) shares its bottom blocks, bit for bit, with every policy trained the same way.
Scoring a sample runs those blocks over the chat-formatted (prompt, response); sampling ran them
over the same tokens already. `HeldTrunk.collect`, called after a `generate()` call, keeps those
blocks' output over the RM's own token sequence of each row: the sampled tokens it shares, read
off the sampling passes (`trunk.Trunk.record`), and the tokens the RM's chat template adds after
them (the end-of-turn marker, a newline), run through those blocks on the sampling's own
key/value cache (`Trunk.extend`). A response whose decoded text retokenizes otherwise is not held
(`MAX_REST`). `RewardScorer` (given `held`) then runs only the RM's top blocks and score head over
held sequences (`HeldTrunk.score`), and its usual passes over the others. The scores equal the full
pass up to float rounding (tests: 1e-4).

Used by PPO for an RM hosted on the policy's shared base (`shared_reward.py`), and by the
evaluation for its proxy RM (`evaluation.models.LM.sample(reward=...)`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhf_stack.ppo.prefill import common_prefix_length
from rlhf_stack.ppo.trunk import Trunk

Tensor = torch.Tensor

# Tokens a held sequence may add after what was sampled: the chat template's closing ones (end of
# turn, newline; 1-3 on SmolLM2's). A response whose decoded text retokenizes otherwise (~1 in 7
# on the quickstart) would add the rest of the response, run in small passes that cost more than
# its share of the RM's full pass; it is not held.
MAX_REST = 4

# (hidden (b, T, H) right-padded, mask (b, T), last (b,) index of each row's last token, depth) -> (b,) scores
TopScores = Callable[[Tensor, Tensor, Tensor, int], Tensor]


class HeldTrunk:
    """The bottom blocks' output over RM token sequences, kept by `collect`, scored by `score`."""

    def __init__(self, top: TopScores, pad_id: int, batch_size: int = 16) -> None:
        self.top = top  # the RM's blocks above the trunk, its final norm and score head
        self.pad_id = pad_id  # the RM's: it reads the last token that is not padding
        self.batch_size = batch_size
        # (prompt, response text) -> the RM's token ids, None when not held (`RewardScorer.hold` sets it)
        self.encode: Callable | None = None
        self.hidden: dict[tuple[int, ...], Tensor] = {}  # RM token ids -> (n, H) the trunk's output over them
        self.depth = 0  # the blocks the held outputs come from
        self.reused = 0  # sequences scored from held outputs so far

    def clear(self) -> None:
        self.hidden.clear()

    @torch.no_grad()
    def collect(self, trunk: Trunk, cache, query_mask: Tensor, hidden: Tensor,
                prompts: list, prompt_ids: list, responses: list[list[int]], texts: list[str]) -> None:
        """Keep, for each row of one `generate()` call, the trunk's output over the RM's tokens.

        trunk: the sampling model's bottom blocks; cache: the call's key/value cache
        (`generate(keep_cache=...)`); query_mask `(b, W)`: the left-padded prompts; hidden
        `(b, W + t - 1, H)`: the trunk's output recorded over the fed columns
        (`trunk.sampled_hidden`); per row, the prompt, its token ids, the response ids up to EOS
        and the decoded response."""
        width, fed = query_mask.shape[1], hidden.shape[1]
        rows, prefixes, rests, targets = [], [], [], []
        for r, (prompt, ids, response, text) in enumerate(zip(prompts, prompt_ids, responses, texts, strict=True)):
            target = self.encode(prompt, text)
            if target is None:
                continue
            target = self._key(target)
            sampled = list(ids) + list(response[:max(0, fed - width)])  # the row's own tokens, as fed
            shared = common_prefix_length([sampled, target])
            if len(target) - shared > MAX_REST:
                continue  # the decoded text retokenizes otherwise: the full pass is cheaper than small ones
            rows.append(r)
            prefixes.append(shared)
            rests.append(target[shared:])
            targets.append(target)
        if not rows:
            return
        columns = [_columns(len(prompt_ids[r]), width, n) for r, n in zip(rows, prefixes, strict=True)]
        tails = _extend(trunk, cache, rows, columns, prefixes, rests, query_mask.device)
        for j, r in enumerate(rows):
            kept = hidden[r, columns[j].to(hidden.device)]
            if tails[j] is not None:
                kept = torch.cat([kept, tails[j].to(kept.device)])
            self.hidden[targets[j]] = kept
        self.depth = trunk.depth

    @torch.no_grad()
    def score(self, seqs: list) -> tuple[list[int], Tensor]:
        """(indices of the held ones among `seqs` (token id lists), their `(n,)` float32 CPU scores)."""
        keys = [self._key(seq) for seq in seqs]
        found = [n for n, key in enumerate(keys) if key in self.hidden]
        out = torch.empty(len(found))
        hidden = [self.hidden[keys[n]] for n in found]
        order = sorted(range(len(found)), key=lambda j: len(hidden[j]))  # similar lengths: less padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            lengths = torch.tensor([len(hidden[j]) for j in idx])
            batch = hidden[idx[0]].new_zeros((len(idx), int(lengths.max()), hidden[idx[0]].shape[-1]))
            for row, j in enumerate(idx):
                batch[row, :lengths[row]] = hidden[j]
            mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).long()
            out[idx] = self.top(batch, mask, lengths - 1, self.depth).float().cpu()
        self.reused += len(found)
        return found, out

    def _key(self, ids) -> tuple[int, ...]:
        """The ids up to the token the RM reads (the last non-pad one): causal attention, so what
        follows it changes nothing."""
        pooled = max((i for i, t in enumerate(ids) if t != self.pad_id), default=0)
        return tuple(ids[:pooled + 1])


def _columns(prompt_length: int, width: int, shared: int) -> Tensor:
    """Columns of the left-padded [prompt | response] layout holding the first `shared` tokens."""
    k = torch.arange(shared)
    return torch.where(k < prompt_length, width - prompt_length + k, width + k - prompt_length)


def _extend(trunk: Trunk, cache, rows, columns, prefixes, rests, device) -> list[Tensor | None]:
    """Per row, `(len(rest), H)`: the trunk over the row's rest, attending its shared columns only
    (None for an empty rest). Rows run in passes of similar rest length (1, 2, 3-4): the rows that
    ended with EOS add one token, those cut at max_new_tokens their last token and two more."""
    out: list[Tensor | None] = [None] * len(rows)
    buckets: dict[int, list[int]] = {}
    for j, rest in enumerate(rests):
        if rest:
            buckets.setdefault((len(rest) - 1).bit_length(), []).append(j)  # lengths 1, 2, 3-4, 5-8, ...
    for group in buckets.values():
        s = max(len(rests[j]) for j in group)
        cache_mask = torch.zeros((len(group), cache.get_seq_length()), dtype=torch.long, device=device)
        ids = torch.zeros((len(group), s), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for g, j in enumerate(group):
            cache_mask[g, columns[j].to(device)] = 1
            ids[g, :len(rests[j])] = torch.tensor(rests[j], dtype=torch.long)
            mask[g, :len(rests[j])] = 1
        tails = trunk.extend(cache, torch.tensor([rows[j] for j in group], device=device), cache_mask, ids, mask,
                             torch.tensor([prefixes[j] for j in group], device=device))
        for g, j in enumerate(group):
            out[j] = tails[g, :len(rests[j])]
    return out
