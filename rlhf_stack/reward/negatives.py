"""Off-prompt negatives: answers written for other prompts, ranked below a prompt's own.

Labelers rank K samples of ONE prompt, so no training ranking ever holds an answer to a different
question, and nothing teaches the reward model that staying on topic matters. A policy optimised
against it can find that gap: the demo's PPO drifted to short, clean, off-topic answers ("A sacred
rabbit." to "Explain what sound is."), which its RM scored almost as well as on-topic ones
(benchmarks/RESULTS.md, fourteenth session).

`add_off_prompt_negatives(rows, n, seed)` gives every training ranking n completions taken from
rankings of other prompts, ranked below all of its own (tied among themselves, so they add no pair
between each other). The assumption, that an answer to another question is worse than any answer
to this one, is one a labeler would make; it is what lets it be added without a labeler.
Rankings of one completion set by several labelers get the same negatives, so `group_labelers`
still scores the set once. `off_prompt_accuracy` measures the blind spot on held-out rankings.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rlhf_stack.data import prompt_key
from rlhf_stack.reward.batching import completion_set_key, encode_conversation
from rlhf_stack.reward.scorer import score_sequences


def add_off_prompt_negatives(rows: Sequence[dict], n: int, seed: int) -> list[dict]:
    """Copies of `rows`, each with n completions of other prompts' rows appended at rank
    max(ranks) + 1. Drawn with a seeded generator per completion set (the same for every labeler's
    ranking of it), from the completions of rows whose prompt differs. n = 0: the rows unchanged."""
    if n <= 0:
        return list(rows)
    pool: dict[str, list[str]] = {}
    for row in rows:
        pool.setdefault(prompt_key(row["prompt"]), []).extend(row["completions"])
    if len(pool) < 2:
        raise ValueError("off-prompt negatives need rankings of at least 2 different prompts")
    keys = list(pool)
    drawn: dict[tuple, list[str]] = {}
    out = []
    for row in rows:
        set_key = completion_set_key(row)
        if set_key not in drawn:
            rng = random.Random(f"{seed}:{len(drawn)}")
            own = prompt_key(row["prompt"])
            others = [k for k in keys if k != own]
            drawn[set_key] = [rng.choice(pool[rng.choice(others)]) for _ in range(n)]
        worst = max(row["ranks"]) + 1
        out.append({**row, "completions": [*row["completions"], *drawn[set_key]],
                    "ranks": [*row["ranks"], *[worst] * n]})
    return out


def off_prompt_accuracy(model, tokenizer, rows: Sequence[dict], max_length: int, batch_size: int,
                        seed: int) -> float | None:
    """How often the reward model scores a held-out completion above an answer to another prompt:
    over every completion set of `rows`, each of its own completions against one negative drawn as
    in training. None when the rows hold fewer than 2 prompts."""
    sets = list({completion_set_key(row): row for row in rows}.values())
    if len({prompt_key(row["prompt"]) for row in sets}) < 2:
        return None
    seqs, groups = [], []
    for n, row in enumerate(add_off_prompt_negatives(sets, 1, seed)):
        for completion in row["completions"]:
            seqs.append(encode_conversation(tokenizer, row["prompt"], completion, max_length)[0])
            groups.append(n)  # a set's sequences share its prompt's pass
    device = next(model.parameters()).device
    scores = score_sequences(model, seqs, tokenizer.pad_token_id, batch_size, device, groups).tolist()
    wins = total = start = 0
    for row in sets:  # each set's own scores, then its negative's
        end = start + len(row["completions"])
        wins += sum(score > scores[end] for score in scores[start:end])
        total += end - start
        start = end + 1
    return wins / total
