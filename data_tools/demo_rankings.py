"""The demo's rankings files: K completions per prompt sampled from the demo model, each prompt
ranked by two simulated labelers (`python -m data_tools.demo` writes them; see `data_tools.demo`).

A simulated labeler scores a completion as gold + a personal length bias + Gaussian noise of a
personal scale, and ranks the K completions densely (scores within `TIE_EPSILON` tie). The noise
is tuned so that two labelers agree on ~70-80% of the pairs they both rank strictly (InstructGPT
reports 72.6% inter-labeler agreement): `labeler_agreement(rows)`
(`rlhf_stack.metrics.agreement.annotator_agreement`) is that noise ceiling, which a reward model's
eval accuracy is compared against; `gold_accuracy(rows)` is how often the hidden gold judge sides
with the labelers.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data_tools.demo_judge import gold_prefers, gold_score
from rlhf_stack.data import preferred_pairs, prompt_messages
from rlhf_stack.metrics.agreement import annotator_agreement as labeler_agreement

__all__ = ["K", "TEMPERATURES", "MAX_NEW_TOKENS", "Labeler", "LABELERS", "LABELERS_PER_PROMPT", "TIE_EPSILON",
           "dense_ranks", "labeler_scores", "rank_with_labelers", "labeler_agreement", "gold_accuracy",
           "sample_completions", "sampling_run"]

K = 4
TEMPERATURES = (0.7, 0.9, 1.05, 1.2)  # one per completion slot: varied quality within a prompt
MAX_NEW_TOKENS = 48


# ---- simulated labelers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Labeler:
    name: str
    noise: float  # std of the Gaussian noise added to the gold score
    length_bias: float  # added per 30 words of a completion (>0 likes long answers)


# Noise scales tuned on the sampled completions so that two labelers agree on ~74% of the pairs
# both rank strictly (x0.5: 78%, x1.0: 68%; InstructGPT's labelers: 72.6%).
LABELERS: tuple[Labeler, ...] = (
    Labeler("labeler-1", 0.3, 0.0),
    Labeler("labeler-2", 0.4, 0.05),
    Labeler("labeler-3", 0.4, -0.05),
    Labeler("labeler-4", 0.5, 0.0),
    Labeler("labeler-5", 0.55, 0.1),
    Labeler("labeler-6", 0.65, -0.1),
)
LABELERS_PER_PROMPT = 2
TIE_EPSILON = 0.03  # noisy scores closer than this share a rank


def dense_ranks(scores: list[float], epsilon: float = TIE_EPSILON) -> list[int]:
    """Dense ranks, 1 = highest score; a score within `epsilon` of the one above ties with it."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    rank = 1
    for pos, i in enumerate(order):
        if pos and scores[order[pos - 1]] - scores[i] >= epsilon:
            rank += 1
        ranks[i] = rank
    return ranks


def labeler_scores(labeler: Labeler, prompt: str, completions: list[str], rng: random.Random) -> list[float]:
    return [gold_score(prompt, c) + labeler.length_bias * len(c.split()) / 30 + rng.gauss(0.0, labeler.noise)
            for c in completions]


def rank_with_labelers(split: str, prompts: list[str], completions: list[list[str]], seed: int) -> list[dict]:
    """Two rankings rows (two labelers) per prompt; deterministic in (seed, split, position)."""
    rows = []
    for n, (prompt, group) in enumerate(zip(prompts, completions, strict=True)):
        pick = random.Random(f"{seed}:{split}:{n}:labelers")
        for labeler in pick.sample(LABELERS, LABELERS_PER_PROMPT):
            rng = random.Random(f"{seed}:{split}:{n}:{labeler.name}")
            rows.append({"prompt": prompt, "completions": group,
                         "ranks": dense_ranks(labeler_scores(labeler, prompt, group, rng)),
                         "annotator": labeler.name, "id": f"{split}-{n:04d}/{labeler.name}"})
    return rows


def _field(row, name):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def gold_accuracy(rankings_rows) -> float:
    """Share of strictly ranked pairs on which the gold judge sides with the annotator (ties 0.5)."""
    hits = total = 0.0
    for row in rankings_rows:
        prompt, completions, ranks = _field(row, "prompt"), _field(row, "completions"), _field(row, "ranks")
        text_prompt = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        for i, j in preferred_pairs(ranks):
            total += 1
            hits += gold_prefers(text_prompt, completions[i], completions[j])
    return hits / total if total else float("nan")


# ---- sampling from the demo model ---------------------------------------------------------------


def sample_completions(prompts: list[str], model_dir: str, seed: int, batch_size: int = 32) -> list[list[str]]:
    """K completions per prompt, slot k at TEMPERATURES[k]; duplicates and blanks are resampled."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: list[list[str | None]] = [[None] * K for _ in prompts]
    for attempt in range(6):
        batches = []
        for k in range(K):  # one temperature per batch; similar lengths together (less padding)
            todo = sorted((p for p in range(len(prompts)) if _needs_sample(out[p], k)), key=lambda p: len(prompts[p]))
            batches += [(k, todo[i:i + batch_size]) for i in range(0, len(todo), batch_size)]
        for n, (k, batch) in enumerate(batches):
            temperature = TEMPERATURES[k] if attempt == 0 else 1.2 + 0.1 * attempt
            torch.manual_seed(seed * 1000 + attempt * 100 + n)
            for p, text in zip(batch, _generate(model, tokenizer, [prompts[p] for p in batch], temperature), strict=True):
                out[p][k] = text
            print(f"  attempt {attempt}: batch {n + 1}/{len(batches)}", file=sys.stderr, flush=True)
        if not batches:
            break
    return [[c or "" for c in group] for group in out]


def _needs_sample(group: list[str | None], k: int) -> bool:
    text = group[k]
    return not text or not text.strip() or text in group[:k]


def _generate(model, tokenizer, prompts: list[str], temperature: float) -> list[str]:
    import torch

    chats = [tokenizer.apply_chat_template(prompt_messages(p), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, do_sample=True, temperature=temperature, top_p=0.95, top_k=0,
                             max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


# ---- the rankings files -------------------------------------------------------------------------


def sampling_run(splits: dict[str, list[dict]], out: Path, args) -> tuple[dict[str, list[dict]], float | None]:
    """Rankings rows per split: sample K completions per prompt (or reuse OUT's), then label them."""
    names = ("rankings_train", "rankings_eval")
    prompts = {name: [row["prompt"] for row in splits[f"{name}_prompts"]] for name in names}
    wall_s = None
    if args.reuse_samples:
        completions = {name: _reused(out / f"{name}.jsonl", prompts[name]) for name in names}
    else:
        from rlhf_stack.provision import provision_demo_model

        model_dir = args.model or str(provision_demo_model())
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        everything = prompts["rankings_train"] + prompts["rankings_eval"]
        start = time.perf_counter()
        sampled = sample_completions(everything, model_dir, args.seed)
        wall_s = time.perf_counter() - start
        n_train = len(prompts["rankings_train"])
        completions = {"rankings_train": sampled[:n_train], "rankings_eval": sampled[n_train:]}
    return {name: rank_with_labelers(name.split("_")[1], prompts[name], completions[name], args.seed)
            for name in names}, wall_s


def _reused(path: Path, prompts: list[str]) -> list[list[str]]:
    from rlhf_stack.data import load_rows
    from rlhf_stack.errors import DataError

    found = {row["prompt"]: row["completions"] for row in load_rows(path, "rankings")}
    missing = [p for p in prompts if p not in found]
    if missing:
        raise DataError(f"{path}: no completions for {len(missing)} prompts (e.g. {missing[0]!r}); sample anew")
    return [found[p] for p in prompts]
