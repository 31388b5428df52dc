"""The evaluation's proxy reward model, scoring samples on the bottom blocks they were drawn with.

A reward model trained from the SFT model with adapters on its top blocks only (the quickstart's:
LoRA on 4 of 30) shares its bottom blocks, bit for bit, with every policy trained the same way
(`models.shared_trunk_depth`). Scoring a sample runs those blocks over the chat-formatted
(prompt, response), and sampling ran them over the same tokens already. So while an evaluation
samples (`LM.sample(reward=...)`), `SharedTrunkReward.collect` keeps the bottom blocks' output
over the RM's token sequence of each sample: the sampled tokens it shares, read off the sampling
passes (`ppo.trunk.Trunk.record`), and the tokens the RM's chat template adds after them (the
end-of-turn marker, a newline; the whole rest when retokenizing the decoded text differs), run
through those blocks on the sampling's own key/value cache (`Trunk.extend`). Scoring then runs
only the RM's top blocks and score head (`score_hidden`). On the quickstart that is 4 of 30
blocks for each of the evaluation's 512 responses; the scores equal `RewardScorer`'s up to float
rounding (tested to 1e-4). Samples it holds nothing for (another tokenizer, a truncated RM input,
a model sharing no blocks) are scored by `RewardScorer` as before.
"""

from __future__ import annotations

import json

import torch

from rlhf_stack.ppo.trunk import Trunk

Tensor = torch.Tensor


def _key(prompt, text: str) -> str:
    return json.dumps([prompt, text], sort_keys=True)


class SharedTrunkReward:
    """Callable like a judge (prompts, responses) -> scores; `RewardScorer(checkpoint)` underneath."""

    def __init__(self, checkpoint: str, batch_size: int = 16):
        from rlhf_stack.reward.scorer import RewardScorer

        self.scorer = RewardScorer(checkpoint, batch_size=batch_size)
        self.hidden: dict[str, Tensor] = {}  # sample key -> (n, H) the bottom blocks' output over its RM tokens
        self.depth = 0  # blocks the held outputs come from
        self.reused = 0  # samples scored from held outputs (reported)

    @property
    def backbone(self):
        model = self.scorer.model
        inner = getattr(model, getattr(model, "base_model_prefix", ""), None)
        ok = hasattr(inner, "layers") and hasattr(inner, "norm") and isinstance(getattr(model, "score", None),
                                                                              torch.nn.Linear)
        return inner if ok else None

    def depth_with(self, lm) -> int:
        """Bottom blocks this RM shares with the sampling model `lm` (`models.LM`), checked as the KL
        pass checks its reference (`shared_trunk_depth`); 0 when none or the dtypes differ."""
        from rlhf_stack.evaluation.models import shared_depth

        if self.backbone is None or lm.backbone is None or next(self.scorer.model.parameters()).dtype != lm.model.dtype:
            return 0
        return shared_depth(lm.backbone, lm.tokenizer, self.backbone, self.scorer.tokenizer, self.scorer.device)

    @torch.no_grad()
    def collect(self, trunk: Trunk, cache, query_mask: Tensor, hidden: Tensor, prompts: list, prompt_ids: list,
                responses: list[list[int]], texts: list[str]) -> None:
        """Keep, for each row of one `generate()` call, the trunk's output over the RM's tokens.

        trunk: the sampling model's bottom blocks; cache: that call's key/value cache (`generate`'s
        keep_cache), whose rows it reorders; query_mask `(b, W)`: the left-padded prompts; hidden
        `(b, W + t_gen - 1, H)`: the trunk output recorded over the fed columns (`sampled_hidden`);
        prompts / prompt_ids / responses (up to EOS) / texts (decoded): per row."""
        width, fed = query_mask.shape[1], hidden.shape[1]
        pad = self.scorer.tokenizer.pad_token_id
        rows, prefixes, rests = [], [], []
        for r, (prompt, ids, response, text) in enumerate(zip(prompts, prompt_ids, responses, texts, strict=True)):
            target = self.scorer.encode(prompt, text)
            if target is None:
                continue
            pooled = max((i for i, t in enumerate(target) if t != pad), default=0)  # where the RM reads
            target = target[:pooled + 1]  # causal: what follows the pooled token changes nothing
            sampled = list(ids) + response[:max(0, fed - width)]  # the row's own tokens the sampler fed
            shared = 0
            while shared < min(len(sampled), len(target)) and sampled[shared] == target[shared]:
                shared += 1
            rows.append(r)
            prefixes.append(shared)
            rests.append(target[shared:])
        if not rows:
            return
        columns = [self._columns(len(prompt_ids[r]), width, n) for r, n in zip(rows, prefixes, strict=True)]
        tails = self._extend(trunk, cache, rows, columns, prefixes, rests, query_mask.device)
        for j, r in enumerate(rows):
            kept = hidden[r, columns[j]]
            if rests[j]:
                kept = torch.cat([kept, tails[j, :len(rests[j])].to(kept.device)])
            self.hidden[_key(prompts[r], texts[r])] = kept
        self.depth = trunk.depth

    @staticmethod
    def _columns(prompt_length: int, width: int, shared: int) -> Tensor:
        """Columns of the left-padded [prompt | response] layout holding the first `shared` tokens."""
        k = torch.arange(shared)
        return torch.where(k < prompt_length, width - prompt_length + k, width + k - prompt_length)

    @staticmethod
    def _extend(trunk: Trunk, cache, rows, columns, prefixes, rests, device) -> Tensor | None:
        """`(len(rows), S, H)`: the trunk over each row's rest, attending its shared columns only."""
        if not any(rests):
            return None
        cache.batch_select_indices(torch.tensor(rows, device=device))
        cache_mask = torch.zeros((len(rows), cache.get_seq_length()), dtype=torch.long, device=device)
        for j, cols in enumerate(columns):
            cache_mask[j, cols.to(device)] = 1
        s = max(len(rest) for rest in rests)
        ids = torch.zeros((len(rows), s), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for j, rest in enumerate(rests):
            ids[j, :len(rest)] = torch.tensor(rest, dtype=torch.long)
            mask[j, :len(rest)] = 1
        return trunk.extend(cache, cache_mask, ids, mask, torch.tensor(prefixes, device=device))

    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        keys = [_key(p, r) for p, r in zip(prompts, responses, strict=True)]
        held = [n for n, key in enumerate(keys) if key in self.hidden]
        rest = sorted(set(range(len(keys))) - set(held))
        scores = torch.empty(len(keys))
        if held:
            scores[held] = self._score_held([self.hidden[keys[n]] for n in held])
            self.reused += len(held)
        if rest:
            scores[rest] = self.scorer.score_tensor([prompts[n] for n in rest], [responses[n] for n in rest])
        return scores.tolist()

    @torch.no_grad()
    def _score_held(self, hidden: list[Tensor]) -> Tensor:
        """(n,) scores from held trunk outputs: the RM's top blocks, final norm and score head at each
        sequence's last token (the one `RewardScorer` pools), bias added as it adds it."""
        model, top = self.scorer.model, Trunk(self.backbone, self.depth)
        device, dtype = self.scorer.device, next(model.parameters()).dtype
        out = torch.empty(len(hidden))
        order = sorted(range(len(hidden)), key=lambda n: len(hidden[n]))  # similar lengths: less padding
        for start in range(0, len(order), self.scorer.batch_size):
            idx = order[start:start + self.scorer.batch_size]
            lengths = torch.tensor([len(hidden[n]) for n in idx])
            batch = hidden[idx[0]].new_zeros((len(idx), int(lengths.max()), hidden[idx[0]].shape[-1]))
            for j, n in enumerate(idx):
                batch[j, :lengths[j]] = hidden[n]
            mask = (torch.arange(batch.shape[1])[None, :] < lengths[:, None]).long().to(device)
            last = top.top(batch.to(device, dtype), mask)[torch.arange(len(idx)), (lengths - 1).to(device)]
            out[idx] = model.score(last)[:, 0].float().cpu()
        return out + self.scorer.bias if self.scorer.apply_bias else out
