"""Does `train_sft` add overhead over a plain TRL SFTTrainer? Same model, data, LoRA, steps.

    python benchmarks/sft_overhead.py [--model smollm2-135m-instruct|tests/fixtures/tiny-llama] [--steps 8]

Runs ours and plain TRL alternately (--repeats times each, so machine noise hits both alike),
and compares training throughput (samples/s inside trainer.train) by the median of each side.
Wall time including setup is printed too. The last line is `throughput ratio: N.NNx` (ours/TRL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def run_ours(args, data: Path, out: Path) -> tuple[float, float]:
    from rlhf_stack.config import load_config
    from rlhf_stack.sft import SFTConfig, train_sft

    cfg = load_config(SFTConfig, {
        "model": {"name_or_path": args.model, "tuning": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "data": {"path": str(data), "eval_fraction": 0.0}, "output_dir": str(out), "max_length": args.max_length,
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "logging_steps": 1000,
                  "warmup_ratio": 0.0, "learning_rate": 1e-4},
        "eval_before_training": False,
    })
    start = time.perf_counter()
    result = train_sft(cfg)
    return result.metrics["train_samples_per_s"], time.perf_counter() - start


def run_trl(args, data: Path, out: Path) -> tuple[float, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rlhf_stack.data import load_rows
    from rlhf_stack.modeling import resolve_model_path
    from rlhf_stack.sft import to_prompt_completion

    start = time.perf_counter()
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ds = Dataset.from_list([to_prompt_completion(r) for r in load_rows(data, "instructions")])
    trl_args = SFTConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                         max_length=args.max_length, logging_steps=1000, learning_rate=1e-4, report_to="none",
                         bf16=False, use_cpu=True, gradient_checkpointing=False, save_strategy="no",
                         lr_scheduler_type="cosine", warmup_steps=0.0)
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=trl_args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=peft_config)
    result = trainer.train()
    trainer.save_model(str(out))
    return result.metrics["train_samples_per_second"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT / "recipes/data/quickstart/sft_train.jsonl"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    data = Path(args.data)
    ours, trl, ours_wall, trl_wall = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, fn, rates, walls in (("ours", run_ours, ours, ours_wall), ("trl", run_trl, trl, trl_wall)):
                rate, wall = fn(args, data, Path(tmp) / f"{name}-{i}")
                rates.append(rate)
                walls.append(wall)
                print(f"run {i} {name:5s}: {rate:.3f} samples/s in train(), {wall:.1f}s wall incl. setup", flush=True)
    ratio = statistics.median(ours) / statistics.median(trl)
    print(f"model={args.model} steps={args.steps} batch={args.batch_size} max_length={args.max_length}")
    print(f"median samples/s: ours {statistics.median(ours):.3f}, TRL {statistics.median(trl):.3f}; "
          f"median wall: ours {statistics.median(ours_wall):.1f}s, TRL {statistics.median(trl_wall):.1f}s")
    print(f"throughput ratio: {ratio:.2f}x")


if __name__ == "__main__":
    main()
