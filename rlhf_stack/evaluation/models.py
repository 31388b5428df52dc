"""The language models an evaluation compares, sampled and scored through stage 3's own path.

`LM(name_or_path)` loads a checkpoint (full weights, or an adapter merged over its base) with its
tokenizer. It samples exactly as the PPO rollout samples (`ppo.rollout`: the same prompt encoding,
generation settings, EOS truncation), computes log-probs of samples with the rollout's function
(`ppo.rollout.sequence_logprobs`, the same layout and logits), and perplexity with PPO-ptx's LM
loss (`ppo.functional.lm_loss`). `evaluate.py` composes them into win rates, KL and the alignment tax.
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


class LM:
    """A causal LM + its tokenizer on the evaluation device, sampling as the PPO rollout does."""

    def __init__(self, name_or_path: str):
        from rlhf_stack import modeling
        from rlhf_stack.config import ModelConfig

        self.name = name_or_path
        self.tokenizer = modeling.load_tokenizer(name_or_path, padding_side="left")
        self.model = modeling.load_causal_lm(ModelConfig(name_or_path=name_or_path, tuning="full")).eval()
        self.device = next(self.model.parameters()).device

    def sample(self, rows: list[dict], sampling: SamplingSettings, *, max_prompt_length: int, batch_size: int,
               source: str, n: int = 1, desc: str = "sampling", record: bool = False) -> Samples:
        """n responses per prompt row (grouped: prompt 0's n samples first), with a progress bar
        (`desc`, one tick per response) on stderr.

        Prompts go to `generate()` shortest first, batch_size // n prompts at a time (less left
        padding), each prompt run once for its n samples (`rollout.prefill_groups`).
        record: keep each sampled token's log pi (`Samples.logprobs`, what `response_logprobs` would
        compute in a second pass) as the PPO rollout does (`ppo.sampling.RolloutSampler`); the same
        draws either way. Ignored under a top-k / top-p cut, where the recorded distribution would
        not be the model's."""
        from tqdm.auto import tqdm

        from rlhf_stack.ppo.rollout import (
            encode_prompts,
            generate,
            generation_config,
            left_pad,
            truncate_at_eos,
        )
        from rlhf_stack.ppo.sampling import RolloutSampler, records_sampling

        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        gen = generation_config(sampling, self.tokenizer)
        record = record and records_sampling(gen)
        encoded = encode_prompts(rows, self.tokenizer, max_prompt_length, source)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        per_batch = max(1, batch_size // n)
        responses: list[list[int]] = [[] for _ in range(len(encoded) * n)]
        logprobs: list[torch.Tensor] | None = [torch.zeros(0)] * len(responses) if record else None
        bar = tqdm(total=len(responses), desc=desc, unit="resp", leave=False)
        for start in range(0, len(order), per_batch):
            chosen = order[start:start + per_batch]
            ids, mask = left_pad([encoded[i] for i in chosen for _ in range(n)], pad, self.device)
            sampler = RolloutSampler(record=True) if record else None  # global RNG, as without it
            raw = generate(self.model, ids, mask, gen, group=n, sampler=sampler)
            out, out_mask, _ = truncate_at_eos(raw, eos, pad)
            recorded = sampler.result(raw)[0].float().cpu() if sampler else None
            for row in range(out.shape[0]):
                i = chosen[row // n] * n + row % n
                responses[i] = out[row][out_mask[row].bool()].tolist()
                if logprobs is not None:
                    logprobs[i] = recorded[row, :len(responses[i])]
            bar.update(out.shape[0])
        bar.close()
        texts = [self.tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in responses]
        return Samples(texts, [ids for ids in encoded for _ in range(n)], responses, logprobs)

    def response_logprobs(self, samples: Samples, temperature: float, batch_size: int) -> list[torch.Tensor]:
        """Per sample, the `(t,)` tensor of log pi(a_t | s_t) of its response tokens (logits / temperature)."""
        from rlhf_stack.ppo.rollout import left_pad, sequence_logprobs
        from rlhf_stack.reward.batching import pad_right

        pad = self.tokenizer.pad_token_id
        out = []
        for start in range(0, len(samples.response_ids), batch_size):
            responses = samples.response_ids[start:start + batch_size]
            query_ids, query_mask = left_pad(samples.prompt_ids[start:start + batch_size], pad, self.device)
            response_ids, response_mask = pad_right([r or [pad] for r in responses], pad, self.device)
            logprobs = sequence_logprobs(self.model, query_ids, query_mask, response_ids, response_mask, temperature)
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
