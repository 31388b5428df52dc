"""The reward stage's hooks into transformers' Trainer: rankings in, K-wise loss out.

- `RankingCollator`: a batch of whole rankings -> every completion once (optionally after the
  prompt tokens its ranking shares) + the (B, K) ranks;
- `RankingTrainer`: `transformers.Trainer` with `compute_loss` scoring each completion once and
  applying the configured ranking objective (`reward.make_objective`); gradient caching bounds
  memory when K is large;
- `eval_metrics_fn`: the Trainer's `compute_metrics`, our `evaluate` modules on the eval scores.

The outer loop (optimizer, schedule, accumulation, checkpoints, early stopping, DDP) is the
Trainer's own (STYLE 6: use it through its public hooks).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from rlhf_stack.reward_functional import pairwise_accuracy, to_ranking_matrix
from rlhf_stack.rewards import forward_scores, forward_scores_shared, pad_right


@dataclass
class RankingCollator:
    """A batch of rankings -> every completion as one padded row + the (B, K_max) ranks beside them.

    ranks: (B, K_max), 0 where a ranking has fewer than K_max completions. Without prompt sharing,
    input_ids / attention_mask: (sum of K, max_len) full sequences, rankings laid end to end. With it
    (every ranking shares >= 1 leading token): prefix_ids / prefix_mask (B, P) the shared prompt
    tokens, prefix_lengths (B,), owner (sum of K,) each completion's ranking, and input_ids /
    attention_mask hold only the tokens after the prompt.
    """

    pad_token_id: int
    share_prompt: bool = True

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ranks = torch.zeros((len(items), max(len(item["ranks"]) for item in items)), dtype=torch.long)
        for n, item in enumerate(items):
            ranks[n, :len(item["ranks"])] = torch.as_tensor(item["ranks"])
        batch = {"ranks": ranks}
        shared = [item["prefix_length"] if self.share_prompt else 0 for item in items]
        if min(shared) > 0:
            batch["prefix_ids"], batch["prefix_mask"] = pad_right(
                [item["input_ids"][0][:p] for item, p in zip(items, shared, strict=True)], self.pad_token_id)
            batch["prefix_lengths"] = torch.as_tensor(shared)
            batch["owner"] = torch.as_tensor([b for b, item in enumerate(items) for _ in item["input_ids"]])
        seqs = [ids[p:] for item, p in zip(items, shared, strict=True) for ids in item["input_ids"]]
        batch["input_ids"], batch["attention_mask"] = pad_right(seqs, self.pad_token_id)
        return batch


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


@cache
def _make_trainer_class():
    from transformers import Trainer

    class _RankingTrainer(Trainer):
        """transformers.Trainer whose batch is whole rankings and whose loss is K-wise."""

        loss_is_scaled_for_ga = False  # our loss is a per-batch mean: the Trainer divides by GA steps

        def __init__(self, *args, objective, micro_batch_completions: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.objective = objective
            self.micro_batch_completions = micro_batch_completions
            self._train_accuracy: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ranks = inputs["ranks"]
            chunks = self._chunks(inputs)
            if model.training and torch.is_grad_enabled() and len(chunks) > 1:
                loss, flat = self._loss_with_cached_gradients(model, inputs, chunks, ranks)
            else:
                flat = torch.cat([self._score(model, inputs, chunk) for chunk in chunks])
                loss = self.objective(to_ranking_matrix(flat, ranks), ranks)
            scores = to_ranking_matrix(flat.detach(), ranks)
            if model.training:
                self._train_accuracy.append(float(pairwise_accuracy(scores, ranks)))
            return (loss, {"scores": scores}) if return_outputs else loss

        def _chunks(self, inputs) -> list[dict]:
            """Completions (rows of input_ids) in slices of at most `micro_batch_completions`."""
            step = self.micro_batch_completions or inputs["input_ids"].shape[0]
            keys = [k for k in ("input_ids", "attention_mask", "owner") if k in inputs]
            parts = [inputs[k].split(step) for k in keys]
            return [dict(zip(keys, values, strict=True)) for values in zip(*parts, strict=True)]

        def _score(self, model, inputs, chunk) -> torch.Tensor:
            if "owner" not in chunk:
                return forward_scores(model, chunk["input_ids"], chunk["attention_mask"])
            return forward_scores_shared(
                model, inputs["prefix_ids"], inputs["prefix_mask"], inputs["prefix_lengths"], chunk["owner"],
                chunk["input_ids"], chunk["attention_mask"], prefix_model=self.accelerator.unwrap_model(model))

        def _loss_with_cached_gradients(self, model, inputs, chunks, ranks):
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
            loss = self.objective(to_ranking_matrix(flat, ranks), ranks)
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

    return _RankingTrainer


def RankingTrainer(*args, **kwargs):  # noqa: N802 - builds the class on first use (cheap imports)
    """transformers.Trainer subclass with the K-wise `compute_loss` (see `_make_trainer_class`)."""
    return _make_trainer_class()(*args, **kwargs)


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
