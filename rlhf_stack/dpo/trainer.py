"""The DPO stage's hooks into transformers' Trainer: rankings in, K-wise DPO loss out.

- `completion_logprobs`: log pi(y | x) of every completion of a batch, summed over its tokens, the
  shared prompt encoded once (`reward.scorer.forward_shared`);
- `RankingDPOTrainer`: `transformers.Trainer` whose `compute_loss` runs the reference and the
  policy once per completion and applies the configured loss (`functional.LOSSES`);
- `eval_metrics_fn`: the Trainer's `compute_metrics`: the reward model's ranking metrics on the
  implicit rewards (the same `evaluate` modules), the mean margin and the drift from the reference.

The outer loop (optimizer, schedule, accumulation, checkpoints, early stopping) is the Trainer's
own (STYLE 6); `training.AtomicCheckpoints` makes its checkpoint writes atomic and verified.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from rlhf_stack.dpo.functional import mean_margin, sequence_logprobs
from rlhf_stack.dpo.models import Reference, decoder
from rlhf_stack.reward.batching import scores_by_ranking
from rlhf_stack.reward.functional import pairwise_accuracy
from rlhf_stack.reward.scorer import forward_shared
from rlhf_stack.training import AtomicCheckpoints


def completion_logprobs(model, batch: dict[str, torch.Tensor], prefix_model=None) -> torch.Tensor:
    """(n,) float32 log pi(completion | prompt) of every row of a `PreferenceCollator` batch.

    The logits are computed only from the position before the earliest completion token onwards
    (`logits_to_keep`); with a shared prompt, `prefix_model` (the decoder) builds its cache once.
    """
    width = int(batch["attention_mask"].sum(dim=1).max())
    input_ids, attention_mask = batch["input_ids"][:, :width], batch["attention_mask"][:, :width]
    start = batch["completion_start"]
    first = int(start.min()) - 1  # the position predicting the earliest completion token
    if "owner" in batch:
        out = forward_shared(model, batch["prefix_ids"], batch["prefix_mask"], batch["prefix_lengths"],
                             batch["owner"], input_ids, attention_mask, prefix_model=prefix_model,
                             logits_to_keep=width - first)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=width - first)
    logits = out.logits[:, :-1]  # positions first .. width-2 predict tokens first+1 .. width-1
    positions = torch.arange(first + 1, width, device=input_ids.device)
    completion = attention_mask[:, first + 1:].bool() & (positions[None, :] >= start[:, None])
    return sequence_logprobs(logits, input_ids[:, first + 1:], completion)


class RankingDPOTrainer(AtomicCheckpoints, Trainer):
    """transformers.Trainer whose batch is whole rankings and whose loss is a K-wise DPO loss; its
    checkpoints are written whole or not at all (`training.AtomicCheckpoints`)."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: the Trainer divides by GA steps

    def __init__(self, *args, objective, reference: Reference, beta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective  # (logratios (B, K), ranks (B, K)) -> scalar
        self.reference = reference
        self.beta = beta
        self._train_stats: list[tuple[float, float]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ranks = inputs["ranks"]
        unwrapped = self.accelerator.unwrap_model(model)
        # 1. reference log-probs, no graph; first, because adapter switches reset trainable flags
        with torch.no_grad(), self.reference.active(unwrapped) as ref:
            ref_logprobs = completion_logprobs(ref, inputs, prefix_model=decoder(ref))
        # 2. policy log-probs with a graph (under DDP the wrapper runs the completion pass)
        logprobs = completion_logprobs(model, inputs, prefix_model=decoder(unwrapped))
        # 3. the loss on the (B, K) log-ratios
        logratios = scores_by_ranking(logprobs - ref_logprobs, ranks, inputs["ranking_set"])
        loss = self.objective(logratios, ranks)
        rewards = self.beta * logratios.detach()
        if model.training:
            self._train_stats.append((float(pairwise_accuracy(rewards, ranks)), float(mean_margin(rewards, ranks))))
        return (loss, {"rewards": rewards, "logratios": logratios.detach()}) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._train_stats and "loss" in logs:
            accuracy, margin = zip(*self._train_stats, strict=True)
            logs["train_pairwise_accuracy"] = sum(accuracy) / len(accuracy)
            logs["train_mean_margin"] = sum(margin) / len(margin)
            self._train_stats.clear()
        super().log(logs, start_time)


def eval_metrics_fn():
    """compute_metrics for the Trainer on the gathered (implicit rewards, log-ratios, ranks), each (N, K_max).

    - the reward model's ranking metrics on the implicit rewards beta * logratio (pairwise
      accuracy, top-1, Kendall tau, F1, calibration: `reward.trainer.eval_metrics_fn`, the same modules);
    - mean_margin: mean implicit-reward gap r_i - r_j over every strictly ordered pair;
    - chosen_logratio: mean over rankings of log pi(y|x) - log pi_ref(y|x), summed over tokens, of the
      best-ranked completions: how far the policy moved from the reference on held-out preferred
      answers. It is the KL's integrand evaluated on data rather than on samples of pi, so it is
      not a KL (it can be negative); 0 before training.
    """
    from rlhf_stack.reward.trainer import eval_metrics_fn as ranking_metrics_fn

    ranking_metrics = ranking_metrics_fn()

    def compute_metrics(eval_pred) -> dict[str, float]:
        (rewards, logratios), ranks = eval_pred.predictions, eval_pred.label_ids
        out = ranking_metrics(type(eval_pred)(predictions=rewards, label_ids=ranks))
        rewards, logratios, ranks = torch.as_tensor(rewards), torch.as_tensor(logratios), torch.as_tensor(ranks)
        valid = ranks > 0  # padding: 0 inside a batch, -100 between batches of different K_max
        ranks = ranks.masked_fill(~valid, 0)
        out["mean_margin"] = float(mean_margin(rewards, ranks))
        best = valid & (ranks == ranks.masked_fill(~valid, torch.iinfo(ranks.dtype).max).min(dim=1, keepdim=True).values)
        per_ranking = (logratios * best).sum(dim=1) / best.sum(dim=1)
        out["chosen_logratio"] = float(per_ranking.mean())
        return out

    return compute_metrics
