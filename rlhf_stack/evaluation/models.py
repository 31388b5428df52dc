"""The language models an evaluation compares, sampled and scored through stage 3's own path.

`LM(name_or_path)` loads a checkpoint (full weights, or an adapter merged over its base) with its
tokenizer. It samples exactly as the PPO rollout samples (`ppo.rollout`: the same prompt encoding,
generation settings, EOS truncation), computes log-probs of samples with the rollout's function
(`ppo.rollout.sequence_logprobs`, the same layout and logits), and perplexity with PPO-ptx's LM
loss (`ppo.functional.lm_loss`). `evaluate.py` composes them into win rates, KL and the alignment tax.

A policy trained with adapters on its top blocks shares its bottom blocks, bit for bit, with its
reference (`LM.shared_trunk_depth`). Sampling then keeps those blocks' output (`Samples.trunk`, as
PPO's rollout does, `ppo.trunk`), and the reference's pass for the KL runs only its own top blocks
over it: on the quickstart, 4 of 30.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_stack.ppo.rollout import SamplingSettings


@dataclass(frozen=True)
class Samples:
    """Sampled responses of one model to a list of prompts."""

    texts: list[str]  # decoded responses, special tokens dropped
    prompt_ids: list[list[int]]  # per sample, the prompt tokens
    response_ids: list[list[int]]  # per sample, response tokens up to and including EOS
    logprobs: list[torch.Tensor] | None = None  # per sample, `(t,)` log pi(a_t | s_t) recorded while sampling
    trunk: list[torch.Tensor] | None = None  # per sample, `(p + t - 1, H)`: the bottom `trunk_depth` blocks' output
    trunk_depth: int = 0  # over [prompt | response] but its last token, kept while sampling (0: none)


class LM:
    """A causal LM + its tokenizer on the evaluation device, sampling as the PPO rollout does."""

    def __init__(self, name_or_path: str):
        from rlhf_stack import modeling
        from rlhf_stack.config import ModelConfig

        self.name = name_or_path
        self.tokenizer = modeling.load_tokenizer(name_or_path, padding_side="left")
        self.model = modeling.load_causal_lm(ModelConfig(name_or_path=name_or_path, tuning="full")).eval()
        self.device = next(self.model.parameters()).device

    @property
    def backbone(self):
        """The decoder stack (e.g. LlamaModel: `.layers`, `.norm`), or None for another layout."""
        inner = getattr(self.model, "model", None)
        return inner if hasattr(inner, "layers") and hasattr(inner, "norm") else None

    def shared_trunk_depth(self, other: LM) -> int:
        """How many bottom blocks this model shares with `other` (`shared_depth`), or 0."""
        if self.backbone is None or other.backbone is None:
            return 0
        return shared_depth(self.backbone, self.tokenizer, other.backbone, other.tokenizer, other.device)

    def sample(self, rows: list[dict], sampling: SamplingSettings, *, max_prompt_length: int, batch_size: int,
               source: str, n: int = 1, desc: str = "sampling", record: bool = False,
               trunk_depth: int = 0, keep_trunk: bool = True, reward=None) -> Samples:
        """n responses per prompt row (grouped: prompt 0's n samples first), with a progress bar
        (`desc`, one tick per response) on stderr.

        Prompts go to `generate()` shortest first, batch_size // n prompts at a time (less left
        padding), each prompt run once for its n samples, their shared start once
        (`ppo/prefill.py`; `unpadded_prompt_passes`).
        record: keep each sampled token's log pi (`Samples.logprobs`, what `response_logprobs` would
        compute in a second pass) as the PPO rollout does (`ppo.sampling.RolloutSampler`); the same
        draws either way. Ignored under a top-k / top-p cut, where the recorded distribution would
        not be the model's.
        trunk_depth: keep the output of the bottom `trunk_depth` blocks over each finished sample
        (`Samples.trunk`) from the sampling passes, for `response_logprobs` of a model that shares
        them (`shared_trunk_depth`); keep_trunk=False records them for `reward` only.
        reward: a `RewardScorer` holding trunk outputs (`reward_trunk.proxy_reward_model`) that shares
        those blocks (`reward_trunk.shared_blocks`): it keeps their output over its own token sequence
        of each sample, to score them from there."""
        from contextlib import nullcontext

        from tqdm.auto import tqdm

        from rlhf_stack.ppo.packed import packed_linears
        from rlhf_stack.ppo.prefill import plan_prompts
        from rlhf_stack.ppo.rollout import (
            encode_prompts,
            generate,
            generation_config,
            left_pad,
            truncate_at_eos,
        )
        from rlhf_stack.ppo.sampling import RolloutSampler, records_sampling
        from rlhf_stack.ppo.trunk import Trunk, sampled_hidden

        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        gen = generation_config(sampling, self.tokenizer)
        record = record and records_sampling(gen)
        encoded = encode_prompts(rows, self.tokenizer, max_prompt_length, source)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        per_batch = max(1, batch_size // n)
        responses: list[list[int]] = [[] for _ in range(len(encoded) * n)]
        logprobs: list[torch.Tensor] | None = [torch.zeros(0)] * len(responses) if record else None
        trunk = Trunk(self.backbone, trunk_depth) if trunk_depth else None
        kept: list[torch.Tensor] | None = [torch.zeros(0)] * len(responses) if trunk and keep_trunk else None
        texts = [""] * len(responses)
        bar = tqdm(total=len(responses), desc=desc, unit="resp", leave=False)
        # The weights are packed for sampling once for all batches, not at each generate() call
        # (`ppo/packed.py`): nothing changes them meanwhile.
        with packed_linears(self.model, enabled=sampling.pack_weights_for_sampling):
            for start in range(0, len(order), per_batch):
                chosen = order[start:start + per_batch]
                ids, mask = left_pad([encoded[i] for i in chosen for _ in range(n)], pad, self.device)
                sampler = RolloutSampler(record=True) if record else None  # global RNG, as without it
                plan = plan_prompts(self.model, ids, mask, n) if sampling.unpadded_prompt_passes else None
                caches = [] if trunk and reward is not None else None
                with trunk.record() if trunk else nullcontext() as chunks:
                    raw = generate(self.model, ids, mask, gen, group=n, sampler=sampler,
                                   pack_weights=sampling.pack_weights_for_sampling,
                                   unpadded=sampling.unpadded_prompt_passes, plan=plan, keep_cache=caches)
                out, out_mask, _ = truncate_at_eos(raw, eos, pad)
                recorded = sampler.result(raw)[0].float().cpu() if sampler else None
                hidden = sampled_hidden(chunks, len(ids), ids.shape[1] + out.shape[1] - 1, plan).cpu() if trunk else None
                for row in range(out.shape[0]):
                    i = chosen[row // n] * n + row % n
                    responses[i] = out[row][out_mask[row].bool()].tolist()
                    texts[i] = self.tokenizer.decode(responses[i], skip_special_tokens=True).strip()
                    if logprobs is not None:
                        logprobs[i] = recorded[row, :len(responses[i])]
                    if kept is not None:  # the prompt's positions, then the response's but its last
                        kept[i] = torch.cat([hidden[row, :ids.shape[1]][mask[row].bool().cpu()],
                                             hidden[row, ids.shape[1]:ids.shape[1] + len(responses[i]) - 1]])
                if caches:
                    batch = [chosen[row // n] * n + row % n for row in range(out.shape[0])]
                    reward.held.collect(trunk, caches[0], mask, hidden, [rows[i // n]["prompt"] for i in batch],
                                        [encoded[i // n] for i in batch], [responses[i] for i in batch],
                                        [texts[i] for i in batch])
                bar.update(out.shape[0])
        bar.close()
        return Samples(texts, [ids for ids in encoded for _ in range(n)], responses, logprobs, kept, trunk_depth)

    def response_logprobs(self, samples: Samples, temperature: float, batch_size: int,
                          trunk_depth: int = 0) -> list[torch.Tensor]:
        """Per sample, the `(t,)` tensor of log pi(a_t | s_t) of its response tokens (logits / temperature).

        trunk_depth: this model shares its bottom `trunk_depth` blocks with the model that drew the
        samples (`shared_trunk_depth`), and that model kept their output (`Samples.trunk`): only the
        blocks above run here. The log-probs equal the full pass up to float rounding."""
        from rlhf_stack.ppo.rollout import left_pad, sequence_logprobs
        from rlhf_stack.ppo.trunk import Trunk
        from rlhf_stack.reward.batching import pad_right

        use_trunk = bool(trunk_depth) and samples.trunk is not None and samples.trunk_depth == trunk_depth
        trunk = Trunk(self.backbone, trunk_depth) if use_trunk else None
        pad = self.tokenizer.pad_token_id
        out = []
        for start in range(0, len(samples.response_ids), batch_size):
            responses = samples.response_ids[start:start + batch_size]
            query_ids, query_mask = left_pad(samples.prompt_ids[start:start + batch_size], pad, self.device)
            response_ids, response_mask = pad_right([r or [pad] for r in responses], pad, self.device)
            hidden = (_lay_out(samples.trunk[start:start + batch_size], query_mask, response_ids.shape[1])
                      .to(self.device, self.model.dtype) if trunk else None)
            logprobs = sequence_logprobs(self.model, query_ids, query_mask, response_ids, response_mask, temperature,
                                         trunk, hidden)
            out.extend(logprobs[row, :len(r)].float().cpu() for row, r in enumerate(responses))
        return out

    @torch.no_grad()
    def corpus_nll(self, texts: list[str], max_length: int, batch_size: int) -> tuple[float, int]:
        """(summed token NLL, number of predicted tokens) over the texts, each cut to `max_length` tokens."""
        from rlhf_stack.ppo.functional import lm_loss
        from rlhf_stack.reward.batching import pad_right

        total, count = 0.0, 0
        for start in range(0, len(texts), batch_size):
            enc = [self.tokenizer(t, add_special_tokens=True)["input_ids"][:max_length]
                   for t in texts[start:start + batch_size]]
            ids, mask = pad_right(enc, self.tokenizer.pad_token_id, self.device)
            labels = ids.masked_fill(mask == 0, -100)
            n_tokens = int((labels[:, 1:] != -100).sum())
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            total += float(lm_loss(logits, labels)) * n_tokens
            count += n_tokens
        return total, count


def shared_depth(mine, my_tokenizer, theirs, their_tokenizer, device) -> int:
    """How many bottom blocks the decoder `mine` shares with the decoder `theirs` (on `device`): the
    same vocabulary, the same embeddings and the same weights, bit for bit, in blocks 0..d-1 (a
    policy trained with adapters on its top blocks only, against its reference), or 0. Below those
    blocks both compute the same function. 0 as well when `theirs`'s top blocks run from the
    trunk's output differ from its full pass on a probe batch (`ppo.trunk.Trunk.checked`: a model
    that rescales `inputs_embeds`)."""
    from rlhf_stack.ppo.rollout import left_pad
    from rlhf_stack.ppo.trunk import Trunk

    if my_tokenizer.get_vocab() != their_tokenizer.get_vocab():
        return 0
    if not _same_weights(mine.get_input_embeddings(), theirs.get_input_embeddings()):
        return 0
    depth = 0
    for a, b in zip(mine.layers, theirs.layers, strict=False):
        if not _same_weights(a, b):
            break
        depth += 1
    if not 0 < depth < min(len(mine.layers), len(theirs.layers)):  # nothing shared, or the same blocks
        return 0
    probe = [my_tokenizer(text)["input_ids"] for text in ("Hello there.", "A longer probe, of a few words.")]
    ids, mask = left_pad(probe, my_tokenizer.pad_token_id, device)
    return depth if Trunk.checked(theirs, depth, ids, mask) is not None else 0


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules hold the same tensors (names, shapes, values), bit for bit."""
    mine, theirs = dict(a.named_parameters()), dict(b.named_parameters())
    return mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k]) for k in mine)


def _lay_out(kept: list[torch.Tensor], query_mask: torch.Tensor, n_response: int) -> torch.Tensor:
    """`(b, P + T - 1, H)` from per-sample trunk outputs `(p_i + t_i - 1, H)`, in the layout of
    `[left-padded prompt (P) | right-padded response (T)]` minus the last column; zeros at padding."""
    width = query_mask.shape[1]
    out = kept[0].new_zeros(len(kept), width + n_response - 1, kept[0].shape[-1])
    for row, h in enumerate(kept):
        p = int(query_mask[row].sum())
        out[row, width - p:width - p + len(h)] = h
    return out
