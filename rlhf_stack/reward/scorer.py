"""A finished reward model scoring text: `RewardScorer`, and the forward passes behind it.

`RewardScorer(checkpoint).score(prompts, responses)`: a reward-model checkpoint (full weights or a
LoRA adapter with its score head) scoring with its OWN tokenizer and chat template (prompt as the
user turn, response as the assistant turn), so the policy may use another tokenizer. The
normalisation bias stored by the reward stage (`stage.json` key `reward_bias`) is added.

Outside this library a reward checkpoint is a plain HF directory: `AutoModelForSequenceClassification`
(full) or that class on `adapter_config.json`'s base + `PeftModel.from_pretrained` (LoRA; the score
head is in the adapter), with `config.pad_token_id = tokenizer.pad_token_id`; the logit of
`tokenizer.apply_chat_template([user prompt, assistant response])` plus stage.json's `reward_bias`
is what `RewardScorer` returns (tests/stages/test_reward_stage.py checks it to 1e-5).

`forward_scores` / `forward_scores_shared` are the reward model's forward passes; the reward
stage trains through them too (`trainer.py`). `forward_shared` is the prompt-sharing pass itself,
which the DPO stage runs on a causal LM.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

import torch

from rlhf_stack.data import prompt_key
from rlhf_stack.errors import ModelNotFoundError
from rlhf_stack.reward.batching import (
    Prompt,
    RankingCollator,
    encode_conversation,
    pad_right,
    shared_prefix_length,
)

BIAS_KEY = "reward_bias"  # stage.json key of the normalisation bias


def forward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(n,) float32 rewards: the sequence classifier's logit at the last non-pad token.

    transformers' *ForSequenceClassification pools the rightmost token that is not
    `config.pad_token_id`, which is why that id must equal the tokenizer's pad id.
    """
    width = int(attention_mask.sum(dim=1).max())  # drop columns that are padding in every row
    out = model(input_ids=input_ids[:, :width], attention_mask=attention_mask[:, :width], use_cache=False)
    return out.logits[:, 0].float()


def forward_scores_shared(model, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, prefix_lengths: torch.Tensor,
                          owner: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          prefix_model=None) -> torch.Tensor:
    """(n,) rewards of completions that continue shared prompts, each prompt encoded once.

    The arguments are `forward_shared`'s; the scores equal `forward_scores` on the full sequences
    up to float rounding (same positions, same attention).
    """
    c_width = int(attention_mask.sum(dim=1).max())
    out = forward_shared(model, prefix_ids, prefix_mask, prefix_lengths, owner, input_ids[:, :c_width],
                         attention_mask[:, :c_width], prefix_model=prefix_model)
    return out.logits[:, 0].float()


def forward_shared(model, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, prefix_lengths: torch.Tensor,
                   owner: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   prefix_model=None, **kwargs):
    """`model`'s output on completions that continue shared prompts, each prompt encoded once.

    prefix_ids / prefix_mask: (B, P) right-padded prompt tokens of B rankings; prefix_lengths (B,);
    owner (n,): the ranking of each completion; input_ids / attention_mask (n, C): the completion
    tokens after their prompt, right-padded. The prompts' key/value cache is computed once and
    indexed per completion, so a ranking costs P + K*C tokens instead of K*(P + C). prefix_model:
    the module for the prompt pass (the unwrapped model under DDP, so the wrapper sees one forward
    per backward; or the decoder alone when only its cache is needed). kwargs go to the completion
    pass (e.g. `logits_to_keep`).
    """
    needed, index = owner.unique(return_inverse=True)  # only the prompts of these completions
    p_mask = prefix_mask[needed]
    width = int(p_mask.sum(dim=1).max())
    p_mask = p_mask[:, :width]
    cache = (prefix_model or model)(input_ids=prefix_ids[needed, :width], attention_mask=p_mask,
                                    use_cache=True).cache
    cache.batch_select_indices(index)
    positions = prefix_lengths[owner][:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    return model(input_ids=input_ids, attention_mask=torch.cat([p_mask[index], attention_mask], 1),
                 position_ids=positions, cache=cache, use_cache=True, **kwargs)


@torch.no_grad()
def score_sequences(model, seqs: Sequence[Sequence[int]], pad_token_id: int, batch_size: int,
                    device: torch.device, groups: Sequence[Hashable] | None = None) -> torch.Tensor:
    """(n,) float32 CPU rewards of token sequences, batched by similar length, in input order.

    groups: a key per sequence (e.g. its prompt). The sequences of a key that start with common
    tokens (the chat-formatted prompt) run that prefix once (`forward_scores_shared`), in batches
    of about `batch_size` sequences; the scores equal the unshared ones up to float rounding. A
    key's sequences need not be adjacent; keys with one sequence, or nothing shared, run whole.
    """
    out = torch.empty(len(seqs), dtype=torch.float32)
    shared, alone = _prompt_groups(seqs, pad_token_id, groups)
    alone.sort(key=lambda n: len(seqs[n]))
    for start in range(0, len(alone), batch_size):
        idx = alone[start:start + batch_size]
        input_ids, attention_mask = pad_right([seqs[n] for n in idx], pad_token_id, device)
        out[idx] = forward_scores(model, input_ids, attention_mask).cpu()
    # whole groups to a batch (a prefix runs once), groups of similar length together
    shared.sort(key=lambda group: max(len(seqs[n]) for n in group[1]))
    batch: list[tuple[int, list[int]]] = []
    for k, group in enumerate(shared):
        batch.append(group)
        if sum(len(members) for _, members in batch) >= batch_size or k == len(shared) - 1:
            _score_shared_batch(model, seqs, batch, pad_token_id, device, out)
            batch = []
    return out


def _prompt_groups(seqs: Sequence[Sequence[int]], pad_token_id: int, groups: Sequence[Hashable] | None
                   ) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """([(shared prefix length, member indices)], indices that run whole) for `score_sequences`."""
    if groups is None:
        return [], list(range(len(seqs)))
    if len(groups) != len(seqs):
        raise ValueError(f"{len(groups)} group keys for {len(seqs)} sequences")
    members: dict[Hashable, list[int]] = {}
    for n, key in enumerate(groups):
        members.setdefault(key, []).append(n)
    shared, alone = [], []
    for indices in members.values():
        prefix = shared_prefix_length([seqs[n] for n in indices], pad_token_id) if len(indices) > 1 else 0
        if prefix:
            shared.append((prefix, indices))
        else:
            alone.extend(indices)
    return shared, alone


def _score_shared_batch(model, seqs, batch: list[tuple[int, list[int]]], pad_token_id: int, device,
                        out: torch.Tensor) -> None:
    """Score the groups in `batch` (each: prefix length, members), each prefix run once, into `out`.
    A group is laid out as the reward stage lays out a ranking (`RankingCollator`)."""
    items = [{"input_ids": [seqs[n] for n in members], "ranks": [1] * len(members), "prefix_length": prefix}
             for prefix, members in batch]
    t = {k: v.to(device) for k, v in RankingCollator(pad_token_id, share_prompt=True)(items).items()}
    idx = [n for _, members in batch for n in members]
    out[idx] = forward_scores_shared(model, t["prefix_ids"], t["prefix_mask"], t["prefix_lengths"], t["owner"],
                                     t["input_ids"], t["attention_mask"]).cpu()


# ---- a trained reward model ---------------------------------------------------------------------


class RewardScorer:
    """Scores (prompt, response) pairs with a reward-model checkpoint, batched, bias added."""

    def __init__(self, checkpoint: str | Path, device=None, batch_size: int = 16, max_length: int = 1024,
                 apply_bias: bool = True, dtype: str = "auto", model: torch.nn.Module | None = None):
        """model: the checkpoint already in memory as a one-label sequence classifier (PPO hosts a
        LoRA RM on its shared base, `ppo.shared_reward`); None loads it from `checkpoint`.
        The responses to one prompt (PPO's samples_per_prompt, an evaluation's samples) run the
        prompt once (`score_sequences` groups) when the model is loaded here, a transformers
        classifier with a key/value cache, or a given `model` that says it is one
        (`shares_prompts`); any other given `model` scores every sequence whole.
        `held` (a `ppo.trunk_reward.HeldTrunk`, from a given `model` or `hold`): the bottom
        blocks' output over sequences that a model sharing those blocks sampled; those sequences
        run only the blocks above."""
        from rlhf_stack import modeling
        from rlhf_stack.config import ModelConfig

        self.checkpoint = str(checkpoint)
        self.device = torch.device(device) if device is not None else modeling.resolve_device()
        self.batch_size = batch_size
        self.max_length = max_length
        self.apply_bias = apply_bias
        self.tokenizer = modeling.load_tokenizer(self.checkpoint)
        self.shares_prompts = model is None or bool(getattr(model, "shares_prompts", False))
        # the bottom blocks' output over sequences sampled by a model that shares them (`ppo.trunk_reward`)
        self.held = None
        if getattr(model, "held", None) is not None:
            self.hold(model.held)
        if model is None:
            cfg = ModelConfig(name_or_path=self.checkpoint, tuning="full", dtype=dtype)
            model = modeling.load_sequence_classifier(cfg, merge=True, device=self.device)
        self.model = model.eval()
        if self.model.config.num_labels != 1:
            raise ModelNotFoundError(f"{checkpoint} has {self.model.config.num_labels} output labels, not one "
                                     "reward; use a `classifier` reward source for a text classifier")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.bias = read_reward_bias(self.checkpoint)  # from the reward stage; 0.0 when none was computed

    def encode(self, prompt: Prompt, response: str) -> list[int] | None:
        """The token ids this RM reads for (prompt, response); None when they were cut to max_length."""
        ids, truncated = encode_conversation(self.tokenizer, prompt, response, self.max_length)
        return None if truncated else ids

    def hold(self, held) -> None:
        """Score from `held` (a `ppo.trunk_reward.HeldTrunk`) the sequences it keeps, encoded as here."""
        held.encode = self.encode
        self.held = held

    def score_tensor(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """(b,) float32 CPU rewards, `bias` added when `apply_bias`."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return torch.zeros(0)
        seqs = [encode_conversation(self.tokenizer, p, r, self.max_length)[0] for p, r in zip(prompts, responses, strict=True)]
        scores = torch.empty(len(seqs))
        held, scores_held = self.held.score(seqs) if self.held is not None and self.held.hidden else ([], None)
        if held:
            scores[held] = scores_held
        rest = sorted(set(range(len(seqs))) - set(held))
        if rest:
            groups = [prompt_key(prompts[n]) for n in rest] if self.shares_prompts else None
            scores[rest] = score_sequences(self.model, [seqs[n] for n in rest], self.tokenizer.pad_token_id,
                                           self.batch_size, self.device, groups)
        return scores + self.bias if self.apply_bias else scores

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.score_tensor(prompts, responses).tolist()

    __call__ = score


def read_reward_bias(checkpoint: str | Path) -> float:
    """The normalisation bias a reward checkpoint stores in stage.json (0.0 if none)."""
    from rlhf_stack.modeling import read_stage_info

    info = read_stage_info(checkpoint) or {}
    return float(info.get(BIAS_KEY) or 0.0)
