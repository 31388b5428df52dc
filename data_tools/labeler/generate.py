"""`rlhf-stack label generate`: sample K responses per prompt into a candidates file.

Batched (`batch_size` prompts x K samples per `generate` call), with a progress bar, and
resumable: each finished batch is appended and fsynced, and a re-run skips ids already in the
output (a torn last line from a crash is cut off first). The sampling settings, including the
seed of the batch, are recorded on every item.

K samples of one prompt must be distinct and non-empty (the rankings format refuses duplicate
completions); prompts short of K are re-sampled up to `max_attempts` times, then kept with fewer
(at least 2) or left for the next run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from data_tools.labeler.candidates import MAX_K, MIN_K, item_id_for
from rlhf_stack.data import RowError, iter_jsonl, load_rows, prompt_messages
from rlhf_stack.errors import DataError, RlhfStackError


@dataclass(frozen=True)
class SamplingSettings:
    """How candidates are sampled (each item records these plus its batch seed)."""

    k: int = 4
    """Responses per prompt (InstructGPT ranked K = 4..9)."""
    max_new_tokens: int = 256
    """Longest response, in tokens."""
    temperature: float = 1.0
    """Softmax temperature; 1.0 samples the policy as trained, which is what the RM should see."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 = off)."""
    seed: int = 0
    """Base seed; batch b uses seed + b, so a batch is reproducible."""
    batch_size: int = 8
    """Prompts per `generate` call (each expanded to K sequences)."""
    max_attempts: int = 3
    """Re-sampling rounds for prompts whose samples were empty or duplicates."""

    def validate(self) -> None:
        if not MIN_K <= self.k <= MAX_K:
            raise RlhfStackError(f"-k {self.k}: the labeler ranks {MIN_K} to {MAX_K} responses per prompt")
        if self.temperature <= 0:
            raise RlhfStackError("--temperature must be > 0 (sampling; identical greedy samples cannot be ranked)")
        if not 0 < self.top_p <= 1 or self.top_k < 0 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise RlhfStackError("need 0 < top_p <= 1, top_k >= 0, batch_size >= 1, max_new_tokens >= 1")


def completed_ids(out: Path) -> set[str]:
    """Ids already in `out`; a torn final line (no newline: the writer died mid-line) is cut off."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with out.open("r+b") as fh:
            fh.truncate(keep)
    done = set()
    for lineno, obj in iter_jsonl(out):
        if isinstance(obj, RowError) or not isinstance(obj, dict) or "id" not in obj:
            raise DataError(f"{out}:{lineno}: not a candidates line ({obj}); move the file aside to start over")
        done.add(obj["id"])
    return done


def generate_candidates(model: str, prompts: str | Path, out: str | Path, settings: SamplingSettings,
                        progress: bool = True) -> dict:
    """Sample `settings.k` responses for every prompt not yet in `out`; return counts."""
    settings.validate()
    out = Path(out)
    rows = load_rows(prompts, "prompts")
    todo, seen = [], set()
    done = completed_ids(out)
    for row in rows:
        item_id = item_id_for(row["prompt"])
        if item_id not in seen and item_id not in done:
            todo.append((item_id, row["prompt"]))
        seen.add(item_id)
    summary = {"prompts": len(seen), "already_done": len(done & seen), "written": 0, "short": 0, "failed": 0}
    if not todo:
        return summary
    from tqdm.auto import tqdm

    from rlhf_stack.config import ModelConfig
    from rlhf_stack.modeling import load_causal_lm, load_tokenizer

    lm = load_causal_lm(ModelConfig(name_or_path=model, tuning="full")).eval()
    tokenizer = load_tokenizer(model, padding_side="left")  # left padding: every prompt ends where generation starts
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(seen), initial=summary["already_done"], desc="sampling", unit="prompt", disable=not progress)
    with out.open("a", encoding="utf-8") as fh:
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start:start + settings.batch_size]
            seed = settings.seed + start // settings.batch_size
            results = sample_distinct(lm, tokenizer, [p for _, p in batch], settings, seed)
            for (item_id, prompt), (completions, attempts) in zip(batch, results, strict=True):
                if len(completions) < MIN_K:
                    summary["failed"] += 1
                    continue
                summary["short"] += len(completions) < settings.k
                sampling = {**_recorded(settings), "seed": seed, "attempts": attempts}
                fh.write(json.dumps({"id": item_id, "prompt": prompt, "completions": completions,
                                     "sampling": sampling, "model": model}, ensure_ascii=False) + "\n")
                summary["written"] += 1
            fh.flush()
            os.fsync(fh.fileno())  # a finished batch survives a crash; the re-run starts after it
            bar.update(len(batch))
    bar.close()
    return summary


def _recorded(settings: SamplingSettings) -> dict:
    fields = asdict(settings)
    return {key: fields[key] for key in ("k", "max_new_tokens", "temperature", "top_p", "top_k")} | {"do_sample": True}


def sample_distinct(model, tokenizer, prompts: list, settings: SamplingSettings, seed: int) -> list[tuple[list[str], int]]:
    """Per prompt: (up to K distinct non-empty responses, sampling rounds used)."""
    collected: list[list[str]] = [[] for _ in prompts]
    attempts = [0] * len(prompts)
    for attempt in range(settings.max_attempts):
        short = [n for n, c in enumerate(collected) if len(c) < settings.k]
        if not short:
            break
        samples = sample(model, tokenizer, [prompts[n] for n in short], settings, seed + 100_003 * attempt)
        for n, texts in zip(short, samples, strict=True):
            attempts[n] = attempt + 1
            for text in texts:
                if text and text not in collected[n] and len(collected[n]) < settings.k:
                    collected[n].append(text)
    return list(zip(collected, attempts, strict=True))


def sample(model, tokenizer, prompts: list, settings: SamplingSettings, seed: int) -> list[list[str]]:
    """One `generate` call: K samples for each prompt (chat template applied), decoded and stripped."""
    import torch

    messages = [prompt_messages(p) for p in prompts]
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    # The template already holds any BOS/special tokens; adding them again would double them.
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**enc, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                                top_k=settings.top_k, max_new_tokens=settings.max_new_tokens,
                                num_return_sequences=settings.k, pad_token_id=tokenizer.pad_token_id)
    decoded = tokenizer.batch_decode(output[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [[d.strip() for d in decoded[n * settings.k:(n + 1) * settings.k]] for n in range(len(prompts))]
