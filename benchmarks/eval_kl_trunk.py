"""The evaluation's KL pass (the reference over a policy's samples) in full vs over the shared trunk, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_kl_trunk.py --run-dir runs/quickstart [--repeats 3]

Needs a finished quickstart run (its SFT and PPO checkpoints). As the evaluation does, the PPO
policy samples 2 responses to each held-out prompt (recording its log-probs and, here, the output of
the blocks it shares with the SFT reference), then the reference computes its log-probs of those
responses twice, alternating, `--repeats` times: the full pass (`response_logprobs`), and the top
blocks only, from the kept trunk output (`trunk_depth`, what `evaluate` now runs). Prints the shared
depth, the median seconds of each, the KL from each and the largest log-prob difference, and last
`speedup: N.NNx` (full / trunk). Per-run seconds go to `--json`.
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
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/eval_kl_trunk.json"))
    args = parser.parse_args()

    import torch
    import yaml

    from rlhf_stack.config import load_config
    from rlhf_stack.data import load_rows
    from rlhf_stack.evaluation.evaluate import EvalConfig
    from rlhf_stack.evaluation.models import LM
    from rlhf_stack.evaluation.stats import sequence_kl

    if args.threads:
        torch.set_num_threads(args.threads)
    section = yaml.safe_load(args.recipe.read_text())["evaluation"]
    cfg = load_config(EvalConfig, {**section, "policy": str(args.run_dir / "ppo"), "baseline": str(args.run_dir / "sft"),
                                   "reward_model": None})
    rows = load_rows(cfg.prompts, "prompts", max_rows=cfg.n_prompts, keep_lines=True)
    reference, policy = LM(str(args.run_dir / "sft")), LM(str(args.run_dir / "ppo"))
    depth = policy.shared_trunk_depth(reference)
    torch.manual_seed(cfg.seed)
    samples = policy.sample(rows, cfg, n=cfg.samples_per_prompt, max_prompt_length=cfg.max_prompt_length,
                            batch_size=cfg.generation_batch_size, source=cfg.prompts, record=True, trunk_depth=depth)
    times: dict[str, list[float]] = {"full": [], "trunk": []}
    logprobs = {}
    for _ in range(args.repeats):
        for mode in times:
            start = time.perf_counter()
            logprobs[mode] = reference.response_logprobs(samples, cfg.temperature, cfg.batch_size,
                                                         depth if mode == "trunk" else 0)
            times[mode].append(time.perf_counter() - start)
    full, trunk = (statistics.median(times[m]) for m in times)
    kl = {mode: sequence_kl(samples.logprobs, lp)["kl"] for mode, lp in logprobs.items()}
    diff = max(float((a - b).abs().max()) for a, b in zip(logprobs["full"], logprobs["trunk"], strict=True))
    args.json.write_text(json.dumps({"responses": len(samples.texts), "depth": depth, "blocks": len(policy.backbone.layers),
                                     "threads": torch.get_num_threads(), "seconds": times, "kl": kl,
                                     "max_logprob_diff": diff}, indent=1))
    print(f"{len(samples.texts)} responses, trunk {depth} of {len(policy.backbone.layers)} blocks, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats")
    print(f"median full pass {full:.2f} s, top blocks only {trunk:.2f} s; KL {kl['full']:.4f} vs {kl['trunk']:.4f}, "
          f"largest log-prob difference {diff:.1e}")
    print(f"speedup: {full / trunk:.2f}x")


if __name__ == "__main__":
    main()
