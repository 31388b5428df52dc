"""The Trainer stages with their frozen weights packed (`train.pack_frozen_weights`) and without, side by side.

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/frozen_packing.py [--run-dir runs/quickstart]
        [--stages sft reward dpo] [--steps 8] [--repeats 3] [--json F]

Each stage's section as `make demo` and `recipes/compare.yaml` run it (the demo model, LoRA on the
top 4 of 30 blocks): SFT and the reward model from `recipes/quickstart.yaml`, DPO from
`recipes/compare.yaml`; `@sft` is the SFT checkpoint in `--run-dir` (`make demo`, or `rlhf-stack run
recipes/quickstart.yaml --only sft`). Each is trained `--steps` optimizer steps from the same start,
without held-out evaluation (so the figure is training alone), once with `pack_frozen_weights: true`
and once with false, in a fresh process each, the order alternating between repeats; the default
torch threads of this machine. The figures are the Trainer's `train_runtime` (medians over the
repeats), the training loss of each way (equal up to float rounding) and each process's peak RSS.
The last line is `speedup: sft N.NNx, reward N.NNx, dpo N.NNx` (unpacked time over packed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"sft": "recipes/quickstart.yaml", "reward": "recipes/quickstart.yaml", "dpo": "recipes/compare.yaml"}


def stage_config(stage: str, run_dir: Path, steps: int, pack: bool, out: Path) -> dict:
    """The recipe's section for `stage`, `@stage` references resolved into `run_dir`, trained for
    `steps` steps with no held-out evaluation and `pack_frozen_weights` set."""
    from rlhf_stack.pipeline.staleness import resolve_references

    section = yaml.safe_load((ROOT / RECIPE[stage]).read_text())[stage]
    section = resolve_references(section, {name: str(run_dir / name) for name in ("sft", "reward")})
    section["data"] = {**section["data"], "eval_path": None, "eval_fraction": 0.0}
    section["train"] = {**section["train"], "max_steps": steps, "pack_frozen_weights": pack,
                        "logging_steps": 1, "eval_every_steps": None, "early_stopping_patience": None}
    section.pop("normalize_with", None)  # the RM's bias pass after training: not what is measured
    section["output_dir"] = str(out)
    return section


def child(stage: str, config: str) -> None:
    """Train one stage in this process; print its figures as one JSON line."""
    import resource

    from rlhf_stack.config import load_config

    if stage == "sft":
        from rlhf_stack.sft import SFTConfig as Config
        from rlhf_stack.sft import train_sft as train
    elif stage == "reward":
        from rlhf_stack.reward.stage import RewardConfig as Config
        from rlhf_stack.reward.stage import train_reward as train
    else:
        from rlhf_stack.dpo.stage import DPOConfig as Config
        from rlhf_stack.dpo.stage import train_dpo as train
    metrics = train(load_config(Config, json.loads(config))).metrics
    print(json.dumps({"train_runtime_s": metrics["train_runtime_s"], "train_loss": metrics["train_loss"],
                      "steps": metrics["steps"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_once(stage: str, args, pack: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"packing-{stage}-") as tmp:
        config = stage_config(stage, args.run_dir.resolve(), args.steps, pack, Path(tmp) / stage)
        done = subprocess.run([sys.executable, __file__, "--child", stage, json.dumps(config)], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode:
            sys.exit(f"{stage} (pack_frozen_weights={pack}) failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "quickstart")
    parser.add_argument("--stages", nargs="+", choices=list(RECIPE), default=list(RECIPE))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if not (args.run_dir / "sft" / "stage.json").is_file():
        sys.exit(f"{args.run_dir / 'sft'} holds no finished SFT checkpoint: run "
                 f"`rlhf-stack run recipes/quickstart.yaml --only sft --run-dir {args.run_dir}` first")

    runs: dict[str, dict[str, list[dict]]] = {stage: {"packed": [], "plain": []} for stage in args.stages}
    for stage in args.stages:
        for repeat in range(args.repeats):
            order = (True, False) if repeat % 2 == 0 else (False, True)
            for pack in order:
                figures = run_once(stage, args, pack)
                runs[stage]["packed" if pack else "plain"].append(figures)
                print(f"{stage} repeat {repeat + 1} {'packed' if pack else 'plain '}: "
                      f"{figures['train_runtime_s']:.1f} s, loss {figures['train_loss']:.5f}, "
                      f"peak RSS {figures['peak_rss_mb']:,.0f} MB", flush=True)

    summary = {}
    for stage, by_way in runs.items():
        med = {way: {key: statistics.median(r[key] for r in rows) for key in ("train_runtime_s", "peak_rss_mb")}
               for way, rows in by_way.items()}
        summary[stage] = {**med, "speedup": med["plain"]["train_runtime_s"] / med["packed"]["train_runtime_s"],
                          "max_loss_diff": max(abs(a["train_loss"] - b["train_loss"])
                                               for a, b in zip(by_way["packed"], by_way["plain"], strict=True))}
        s = summary[stage]
        print(f"{stage}: {args.steps} steps in {med['packed']['train_runtime_s']:.1f} s packed vs "
              f"{med['plain']['train_runtime_s']:.1f} s plain (medians of {args.repeats}); peak RSS "
              f"{med['packed']['peak_rss_mb']:,.0f} vs {med['plain']['peak_rss_mb']:,.0f} MB; "
              f"largest train-loss difference {s['max_loss_diff']:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "runs": runs,
                                         "summary": summary}, indent=1))
    print("speedup: " + ", ".join(f"{stage} {s['speedup']:.2f}x" for stage, s in summary.items()))


if __name__ == "__main__":
    main()
