"""Does stage 3 learn a reward it has never seen? PPO on the demo model + LoRA against Python rewards.

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/unseen_reward.py [--sft runs/quickstart/sft]
        [--estimators gae rloo] [--rewards long_words] [--steps 25]

The rewards below are defined here, in this script, and nowhere in the package: the code has never
seen them. Each is passed from Python (`train_ppo(cfg, reward_fns=[f])`), the only reward, to a
policy started from the quickstart's SFT checkpoint (LoRA on the same top 4 blocks as the quickstart),
8 rollouts a step (rloo/grpo/reinforce_baseline: 4 prompts x 2 samples), 40 new tokens, the
quickstart's training prompts. Every other setting is the estimator's default (the learning rate:
PPOConfig's default for an adapter, 5e-4; `--learning-rate` overrides it), except
`missing_eos_penalty` (0: the reward is the function alone).

Prints per estimator and reward the curve (mean reward per step, KL) and the rise: the mean of the
last 5 steps minus the mean of the first 5, with its standard error from the per-step means.
Writes everything to benchmarks/unseen_reward.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORD = re.compile(r"[A-Za-z']+")


def long_words(prompts, responses) -> list[float]:
    """Share of a response's words with 7 or more letters (0 for an empty response)."""
    out = []
    for response in responses:
        words = WORD.findall(response)
        out.append(sum(len(w) >= 7 for w in words) / len(words) if words else 0.0)
    return out


def exclaims(prompts, responses) -> list[float]:
    """Exclamation marks in the response, at most 3, divided by 3."""
    return [min(response.count("!"), 3) / 3 for response in responses]


def brevity(prompts, responses) -> list[float]:
    """1 - words / 30 (0 from 30 words on): shorter answers score higher."""
    return [1 - min(len(WORD.findall(response)), 30) / 30 for response in responses]


def commas(prompts, responses) -> list[float]:
    """Commas in the response, at most 3, divided by 3."""
    return [min(response.count(","), 3) / 3 for response in responses]


REWARDS = {"long_words": long_words, "exclaims": exclaims, "brevity": brevity, "commas": commas}


def run(sft: Path, estimator: str, reward: str, steps: int, learning_rate: float | None, out_dir: Path) -> list[dict]:
    from rlhf_stack.config import validate
    from rlhf_stack.ppo.config import PPOConfig
    from rlhf_stack.ppo.trainer import train_ppo

    critic_free = estimator != "gae"
    cfg = validate(PPOConfig, {
        "policy": {"name_or_path": str(sft), "tuning": "lora"},
        "prompts": {"path": "recipes/data/quickstart/prompts_train.jsonl", "eval_fraction": 0.0},
        "advantage_estimator": estimator, "samples_per_prompt": 2 if critic_free else 1,
        "steps": steps, "batch_size": 8, "max_new_tokens": 40, "learning_rate": learning_rate,  # None: the default
        "output_dir": str(out_dir), "save_every_steps": None, "eval_max_prompts": 0, "progress_bar": False,
        "resume": False, "sample_every_steps": steps,
    })
    train_ppo(cfg, reward_fns=[REWARDS[reward]])
    return [json.loads(line) for line in (out_dir / "logs" / "ppo_log.jsonl").read_text().splitlines()]


def rise(curve: list[float], window: int = 5) -> tuple[float, float]:
    """(last-window mean - first-window mean, its standard error from the per-step means)."""
    first, last = curve[:window], curve[-window:]
    se = math.sqrt(statistics.variance(first) / len(first) + statistics.variance(last) / len(last))
    return statistics.mean(last) - statistics.mean(first), se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", type=Path, default=Path("runs/quickstart/sft"))
    parser.add_argument("--estimators", nargs="+", default=["gae", "rloo"])
    parser.add_argument("--rewards", nargs="+", default=["long_words"], choices=sorted(REWARDS))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: PPOConfig's (5e-4 for LoRA)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/unseen_reward.json"))
    args = parser.parse_args()
    if not (args.sft / "config.json").is_file() and not (args.sft / "adapter_config.json").is_file():
        raise SystemExit(f"{args.sft}: no model or SFT checkpoint there (run `rlhf-stack run "
                         "recipes/quickstart.yaml --only sft` first)")
    results = []
    for reward in args.rewards:
        for estimator in args.estimators:
            start = time.monotonic()
            with tempfile.TemporaryDirectory() as tmp:
                log = run(args.sft, estimator, reward, args.steps, args.learning_rate, Path(tmp) / "ppo")
            curve = [r["score"] for r in log]
            gain, se = rise(curve)
            results.append({"reward": reward, "estimator": estimator, "learning_rate": log[0]["lr"],
                            "score": curve, "kl": [r.get("kl") for r in log], "rise": gain, "rise_se": se,
                            "seconds": round(time.monotonic() - start, 1)})
            print(f"{reward} / {estimator}: score " + " ".join(f"{v:.3f}" for v in curve), flush=True)
            print("  KL " + " ".join(f"{v:.2f}" for v in results[-1]["kl"]), flush=True)
            print(f"  rise (last 5 - first 5 steps): {gain:+.3f} +- {se:.3f} (SE), "
                  f"{results[-1]['seconds']:.0f} s", flush=True)
    args.out.write_text(json.dumps({"steps": args.steps, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
