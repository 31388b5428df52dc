"""The language models an evaluation compares: sampling as the PPO rollout samples, the per-token
log-probs of those samples under another model (for KL), and perplexity on a corpus.

`LM(name_or_path)` loads a checkpoint (full weights, or an adapter merged over its base) with its
tokenizer; `evaluation.py` composes them into win rates, KL and the alignment tax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf_stack.evaluation import EvalConfig


@dataclass(frozen=True)
class Samples:
    """Sampled responses of one model to a list of prompts."""

    texts: list[str]  # decoded responses, special tokens dropped
    prompt_ids: list[list[int]]  # per sample, the prompt tokens
    response_ids: list[list[int]]  # per sample, response tokens up to and including EOS


class LM:
    """A causal LM + its tokenizer on the evaluation device, sampling as the PPO rollout does."""

    def __init__(self, name_or_path: str):
        from rlhf_stack import modeling
        from rlhf_stack.config import ModelConfig

        self.name = name_or_path
        self.tokenizer = modeling.load_tokenizer(name_or_path, padding_side="left")
        self.model = modeling.load_causal_lm(ModelConfig(name_or_path=name_or_path, tuning="full")).eval()
        self.device = next(self.model.parameters()).device

    def sample(self, rows: list[dict], cfg: EvalConfig, n: int = 1) -> Samples:
        """n responses per prompt row (grouped: prompt 0's n samples first)."""
        from rlhf_stack.ppo.rollout import (
            encode_prompts,
            generate,
            generation_config,
            left_pad,
            truncate_at_eos,
        )

        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        gen = generation_config(cfg, self.tokenizer)
        # top_k=None would let transformers fall back to its default top-k of 50; 0 really disables it.
        gen.top_k = cfg.top_k
        prompts = [ids for ids in encode_prompts(rows, self.tokenizer, cfg.max_prompt_length, cfg.prompts)
                   for _ in range(n)]
        texts, responses = [], []
        for start in range(0, len(prompts), cfg.batch_size):
            ids, mask = left_pad(prompts[start:start + cfg.batch_size], pad, self.device)
            out, out_mask, _ = truncate_at_eos(generate(self.model, ids, mask, gen), eos, pad)
            for row in range(out.shape[0]):
                tokens = out[row][out_mask[row].bool()].tolist()
                responses.append(tokens)
                texts.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return Samples(texts, prompts, responses)

    def response_logprobs(self, samples: Samples, cfg: EvalConfig) -> list:
        """Per sample, the `(t,)` tensor of log pi(a_t | s_t) of its response tokens (logits / temperature)."""
        import torch

        from rlhf_stack.ppo.functional import logprobs_from_logits
        from rlhf_stack.ppo.rollout import left_pad

        out = []
        for start in range(0, len(samples.response_ids), cfg.batch_size):
            responses = samples.response_ids[start:start + cfg.batch_size]
            seqs = [p + r for p, r in zip(samples.prompt_ids[start:start + cfg.batch_size], responses, strict=True)]
            ids, mask = left_pad(seqs, self.tokenizer.pad_token_id, self.device)
            with torch.no_grad():
                logits = self.forward(ids, mask)
            for row, response in enumerate(responses):
                t = len(response)
                # logits at position i predict token i + 1: the response fills the last t slots
                row_logprobs = logprobs_from_logits(logits[row:row + 1, -t - 1:-1], ids[row:row + 1, -t:],
                                                    cfg.temperature)
                out.append(row_logprobs[0].float().cpu() if t else torch.zeros(0))
        return out

    def forward(self, ids, mask):
        from rlhf_stack.ppo.models import position_ids_from_mask

        # Positions count real tokens only, as generate() does under left padding.
        return self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits

    def corpus_nll(self, texts: list[str], cfg: EvalConfig) -> tuple[float, int]:
        """(summed token NLL, number of predicted tokens) over the texts."""
        import torch

        from rlhf_stack.ppo.rollout import left_pad

        total, count = 0.0, 0
        for start in range(0, len(texts), cfg.batch_size):
            enc = [self.tokenizer(t, add_special_tokens=True)["input_ids"][:cfg.corpus_max_length]
                   for t in texts[start:start + cfg.batch_size]]
            ids, mask = left_pad(enc, self.tokenizer.pad_token_id, self.device)
            with torch.no_grad():
                logits = self.forward(ids, mask)[:, :-1].float()
            targets, target_mask = ids[:, 1:], mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            total += float(nll[target_mask].sum())
            count += int(target_mask.sum())
        return total, count
