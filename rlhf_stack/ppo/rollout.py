"""Rollouts: prompts -> sampled responses -> the tensors PPO needs, in one frozen dataclass.

Sequences are laid out `[left-padded prompt | right-padded response]`: left padding lets a
batch of prompts generate together with a KV cache, right padding after EOS keeps every
response starting at the same column, so response tensors are plain `(b, t)` slices.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch

from rlhf_stack.data import prompt_messages
from rlhf_stack.errors import DataError
from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.packed import packed_linears
from rlhf_stack.ppo.prefill import PromptPlan, plan_prompts, prefill
from rlhf_stack.ppo.sampling import RolloutSampler, records_sampling, sampling_processors
from rlhf_stack.ppo.trunk import position_ids_from_mask, sampled_hidden

Tensor = torch.Tensor


@dataclass(frozen=True)
class Rollout:
    """One batch of experience. b = rollouts, p = prompt width, t = response width."""

    query_ids: Tensor  # (b, p) prompt token ids, left-padded with pad_token_id
    query_mask: Tensor  # (b, p) 1 for real prompt tokens
    response_ids: Tensor  # (b, t) sampled tokens a_t, pad after the first EOS
    response_mask: Tensor  # (b, t) float, 1 for real response tokens (EOS included)
    has_eos: Tensor  # (b,) bool, the response ended with EOS (not cut by max_new_tokens)
    logprobs: Tensor  # (b, t) log pi_old(a_t | s_t), the policy that sampled (temperature-scaled)
    ref_logprobs: Tensor  # (b, t) log pi_ref(a_t | s_t), the SFT model
    values: Tensor | None  # (b, t) V_old(s_t), value estimate before each response token; None: no value model
    entropy: Tensor  # (b, t) entropy of pi_old(. | s_t), the distribution a_t was sampled from
    hidden: Tensor | None = None  # (b, p + t - 1, H) output of the frozen trunk for input_ids[:, :-1] (trunk.py), or None
    scores: Tensor | None = None  # (b,) processed sequence score (after norm, clip, EOS penalty)
    rewards: Tensor | None = None  # (b, t) per-token reward: -kl_coef * kl_t, + score at the last token
    advantages: Tensor | None = None  # (b, t) GAE advantages (whitened when configured), or the
    #   critic-free estimator's one advantage per response on each of its tokens
    returns: Tensor | None = None  # (b, t) value targets = GAE advantages + values; None without a value model

    @property
    def input_ids(self) -> Tensor:
        """(b, p + t) prompt and response."""
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> Tensor:
        """(b, p + t) 1 on real prompt and response tokens."""
        return torch.cat([self.query_mask, self.response_mask.long()], 1)

    def trimmed(self) -> Rollout:
        """Drop prompt columns that are padding in every row (left) and response columns past the
        longest response (right): a micro-batch's forward pass then costs only its real width."""
        first = int((self.query_mask.sum(0) > 0).long().argmax())
        width = max(int(self.response_mask.sum(1).max()), 1)
        query = {"query_ids": self.query_ids[:, first:], "query_mask": self.query_mask[:, first:]}
        response = {f.name: getattr(self, f.name)[:, :width] for f in fields(self)
                    if f.name not in ("query_ids", "query_mask", "hidden") and getattr(self, f.name) is not None
                    and getattr(self, f.name).dim() == 2}
        if self.hidden is not None:  # the same columns of [prompt | response][:, :-1]
            response["hidden"] = self.hidden[:, first:self.query_ids.shape[1] + width - 1]
        return replace(self, **query, **response)

    def select(self, index: Tensor) -> Rollout:
        """The rollouts at `index` (a mini/micro-batch); tensors are sliced on dim 0."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if getattr(self, f.name) is not None})


# ---- prompts ------------------------------------------------------------------------------------


def encode_prompts(rows: list[dict], tokenizer, max_prompt_length: int, source: str) -> list[list[int]]:
    """Token ids of each prompt with the chat template's generation prompt; too-long prompts are errors."""
    encoded, problems = [], []
    for n, row in enumerate(rows, start=1):
        ids = tokenizer.apply_chat_template(prompt_messages(row["prompt"]), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        if len(ids) > max_prompt_length and len(problems) < 10:
            problems.append(f"{source}:{row.get('_line', n)}: the prompt is {len(ids)} tokens, "
                            f"max_prompt_length is {max_prompt_length}")
        encoded.append(list(ids))
    if problems:
        raise DataError("\n".join(problems) + "\n(raise max_prompt_length or shorten these prompts)")
    return encoded


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(ids, mask), both `(b, max_len)`, padded on the left (generation continues on the right)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[i, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


# ---- generation ---------------------------------------------------------------------------------


class SamplingSettings(Protocol):
    """The sampling fields PPOConfig and EvalConfig share: one sampler for rollout and evaluation."""

    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    pack_weights_for_sampling: bool
    unpadded_prompt_passes: bool


def generation_config(cfg: SamplingSettings, tokenizer):
    """Sampling settings of `cfg` (a PPOConfig, an EvalConfig) as a transformers GenerationConfig.

    Every knob that reshapes the distribution is set explicitly: an unset one falls back to the
    checkpoint's generation_config.json or transformers' defaults (top_k=50!), and PPO needs
    samples from exactly the policy whose logprobs it computes.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, typical_p=1.0,
        max_new_tokens=cfg.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, use_cache=True,
    )


@torch.no_grad()
def prefill_groups(model, query_ids: Tensor, query_mask: Tensor, group: int):
    """KV cache of `(b, p)` prompts that come in runs of `group` identical rows (the samples of one
    prompt): each run's prompt but its last token goes through `model` once, and the cache is
    copied to the run's rows. `generate()` given this cache runs only each row's last prompt token
    before it samples, so a prompt sampled k times costs one prompt pass instead of k.
    """
    from transformers import DynamicCache

    ids, mask = query_ids[::group, :-1], query_mask[::group, :-1]
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), cache=cache,
          use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(group)
    return cache


@torch.no_grad()
def generate(policy, query_ids: Tensor, query_mask: Tensor, gen_config, merge_lora: bool = False,
             sampler: RolloutSampler | None = None, group: int = 1, pack_weights: bool = True,
             unpadded: bool = True, plan: PromptPlan | None = None, keep_cache: list | None = None) -> Tensor:
    """Sample responses with the KV cache; `(b, p) -> (b, t_gen)`, generation stops when all rows hit EOS.

    group: the rows come in runs of `group` copies of one prompt (PPO's samples_per_prompt, the
    evaluation's samples of a prompt). unpadded: the prompt pass runs each distinct prompt once,
    their shared start once and no padding (`prefill.py`; `plan`: its layout when the caller made
    it, to lay out what it records); else, or where that path does not apply, one padded pass per
    distinct prompt (`prefill_groups`). The samples are the same up to float rounding (tests: 1e-5).

    merge_lora folds the active adapter into the base for the duration (fewer matmuls per token)
    and unfolds it afterwards; see PPOConfig.merge_lora_for_generation for when that pays.
    pack_weights: on CPU in float32, run the linear layers through oneDNN-packed copies of their
    weights for the call (`ppo.packed`; PPOConfig.pack_weights_for_sampling).
    sampler: the RolloutSampler to draw with (a recording one collects log pi and the entropy of
    each sampled token); None: one on torch's global RNG.
    keep_cache: a list to append the finished key/value cache to (`(b, h, p + t_gen - 1, d)` a layer,
    the columns the model was fed), for passes that continue the sequences (`Trunk.extend`).
    Under FSDP2 every process keeps stepping until all are done (`synced_gpus`): each step gathers
    parameters, a collective that a process which stopped early would leave hanging.
    """
    from rlhf_stack import distributed

    merged = merge_lora and hasattr(policy, "merge_adapter")
    synced = distributed.world_size() > 1 and distributed.is_sharded(policy)
    if merged:
        policy.merge_adapter()
    processors, gen_config = sampling_processors(gen_config, sampler)
    if plan is None and unpadded:
        plan = plan_prompts(policy, query_ids, query_mask, group)
    try:
        with packed_linears(policy, enabled=pack_weights, rows=query_ids.shape[0]):  # skips sharded weights
            if plan is not None:
                cache = prefill(policy, plan, query_ids.device)
            else:
                cache = (prefill_groups(policy, query_ids, query_mask, group)
                         if group > 1 and query_ids.shape[1] > 1 else None)
            if cache is None and keep_cache is not None:
                from transformers import DynamicCache

                cache = DynamicCache(config=policy.config)  # what generate() would start from
            out = policy.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=gen_config,
                                  logits_processor=processors, synced_gpus=synced, cache=cache)
        if keep_cache is not None:
            keep_cache.append(cache)
    finally:
        if merged:
            policy.unmerge_adapter()
    return out[:, query_ids.shape[1]:]


def truncate_at_eos(response_ids: Tensor, eos_id: int, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(response_ids, response_mask, has_eos): tokens after the first EOS become padding.

    response_ids `(b, t)`; the mask keeps the EOS itself (the score lands on it). The width is
    cut to the longest kept response.
    """
    is_eos = response_ids == eos_id
    has_eos = is_eos.any(1)
    first_eos = torch.where(has_eos, is_eos.float().argmax(1), torch.full_like(has_eos, response_ids.shape[1] - 1,
                                                                               dtype=torch.long))
    positions = torch.arange(response_ids.shape[1], device=response_ids.device).unsqueeze(0)
    mask = positions <= first_eos.unsqueeze(1)
    width = int(mask.sum(1).max())
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_id))
    return ids[:, :width], mask[:, :width].float(), has_eos


# ---- forward passes over a generated batch ------------------------------------------------------


@torch.no_grad()
def sequence_logprobs(model, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                      temperature: float, trunk=None, hidden: Tensor | None = None) -> Tensor:
    """`(b, t)` log pi(a_t | s_t) of given responses under a causal LM, 0 at padding.

    The rollout's layout (`[left-padded prompt | right-padded response]`) and logits
    (`models.causal_lm_logits`), so evaluation measures KL exactly as PPO does. With `trunk`
    (`ppo.trunk.Trunk` of this model) and `hidden`, its bottom blocks' output over that layout but its
    last column, only the blocks above and the LM head run (the same log-probs up to float rounding).
    """
    from rlhf_stack.ppo.models import causal_lm_logits

    input_ids = torch.cat([query_ids, response_ids], 1)
    attention_mask = torch.cat([query_mask, response_mask.long()], 1)
    if hidden is None:
        logits = causal_lm_logits(model, input_ids, attention_mask, response_ids.shape[1])
    else:
        top = trunk.top(hidden, attention_mask[:, :-1])
        logits = model.get_output_embeddings()(top[:, -response_ids.shape[1]:])
    return PF.logprobs_from_logits(logits, response_ids, temperature) * response_mask


@torch.no_grad()
def score_with_models(actor_critic, query_ids, query_mask, response_ids, response_mask, *,
                      temperature: float, micro_batch_size: int, with_policy: bool = True,
                      hidden: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor | None, Tensor | None]:
    """(logprobs, entropy, ref_logprobs, values, hidden) in micro-batches: the first four `(b, t)`
    with 0 at padding, `hidden` the frozen trunk's output `(b, p + t - 1, H)` (None without a trunk),
    computed once here (or given: recorded while sampling) and reused by every pass over the batch.

    with_policy=False skips the policy's own pass (logprobs and entropy come back None): the
    caller recorded them while sampling. values is None when the actor-critic has no value.
    """
    input_ids = torch.cat([query_ids, response_ids], 1)
    attention_mask = torch.cat([query_mask, response_mask.long()], 1)
    n_response = response_ids.shape[1]
    logprobs, entropy, ref_logprobs, values, trunk_out = [], [], [], [], []
    for start in range(0, input_ids.shape[0], micro_batch_size):
        mb = slice(start, start + micro_batch_size)
        mb_ids, mb_mask, mb_response = input_ids[mb], attention_mask[mb], response_ids[mb]
        mb_hidden = hidden[mb] if hidden is not None else actor_critic.trunk_hidden(mb_ids, mb_mask)
        packing = actor_critic.packing(mb_ids, mb_mask, n_response)
        if with_policy:
            mb_logprobs, mb_entropy = actor_critic.policy_logprobs(mb_ids, mb_mask, mb_response, temperature, mb_hidden,
                                                                   packing, entropy=True)
            logprobs.append(mb_logprobs)
            entropy.append(mb_entropy)
        ref_logprobs.append(actor_critic.ref_logprobs(mb_ids, mb_mask, mb_response, temperature, mb_hidden, packing))
        if actor_critic.has_value:
            values.append(actor_critic.values(mb_ids, mb_mask, n_response, mb_hidden, packing).float())
        if hidden is None and mb_hidden is not None:
            trunk_out.append(mb_hidden)
    mask = response_mask
    policy_part = (torch.cat(logprobs) * mask, torch.cat(entropy) * mask) if with_policy else (None, None)
    return (*policy_part, torch.cat(ref_logprobs) * mask, torch.cat(values) * mask if values else None,
            hidden if hidden is not None else torch.cat(trunk_out) if trunk_out else None)


def collect_rollout(actor_critic, policy, query_ids, query_mask, gen_config, *, eos_id: int, pad_id: int,
                    temperature: float, micro_batch_size: int, merge_lora: bool = False,
                    draws: tuple[int, int, int] | None = None, timings: dict | None = None,
                    samples_per_prompt: int = 1, trunk_from_sampling: bool = True,
                    pack_weights: bool = True, unpadded: bool = True, keep_cache: list | None = None) -> Rollout:
    """Generate responses to the (left-padded) prompts and evaluate them under policy, reference, value.

    log pi_old is recorded while sampling when that is exact (see sampling.RolloutSampler), else the
    policy runs once more over the finished sequences. draws: (seed, first row, rows in the global
    batch) of the sampler's own generator (`RolloutSampler`); None: torch's global RNG. timings:
    filled with `sample_s` (generation) and `forward_s` (the passes over the finished batch).
    samples_per_prompt: rows come in runs of that many copies of one prompt (each prompt is run once).
    trunk_from_sampling: with a frozen trunk, keep its output from the sampling passes
    (`trunk.sampled_hidden`) instead of running it again over the finished batch.
    pack_weights: sample through oneDNN-packed weights on CPU (`generate`).
    unpadded: run the prompt pass unpadded, the prompts' shared start once (`generate`).
    keep_cache: a list to append the sampling's key/value cache to (`generate`).
    """
    import time

    start = time.perf_counter()
    record = records_sampling(gen_config) and not merge_lora
    sampler = RolloutSampler(record, *((draws[0], draws[1:]) if draws else ()))
    trunk = actor_critic.trunk if trunk_from_sampling else None
    plan = plan_prompts(policy, query_ids, query_mask, samples_per_prompt) if unpadded else None
    with trunk.record() if trunk is not None else nullcontext() as chunks:
        raw = generate(policy, query_ids, query_mask, gen_config, merge_lora=merge_lora, sampler=sampler,
                       group=samples_per_prompt, pack_weights=pack_weights, unpadded=unpadded, plan=plan,
                       keep_cache=keep_cache)
    response_ids, response_mask, has_eos = truncate_at_eos(raw, eos_id, pad_id)
    hidden = (sampled_hidden(chunks, len(query_ids), query_ids.shape[1] + response_ids.shape[1] - 1, plan)
              if trunk is not None else None)
    sampled = time.perf_counter()
    logprobs, entropy, ref_logprobs, values, hidden = score_with_models(
        actor_critic, query_ids, query_mask, response_ids, response_mask,
        temperature=temperature, micro_batch_size=micro_batch_size, with_policy=not record, hidden=hidden)
    if record:
        logprobs, entropy = (x * response_mask for x in sampler.result(response_ids))
    if timings is not None:
        timings.update(sample_s=sampled - start, forward_s=time.perf_counter() - sampled)
    return Rollout(query_ids, query_mask, response_ids, response_mask, has_eos, logprobs, ref_logprobs, values,
                   entropy, hidden)


@torch.no_grad()
def heldout_score(policy, rows: list[dict], tokenizer, gen_config, reward, accelerator, batch_size: int) -> float | None:
    """Mean raw reward of responses sampled, as in a rollout, to held-out prompt rows (each
    process scores its share; the mean is over all of them). None without rows.

    Every process runs the same number of batches (a short share is topped up with rows that
    count 0): under FSDP2 each forward is a collective."""
    if not rows:
        return None
    acc, tok = accelerator, tokenizer
    share = -(-len(rows) // acc.num_processes)
    mine = rows[acc.process_index * share:(acc.process_index + 1) * share]
    weights = [1.0] * len(mine) + [0.0] * (share - len(mine))
    mine = mine + [rows[0]] * (share - len(mine))
    total = torch.zeros(2, device=acc.device)
    for start in range(0, share, batch_size):
        batch, weight = mine[start:start + batch_size], torch.tensor(weights[start:start + batch_size])
        ids, mask = left_pad(encode_prompts(batch, tok, 10**9, "held-out prompts"), tok.pad_token_id, acc.device)
        response_ids, _, _ = truncate_at_eos(generate(policy, ids, mask, gen_config), tok.eos_token_id,
                                             tok.pad_token_id)
        scores, _ = reward([r["prompt"] for r in batch], tok.batch_decode(response_ids, skip_special_tokens=True))
        total += torch.tensor([float((scores.cpu() * weight).sum()), float(weight.sum())], device=acc.device)
    total = acc.reduce(total, "sum")
    return float(total[0] / total[1])
