"""Sampling for rollouts: the logits processor that `rollout.generate` hands to `generate()`.

`RolloutSampler` is the last logits processor of transformers' decoding loop. At each step it
1. draws the next token itself, by inverse-CDF sampling: token = the first i with cdf_i > u,
   u ~ Uniform(0, cdf_V), the CDF summed in float64 so rounding cannot shift the draw. This is
   the same distribution `torch.multinomial` draws from, but multinomial over a 49k-token
   vocabulary is the slowest op of CPU generation (0.67 s for 48 steps of 16 x 49,152 on two
   cores, against 0.04 s for this: about half of all generation time on the PPO benchmark).
   It returns scores that are -inf everywhere but the drawn token, so transformers' greedy
   argmax picks exactly that token;
2. when recording, keeps log pi(a_t | s_t) of the drawn token and the entropy of pi(. | s_t):
   PPO's log pi_old without a second policy pass over the finished sequences (TRL's PPO read it
   off stored generation logits, a `(b, t, V)` tensor; this keeps one `(b, V)` row at a time).

`sampling_processors(gen_config, sampler)` puts transformers' own temperature / top-k / top-p
warpers before it and returns the greedy GenerationConfig to run the list with.
"""

from __future__ import annotations

import copy

import torch

Tensor = torch.Tensor


class RolloutSampler:
    """Logits processor that samples the next token (and records log pi and entropy when `record`).

    Tokens cut to -inf (top-k / top-p) have probability 0, add nothing to the CDF and are never
    drawn. Uses torch's global RNG, so seeding and RNG checkpoints work as with multinomial;
    or, given `seed` and `rows`, its own generator, whose draws belong to rows of a larger batch
    (below). Record only where no top-k / top-p cut is active (`records_sampling`): the recorded
    distribution is then exactly the temperature-scaled policy PPO trains.
    """

    def __init__(self, record: bool = True, seed: int | None = None, rows: tuple[int, int] | None = None) -> None:
        """seed, rows = (start, total): each step draws `total` uniforms from a generator seeded
        with `seed` and uses those of rows start .. start + b - 1. PPO passes its global batch
        there, so a process draws for its rows what one process running the whole batch would:
        the samples do not depend on the number of processes."""
        self.record = record
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.rows = rows
        self.logprobs: list[Tensor] = []  # each (b,): log pi(a_t | s_t) of the token drawn at step t
        self.entropies: list[Tensor] = []  # each (b,): entropy of pi(. | s_t)

    def _uniform(self, n: int) -> Tensor:
        """(n, 1) float64 uniforms on the CPU: this process's rows of the step's draws."""
        if self.generator is None:
            return torch.rand((n, 1), dtype=torch.float64)
        start, total = self.rows or (0, n)
        return torch.rand((total, 1), dtype=torch.float64, generator=self.generator)[start:start + n]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        log_probs = torch.log_softmax(scores.float(), dim=-1)  # (b, V)
        probs = log_probs.exp()
        cdf = probs.double().cumsum_(-1)
        u = self._uniform(scores.shape[0]).to(cdf.device) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[1] - 1)  # (b, 1)
        if self.record:
            self.logprobs.append(log_probs.gather(1, tokens).squeeze(1))
            # p log p with p = 0 (a cut token) counts 0: clamp keeps 0 * -inf from making NaN
            self.entropies.append(-(probs * log_probs.clamp(min=torch.finfo(log_probs.dtype).min)).sum(-1))
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)

    def result(self, response_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(logprobs, entropy), both `(b, t)` for the `(b, t)` response ids generate() returned."""
        n = response_ids.shape[1]
        return torch.stack(self.logprobs[:n], 1), torch.stack(self.entropies[:n], 1)


def records_sampling(gen_config) -> bool:
    """Whether a recording RolloutSampler sees PPO's distribution: pure sampling, no top-k / top-p cut."""
    return bool(gen_config.do_sample) and not gen_config.top_k and (gen_config.top_p or 1.0) >= 1.0


def sampling_processors(gen_config, sampler: RolloutSampler | None = None):
    """(LogitsProcessorList, GenerationConfig) that sample what `gen_config` asks for.

    For a sampling config: temperature, top-k and top-p warpers in transformers' order, then the
    sampler, run under a copy of the config set to greedy decoding (whose argmax then picks the
    sampled token). A greedy config passes through unchanged, without a sampler.
    """
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    if not gen_config.do_sample:
        return LogitsProcessorList(), gen_config
    processors = []
    if gen_config.temperature is not None and gen_config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(gen_config.temperature))
    if gen_config.top_k:
        processors.append(TopKLogitsWarper(gen_config.top_k))
    if gen_config.top_p is not None and gen_config.top_p < 1.0:
        processors.append(TopPLogitsWarper(gen_config.top_p))
    processors.append(sampler if sampler is not None else RolloutSampler(record=False))
    greedy = copy.deepcopy(gen_config)
    greedy.do_sample, greedy.temperature, greedy.top_k, greedy.top_p = False, 1.0, None, None
    return LogitsProcessorList(processors), greedy
