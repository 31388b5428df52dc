"""What stage 3 reads, and in which order: prompts, held-out prompts, and PPO-ptx corpus batches.

Data positions are a pure function of the step (`IndexStream`), so resuming needs no sampler
state: step k of process r always takes the same prompts and the same corpus rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_stack.errors import DataError
from rlhf_stack.reward.batching import pad_right


class IndexStream:
    """An endless stream of item indices: each epoch a fresh permutation seeded by (seed, epoch).

    `take(start, count)` returns positions start..start+count-1 of the stream, so the data a step
    uses is a function of the step alone and resuming needs no sampler state.
    """

    def __init__(self, n_items: int, seed: int) -> None:
        if n_items < 1:
            raise ValueError("IndexStream needs at least one item")
        self.n_items, self.seed = n_items, seed
        self._cache: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cache = {e: order for e, order in self._cache.items() if e >= epoch - 1}  # bounded
            self._cache[epoch] = torch.randperm(self.n_items, generator=generator).tolist()
        return self._cache[epoch]

    def take(self, start: int, count: int) -> list[int]:
        return [self._epoch(i // self.n_items)[i % self.n_items] for i in range(start, start + count)]


def step_prompt_indices(stream: IndexStream, step: int, world: int, rank: int, prompts_per_step: int,
                        samples_per_prompt: int) -> list[int]:
    """The prompt index of each rollout of `step` (1-based) on process `rank` of `world`.

    Process r of step s takes the next prompts_per_step positions of the stream, and each prompt
    is repeated samples_per_prompt times in a row: rollouts g*k .. g*k + k - 1 share prompt g (the
    group the critic-free estimators compare). A function of the step alone, so resume needs no state.
    """
    prompts = stream.take(((step - 1) * world + rank) * prompts_per_step, prompts_per_step)
    return [i for i in prompts for _ in range(samples_per_prompt)]


@dataclass
class PPOData:
    prompts: list[dict]  # training prompt rows
    prompt_ids: list[list[int]]  # their chat-formatted token ids
    prompt_stream: IndexStream  # order of the training prompts, a function of the step
    eval_rows: list[dict]  # held-out prompt rows
    ptx: PtxBatches | None


class PtxBatches:
    """Corpus batches for PPO-ptx; batch k of process r is a function of (step, micro-batch, r).

    With a frozen trunk (`trunk.py`), each corpus row's trunk output is computed the first time the
    row is drawn and kept (the corpus and the trunk never change), when the whole corpus fits in
    `cache_bytes` (the quickstart's: 257 rows x <= 64 tokens x 576 floats, ~38 MB); the ptx pass
    then runs only the blocks above the trunk. A larger corpus runs the full model every time.
    `prefetch` computes a whole step's new rows in one pass before its updates (the trainer runs
    it through the sampling's packed weights); `batch` computes any still missing.
    """

    def __init__(self, token_ids: list[list[int]], batch_size: int, micro_per_step: int, pad_id: int,
                 seed: int, cache_bytes: int = 1 << 30) -> None:
        self.token_ids, self.batch_size, self.micro_per_step, self.pad_id = token_ids, batch_size, micro_per_step, pad_id
        self.stream = IndexStream(len(token_ids), seed + 1)
        self.cache_bytes = cache_bytes
        self._hidden: dict[int, torch.Tensor] | None = {}  # row -> (len, H) trunk output; None: too big

    def _rows(self, step: int, micro_index: int, acc) -> list[int]:
        k = ((step - 1) * self.micro_per_step + micro_index) * acc.num_processes + acc.process_index
        return self.stream.take(k * self.batch_size, self.batch_size)

    def batch(self, step: int, micro_index: int, acc, trunk=None) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask, labels, hidden): the first three `(batch_size, T)`, right-padded,
        labels -100 on padding; hidden `(batch_size, T, H)` the trunk's output (0 on padding) when
        `trunk` (a `Trunk`) is given and the corpus fits the cache, else None."""
        rows = self._rows(step, micro_index, acc)
        ids, mask = pad_right([self.token_ids[i] for i in rows], self.pad_id, acc.device)
        labels = ids.masked_fill(mask == 0, -100)
        if trunk is None or self._hidden is None:
            return ids, mask, labels, None
        self._fill(rows, trunk, acc.device)
        if self._hidden is None:
            return ids, mask, labels, None
        out = torch.zeros((*ids.shape, self._hidden[rows[0]].shape[-1]), dtype=self._hidden[rows[0]].dtype,
                          device=ids.device)
        for n, row in enumerate(rows):
            out[n, :len(self.token_ids[row])] = self._hidden[row]
        return ids, mask, labels, out

    def prefetch(self, step: int, acc, trunk) -> None:
        """Compute the trunk's output of every corpus row `step` will draw and lacks, in one pass (the
        caller may run it through packed weights: `ppo.packed`), so the step's batches find them kept."""
        if self._hidden is not None:
            self._fill([row for micro in range(self.micro_per_step) for row in self._rows(step, micro, acc)],
                       trunk, acc.device)

    def _fill(self, rows: list[int], trunk, device) -> None:
        """Keep the trunk's output of those of `rows` not kept yet; drop the cache (None) when the
        whole corpus would not fit `cache_bytes`."""
        missing = sorted({row for row in rows if row not in self._hidden})
        if not missing:
            return
        # Right padding and causal attention: a row's outputs do not depend on the other rows.
        ids, mask = pad_right([self.token_ids[row] for row in missing], self.pad_id, device)
        fresh = trunk.hidden(ids, mask)
        whole_corpus = sum(map(len, self.token_ids)) * fresh.shape[-1] * fresh.element_size()
        if whole_corpus > self.cache_bytes:
            self._hidden = None  # the full model serves every ptx pass from now on
            return
        for j, row in enumerate(missing):
            self._hidden[row] = fresh[j, :len(self.token_ids[row])].clone()


def load_data(cfg, tokenizer) -> PPOData:
    from rlhf_stack.data import load_rows, split_train_eval
    from rlhf_stack.ppo.rollout import encode_prompts

    p = cfg.prompts
    rows = load_rows(p.path, "prompts", columns=p.columns, split=p.split, max_rows=p.max_rows, keep_lines=True)
    if p.eval_path:
        train_rows, eval_rows = rows, load_rows(p.eval_path, "prompts", keep_lines=True)
    else:
        train_rows, eval_rows = split_train_eval(rows, p.eval_fraction, seed=cfg.seed)
    if len(train_rows) < cfg.prompts_per_step:
        raise DataError(f"{p.path}: {len(train_rows)} training prompts, fewer than the {cfg.prompts_per_step} "
                        "a step takes (batch_size / samples_per_prompt)")
    prompt_ids = encode_prompts(train_rows, tokenizer, cfg.max_prompt_length, p.path)
    ptx = None
    if cfg.ptx_coef > 0:
        d = cfg.ptx_data
        texts = [r["text"] for r in load_rows(d.path, "corpus", columns=d.columns, split=d.split, max_rows=d.max_rows)]
        # Each text ends with EOS so the LM loss also keeps the policy's habit of stopping.
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:cfg.ptx_max_length - 1] + [tokenizer.eos_token_id]
               for t in texts]
        micro_per_step = cfg.ppo_epochs * cfg.batch_size // cfg.micro_batch_size
        ptx = PtxBatches(ids, cfg.micro_batch_size, micro_per_step, tokenizer.pad_token_id, cfg.seed)
    return PPOData(train_rows, prompt_ids, IndexStream(len(train_rows), cfg.seed), eval_rows, ptx)
