"""Rankings -> tensors for DPO: the reward model's batching plus where each completion starts.

A ranking becomes K token sequences exactly as for the reward model (`reward.batching`: the chat
template with the prompt as user turn and the completion as assistant turn, cut from the left at
`max_length`, the prompt encoded once for all K). DPO adds one thing: the log-probability of a
completion sums over the completion's tokens only, so each sequence carries its prompt length,
and the shared prompt stops one token before the shortest prompt ends. Then every completion
token is predicted inside the completion pass, whose logits are the only ones computed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from rlhf_stack.data import prompt_messages
from rlhf_stack.reward.batching import (
    Prompt,
    RankingCollator,
    completion_set_key,
    encode_conversation,
    encode_rankings,
)


def encode_preferences(rows: list[dict], tokenizer, max_length: int,
                       group_labelers: bool = False) -> tuple[list[dict], int]:
    """Rankings -> `reward.batching.encode_rankings` items with `prompt_lengths` (K ints: the prompt
    tokens left in each sequence after truncation) and `prefix_length` capped one token below the
    shortest prompt; and how many completions were truncated. group_labelers: as in
    `encode_rankings` (one item per completion set, its labelers' rankings together)."""
    items, truncated = encode_rankings(rows, tokenizer, max_length, stage="dpo", group_labelers=group_labelers)
    firsts = {}  # an item's first row: the set's prompt and completions
    for row in rows:
        firsts.setdefault(completion_set_key(row) if group_labelers else id(row), row)
    for row, item in zip(firsts.values(), items, strict=True):
        head = tokenizer.apply_chat_template(prompt_messages(row["prompt"]), add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
        item["prompt_lengths"] = [_prompt_tokens_left(tokenizer, head, row["prompt"], completion, ids, max_length)
                                  for completion, ids in zip(row["completions"], item["input_ids"], strict=True)]
        item["prefix_length"] = max(0, min(item["prefix_length"], min(item["prompt_lengths"]) - 1))
    return items, truncated


def _prompt_tokens_left(tokenizer, head: list[int], prompt: Prompt, completion: str, ids: list[int],
                        max_length: int) -> int:
    """Prompt tokens at the start of `ids`: its common start with `head` (the prompt with the
    assistant header), so a template that merges tokens across the boundary still leaves every
    completion token counted; minus what truncation cut from the left."""
    if len(ids) < max_length:  # nothing was cut
        return _common_start(head, ids)
    full, _ = encode_conversation(tokenizer, prompt, completion, sys.maxsize)
    return max(0, _common_start(head, full) - (len(full) - len(ids)))


def _common_start(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass
class PreferenceCollator:
    """A batch of rankings -> `reward.batching.RankingCollator`'s batch + `completion_start`.

    completion_start: (sum of K,) the index in each row of `input_ids` of the completion's first
    token (after the shared prompt when the batch shares it); never 0, since the first token of a
    row has no prediction in that row.
    """

    pad_token_id: int
    share_prompt: bool = True

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = RankingCollator(self.pad_token_id, self.share_prompt)(items)
        shared = "owner" in batch
        batch["completion_start"] = torch.as_tensor(
            [max(n, 1) - (item["prefix_length"] if shared else 0) for item in items for n in item["prompt_lengths"]])
        return batch
