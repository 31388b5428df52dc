"""Replaying our DPO run's batches in TRL's `DPOTrainer` (`benchmarks/dpo_vs_trl.py --trl-batches same`).

Our stage trains on batches of whole rankings; TRL on batches of pairs. To give both the same
preferences in the same optimizer steps, `recorded_batches` records which rankings each of our
batches held (by token sequences and ranks, from the stage's own collator, whose code is unchanged),
`pair_batches` turns them into indices of those rankings' strictly ordered pairs in
`reward_vs_trl.to_pairs(rows)`, and `replaying_trainer` is a `DPOTrainer` whose training DataLoader
yields exactly those index lists and records the batch sizes it delivered, for the benchmark to check.
"""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

from reward_vs_trl import to_pairs


def ranking_key(item: dict) -> tuple:
    """What identifies an encoded ranking: its token sequences and ranks."""
    return tuple(map(tuple, item["input_ids"])), tuple(item["ranks"])


@contextmanager
def recorded_batches():
    """Yield a list that gets, per batch our DPO stage's collator builds, the `ranking_key`s of its
    rankings (instrumentation of the benchmark: the stage's code is unchanged)."""
    from rlhf_stack.dpo import stage
    from rlhf_stack.dpo.batching import PreferenceCollator

    batches: list[list[tuple]] = []

    class Recording(PreferenceCollator):
        def __call__(self, items):
            batches.append([ranking_key(item) for item in items])
            return super().__call__(items)

    with mock.patch.object(stage, "PreferenceCollator", Recording):
        yield batches


def pair_batches(rows: list[dict], batches: list[list[tuple]], tokenizer, max_length: int) -> list[list[int]]:
    """Our recorded batches of rankings -> lists of indices into `to_pairs(rows)`: each ranking's
    strictly ordered pairs, in the order `to_pairs` lists them."""
    from rlhf_stack.dpo.batching import encode_preferences

    items, _ = encode_preferences(rows, tokenizer, max_length)
    where: dict[tuple, list[int]] = {}
    for index, item in enumerate(items):
        where.setdefault(ranking_key(item), []).append(index)
    counts = [item["n_pairs"] for item in items]  # one item per row, in order
    assert sum(counts) == len(to_pairs(rows)), "pair counts disagree with to_pairs"
    starts = [sum(counts[:i]) for i in range(len(rows))]
    seen: dict[tuple, int] = {}
    out = []
    for batch in batches:
        indices = []
        for key in batch:  # rankings with equal keys are interchangeable: they give the same pairs
            if key not in where:
                raise SystemExit("[bench] our run trained on a ranking the benchmark did not give it")
            indices.append(where[key][seen.get(key, 0) % len(where[key])])
            seen[key] = seen.get(key, 0) + 1
        out.append([starts[i] + j for i in indices for j in range(counts[i])])
    return out


def replaying_trainer(batches: list[list[int]]):
    """DPOTrainer whose training DataLoader yields the given batches of dataset indices, in order."""
    from torch.utils.data import DataLoader
    from trl import DPOTrainer

    class Replaying(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.batch_sizes: list[int] = []  # what the DataLoader really delivered, step by step

        def get_train_dataloader(self):
            dataset = self._remove_unused_columns(self.train_dataset, description="Training")

            def collate(features):
                self.batch_sizes.append(len(features))
                return self.data_collator(features)

            return self.accelerator.prepare(DataLoader(dataset, batch_sampler=batches, collate_fn=collate))

    return Replaying
