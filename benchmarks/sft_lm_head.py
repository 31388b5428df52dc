"""SFT with TRL's fused LM head on every position vs on the labelled positions only, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sft_lm_head.py [--rows 64] [--repeats 3]

The quickstart's SFT stage (recipes/quickstart.yaml: the demo model, LoRA on the top 4 blocks,
completion-only loss, its batch size, max_length and eval file) on its first `--rows` rows, built
by `sft.build_sft_trainer` as `make demo` builds it, trained from scratch `--repeats` times each
way, the two ways alternating:
- `every position`: TRL's default off Triton devices, the LM head over every position of the
  batch (prompt and padding included);
- `labelled only`: what the stage does (`sft._labelled_positions_only`), the LM head over the
  positions that carry a label, as TRL does on CUDA.
Reports the median seconds of the Trainer's loop (`train_runtime`: training steps and the eval
passes in between), the train and eval losses of each (equal up to float rounding), and last
`speedup: N.NNx` (every position / labelled only). Per-run seconds go to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.yaml"))
    parser.add_argument("--rows", type=int, default=64, help="training rows (batch 8: rows / 8 steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/sft_lm_head.json"))
    args = parser.parse_args()

    import torch
    import yaml

    from rlhf_stack import sft
    from rlhf_stack.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    section = yaml.safe_load(args.recipe.read_text())["sft"]
    section["data"]["max_rows"] = args.rows
    keep = sft._labelled_positions_only
    runs: dict[str, list[dict]] = {"every position": [], "labelled only": []}
    for _ in range(args.repeats):
        for mode in runs:
            sft._labelled_positions_only = keep if mode == "labelled only" else (lambda trainer_class: trainer_class)
            with tempfile.TemporaryDirectory() as out:
                cfg = load_config(sft.SFTConfig, {**section, "output_dir": out})
                trainer, _ = sft.build_sft_trainer(cfg)
                metrics = trainer.train().metrics
                losses = trainer.evaluate()
            runs[mode].append({"seconds": metrics["train_runtime"], "train_loss": metrics["train_loss"],
                               "eval_loss": losses["eval_loss"]})
            print(f"{mode}: {metrics['train_runtime']:.1f} s, train loss {metrics['train_loss']:.6f}, "
                  f"eval loss {losses['eval_loss']:.6f}", flush=True)
    sft._labelled_positions_only = keep
    every, labelled = (statistics.median(r["seconds"] for r in runs[m]) for m in runs)
    args.json.write_text(json.dumps({"rows": args.rows, "threads": torch.get_num_threads(), "runs": runs}, indent=1))
    print(f"{args.rows} rows, {torch.get_num_threads()} threads, {args.repeats} repeats: median every position "
          f"{every:.1f} s, labelled only {labelled:.1f} s")
    print(f"speedup: {every / labelled:.2f}x")


if __name__ == "__main__":
    main()
