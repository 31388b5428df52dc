"""Rankings -> tensors: the one place where the reward model's input is built.

A ranking of K completions becomes K token sequences (`encode_conversation`: the chat template
with the prompt as user turn and the completion as assistant turn); a batch of rankings becomes
every completion once, optionally after the prompt tokens its ranking shares (`RankingCollator`),
with the `(B, K_max)` ranks beside them. `to_ranking_matrix` lays the flat scores back out as
`(B, K)` for the losses in `functional.py` (`scores_by_ranking`: one row per ranking when several
labelers ranked one completion set, which is then scored once); `completion_chunks` slices a batch
for gradient caching.

The reward stage trains through these helpers and `scorer.RewardScorer` scores through
`encode_conversation` / `pad_right`, so training and use see identical tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_stack.data import preferred_pairs, prompt_key, prompt_messages

Prompt = str | list[dict]


def encode_conversation(tokenizer, prompt: Prompt, response: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of the chat-formatted (prompt, response); (ids, truncated).

    Too-long sequences lose tokens from the LEFT (the start of the prompt): the reward is read at
    the last token, so the response and its end-of-turn marker must survive truncation.
    """
    ids = tokenizer.apply_chat_template(prompt_messages(prompt, response), tokenize=True,
                                        return_dict=True)["input_ids"]
    ids = list(ids)
    return (ids[-max_length:], True) if len(ids) > max_length else (ids, False)


def pad_right(seqs: Sequence[Sequence[int]], pad_token_id: int,
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, max_len) input_ids padded on the right with `pad_token_id`, and the attention mask."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for n, seq in enumerate(seqs):
        input_ids[n, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[n, :len(seq)] = 1
    return input_ids.to(device), attention_mask.to(device)


def shared_prefix_length(seqs: Sequence[Sequence[int]], pad_token_id: int) -> int:
    """Tokens every sequence of one ranking starts with (system turn, prompt, assistant header).

    Capped so each sequence keeps its last non-pad token (where the reward is read) after the
    prefix. Found on the token ids, so any chat template works; 0 when nothing is shared.
    """
    shortest = min(len(s) for s in seqs)
    length = 0
    while length < shortest and all(s[length] == seqs[0][length] for s in seqs):
        length += 1
    last_scored = min(max((i for i, t in enumerate(s) if t != pad_token_id), default=0) for s in seqs)
    return min(length, last_scored)


def completion_set_key(row: dict) -> tuple:
    """The completion set a ranking row ranks: its prompt and its completions, in their order. Rows
    with one key are one set ranked by several labelers (`group_labelers`)."""
    return prompt_key(row["prompt"]), tuple(row["completions"])


def encode_rankings(rows: list[dict], tokenizer, max_length: int, stage: str = "reward",
                    group_labelers: bool = False) -> tuple[list[dict], int]:
    """Rankings -> [{input_ids: K token lists, ranks: K ints, n_pairs, prefix_length}], and how
    many completions were truncated (their prompt's start cut to fit `max_length`; said on stdout
    under `[stage]`).

    group_labelers: rows with the same prompt and the same completions in the same order (one set
    ranked by several labelers) become one item; the first row's ranks are `ranks`, the others'
    `more_ranks` (a list of K-int lists), and n_pairs counts every ranking's pairs.
    """
    items, truncated, by_set = [], 0, {}
    for row in rows:
        key = completion_set_key(row)
        if group_labelers and key in by_set:
            item = by_set[key]
            item.setdefault("more_ranks", []).append(list(row["ranks"]))
            item["n_pairs"] += len(preferred_pairs(row["ranks"]))
            continue
        encoded = [encode_conversation(tokenizer, row["prompt"], c, max_length) for c in row["completions"]]
        truncated += sum(cut for _, cut in encoded)
        seqs = [ids for ids, _ in encoded]
        items.append({"input_ids": seqs, "ranks": list(row["ranks"]), "n_pairs": len(preferred_pairs(row["ranks"])),
                      "prefix_length": shared_prefix_length(seqs, tokenizer.pad_token_id)})
        by_set[key] = items[-1]
    if truncated:
        print(f"[{stage}] {truncated} completions are longer than max_length={max_length} with their prompt; "
              "the start of the prompt is cut")
    return items, truncated


def rankings_of(item: dict) -> list[list[int]]:
    """Every ranking of an `encode_rankings` item: `ranks`, then `more_ranks` (other labelers)."""
    return [item["ranks"], *item.get("more_ranks", [])]


@dataclass
class RankingCollator:
    """A batch of rankings -> every completion as one padded row + the (B, K_max) ranks beside them.

    ranks: (R, K_max), 0 where a ranking has fewer than K_max completions; R = B, or more when items
    hold several labelers' rankings of one completion set (`encode_rankings(group_labelers=True)`),
    each item's rankings in a row. ranking_set: (R,) the item (completion set) of each ranking;
    `scores_by_ranking` lays the completions' scores out beside `ranks`. Without prompt sharing,
    input_ids / attention_mask: (sum of K, max_len) full sequences, rankings laid end to end. With it
    (every ranking shares >= 1 leading token): prefix_ids / prefix_mask (B, P) the shared prompt
    tokens, prefix_lengths (B,), owner (sum of K,) each completion's ranking, and input_ids /
    attention_mask hold only the tokens after the prompt.
    """

    pad_token_id: int
    share_prompt: bool = True

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        rankings = [(b, r) for b, item in enumerate(items) for r in rankings_of(item)]
        ranks = torch.zeros((len(rankings), max(len(item["ranks"]) for item in items)), dtype=torch.long)
        for n, (_, r) in enumerate(rankings):
            ranks[n, :len(r)] = torch.as_tensor(r)
        batch = {"ranks": ranks, "ranking_set": torch.as_tensor([b for b, _ in rankings])}
        shared = [item["prefix_length"] if self.share_prompt else 0 for item in items]
        if min(shared) == 0:  # one ranking shares nothing (e.g. cut by max_length): every sequence goes whole
            shared = [0] * len(items)
        else:
            batch["prefix_ids"], batch["prefix_mask"] = pad_right(
                [item["input_ids"][0][:p] for item, p in zip(items, shared, strict=True)], self.pad_token_id)
            batch["prefix_lengths"] = torch.as_tensor(shared)
            batch["owner"] = torch.as_tensor([b for b, item in enumerate(items) for _ in item["input_ids"]])
        seqs = [ids[p:] for item, p in zip(items, shared, strict=True) for ids in item["input_ids"]]
        batch["input_ids"], batch["attention_mask"] = pad_right(seqs, self.pad_token_id)
        return batch


def completion_chunks(batch: dict[str, torch.Tensor], size: int | None) -> list[dict[str, torch.Tensor]]:
    """The completions of a collated batch (rows of input_ids, with their mask and owner) in slices
    of at most `size` rows (None: one slice). The shared prompt tensors stay in `batch`."""
    step = size or batch["input_ids"].shape[0]
    keys = [k for k in ("input_ids", "attention_mask", "owner") if k in batch]
    parts = [batch[k].split(step) for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in zip(*parts, strict=True)]


def scores_by_ranking(flat_scores: torch.Tensor, ranks: torch.Tensor, ranking_set: torch.Tensor) -> torch.Tensor:
    """`(N,)` scores of the completions of B completion sets -> `(R, K)` beside the R rankings in
    `ranks`, `ranking_set` (R,) the set of each (a collated batch's). A set ranked by several
    labelers is scored once and its scores repeat on each of its rankings."""
    first = torch.ones_like(ranking_set, dtype=torch.bool)
    first[1:] = ranking_set[1:] != ranking_set[:-1]
    return to_ranking_matrix(flat_scores, ranks[first])[ranking_set]


def to_ranking_matrix(flat_scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Scores of the completions of B rankings laid end to end `(N,)` -> `(B, K)` beside `ranks`.

    N must equal the number of entries with rank > 0; padding comes last in every row.
    """
    valid = ranks > 0
    if int(valid.sum()) != flat_scores.numel():
        raise ValueError(f"{flat_scores.numel()} scores for {int(valid.sum())} ranked completions")
    out = flat_scores.new_zeros(ranks.shape)
    return out.masked_scatter(valid, flat_scores)
