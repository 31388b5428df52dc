"""The reward stage's hooks into transformers' Trainer: rankings in, K-wise loss out.

- `RankingTrainer`: `transformers.Trainer` with `compute_loss` scoring each completion once and
  applying the configured ranking objective (`stage.make_objective`); gradient caching bounds
  memory when K is large. Its batches come from `batching.RankingCollator`;
- `eval_metrics_fn`: the Trainer's `compute_metrics`, our `evaluate` modules on the eval scores.

The outer loop (optimizer, schedule, accumulation, checkpoints, early stopping, DDP) is the
Trainer's own (STYLE 6: use it through its public hooks); `training.AtomicCheckpoints` makes its
checkpoint writes atomic and verified.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import Trainer

from rlhf_stack.reward.batching import completion_chunks, scores_by_ranking
from rlhf_stack.reward.functional import pairwise_accuracy
from rlhf_stack.reward.scorer import forward_scores, forward_scores_shared
from rlhf_stack.training import AtomicCheckpoints


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class RankingTrainer(AtomicCheckpoints, Trainer):
    """transformers.Trainer whose batch is whole rankings and whose loss is K-wise; its checkpoints
    are written whole or not at all (`training.AtomicCheckpoints`)."""

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: the Trainer divides by GA steps

    def __init__(self, *args, objective, micro_batch_completions: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.micro_batch_completions = micro_batch_completions
        self._train_accuracy: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ranks = inputs["ranks"]
        by_ranking = partial(scores_by_ranking, ranks=ranks, ranking_set=inputs["ranking_set"])
        chunks = completion_chunks(inputs, self.micro_batch_completions)
        if model.training and torch.is_grad_enabled() and len(chunks) > 1:
            loss, flat = self._loss_with_cached_gradients(model, inputs, chunks, ranks, by_ranking)
        else:
            flat = torch.cat([self._score(model, inputs, chunk) for chunk in chunks])
            loss = self.objective(by_ranking(flat), ranks)
        scores = by_ranking(flat.detach())
        if model.training:
            self._train_accuracy.append(float(pairwise_accuracy(scores, ranks)))
        return (loss, {"scores": scores}) if return_outputs else loss

    def _score(self, model, inputs, chunk) -> torch.Tensor:
        if "owner" not in chunk:
            return forward_scores(model, chunk["input_ids"], chunk["attention_mask"])
        return forward_scores_shared(
            model, inputs["prefix_ids"], inputs["prefix_mask"], inputs["prefix_lengths"], chunk["owner"],
            chunk["input_ids"], chunk["attention_mask"], prefix_model=self.accelerator.unwrap_model(model))

    def _loss_with_cached_gradients(self, model, inputs, chunks, ranks, by_ranking):
        # Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
        # Memory Limited Setup"): score every chunk without a graph, take d loss / d score, then
        # re-run each chunk with a graph and back-propagate score * grad. Memory holds one chunk's
        # activations; the RNG is replayed so dropout masks match the first pass.
        states, flat = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(_rng_state())
                flat.append(self._score(model, inputs, chunk))
        flat = torch.cat(flat).requires_grad_()
        loss = self.objective(by_ranking(flat), ranks)
        grads = torch.autograd.grad(loss, flat)[0].split([len(c["input_ids"]) for c in chunks])
        scale = 1.0 / self.current_gradient_accumulation_steps  # what training_step applies to the loss
        for chunk, state, grad in zip(chunks[:-1], states[:-1], grads[:-1], strict=True):
            _set_rng_state(state)
            with self.accelerator.no_sync(model):  # DDP: gradients are reduced at the last backward
                self.accelerator.backward((self._score(model, inputs, chunk) * grad).sum() * scale)
        _set_rng_state(states[-1])
        last = (self._score(model, inputs, chunks[-1]) * grads[-1]).sum()
        # value = the loss; gradient = the last chunk's share (the Trainer runs this backward)
        return loss.detach() + last - last.detach(), flat.detach()

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._train_accuracy and "loss" in logs:
            logs["train_pairwise_accuracy"] = sum(self._train_accuracy) / len(self._train_accuracy)
            self._train_accuracy.clear()
        super().log(logs, start_time)


def eval_metrics_fn():
    """compute_metrics for the Trainer: our `evaluate` modules on the gathered (B, K_max) scores/ranks."""
    from rlhf_stack.metrics import RANKING_METRICS, load_metric

    modules = [load_metric(name) for name in RANKING_METRICS]

    def compute_metrics(eval_pred) -> dict[str, float]:
        scores, ranks = eval_pred.predictions, eval_pred.label_ids
        keep = ranks > 0  # padding: 0 inside a batch, -100 between batches of different K_max
        rows_s = [s[k].tolist() for s, k in zip(scores, keep, strict=True)]
        rows_r = [r[k].tolist() for r, k in zip(ranks, keep, strict=True)]
        out: dict[str, float] = {}
        for module in modules:
            out.update(module.compute(predictions=rows_s, references=rows_r))
        return out

    return compute_metrics
