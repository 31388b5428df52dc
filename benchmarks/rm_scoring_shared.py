"""Reward-model scoring with and without each prompt's pass shared by its responses, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rm_scoring_shared.py --run-dir runs/quickstart [--repeats 3]

Needs a finished quickstart run (its reward model and its evaluation's samples.jsonl). Scores the
evaluation's samples (every prompt with its baseline, policy and best-of-n samples: 6 responses a
prompt) with `RewardScorer` as the evaluation does, once with `score_sequences` grouping the
responses by prompt (each chat-formatted prompt runs once) and once with every sequence whole,
alternating, `--repeats` times. Prints the median seconds of each, the largest score difference,
and last `speedup: N.NNx` (whole / shared); the per-run seconds go to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/rm_scoring_shared.json"))
    args = parser.parse_args()

    import torch

    from rlhf_stack.reward.scorer import RewardScorer

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in (args.run_dir / "eval" / "samples.jsonl").read_text().split("\n") if line.strip()]
    prompts, responses = [], []
    for row in rows:
        for side in ("baseline", "policy", "best_of_n"):
            if row.get(side) is not None:
                prompts.append(row["prompt"])
                responses.append(row[side])
    order = sorted(range(len(prompts)), key=lambda n: prompts[n])  # a prompt's responses need not be adjacent
    prompts, responses = [prompts[n] for n in order], [responses[n] for n in order]
    scorer = RewardScorer(args.run_dir / "reward", apply_bias=False)
    times: dict[str, list[float]] = {"shared": [], "whole": []}
    scores = {}
    for _ in range(args.repeats):
        for mode in ("shared", "whole"):
            scorer.shares_prompts = mode == "shared"
            start = time.perf_counter()
            scores[mode] = scorer.score_tensor(prompts, responses)
            times[mode].append(time.perf_counter() - start)
    shared, whole = (statistics.median(times[m]) for m in ("shared", "whole"))
    diff = float((scores["shared"] - scores["whole"]).abs().max())
    print(f"{len(responses)} responses to {len(set(prompts))} prompts, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats")
    print(f"shared prompt pass: {shared:.2f} s (runs {', '.join(f'{t:.2f}' for t in times['shared'])})")
    print(f"every sequence whole: {whole:.2f} s (runs {', '.join(f'{t:.2f}' for t in times['whole'])})")
    print(f"largest score difference: {diff:.2e}")
    args.json.write_text(json.dumps({"responses": len(responses), "prompts": len(set(prompts)),
                                     "threads": torch.get_num_threads(), "seconds": times,
                                     "medians": {"shared": shared, "whole": whole}, "max_score_diff": diff,
                                     "speedup": whole / shared}, indent=1))
    print(f"speedup: {whole / shared:.2f}x")


if __name__ == "__main__":
    main()
