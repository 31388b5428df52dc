"""PPO: ours vs TRL 1.12's PPOTrainer (`trl.experimental.ppo`, the last TRL release that had one).

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/ppo_vs_trl.py [--steps 5] [--rss-steps 2] [--skip-rss]

TRL 1.12 needs its own environment: the script creates `benchmarks/.venv-trl112` (gitignored) with
torch 2.13.0 (the CPU wheel from /opt/wheels when present, else the index) and trl==1.12.0
(+ the transformers/peft/accelerate versions pip picks for it), once. The TRL side (environment and
run) is `trl_ppo.py`, shared with `gpu_suite.py`.

1. speed: the same config-built Llama policy (4 layers, width 256, the demo model's tokenizer) and the same
   config-built reward model (a Llama sequence classifier, random head), full fine-tuning, CPU,
   16 prompts per step, 48 new tokens, 2 PPO epochs, 2 micro-batches of 8 per mini-batch of 16,
   value model initialised from the reward model in both. Figure: PPO steps/s of the fastest of
   steps 2..N (step 1 is warm-up; wall clock between step ends; the machine is shared, so the
   fastest step is the least disturbed one; medians are printed too).
2. peak_rss: LoRA (r=16, all linear layers) on the demo model SmolLM2-135M-Instruct when
   `rlhf_stack.provision` can provide it (else the config-built model; printed), same settings,
   reward model = a LoRA sequence-classification adapter over the same base (value init from it).
   Figure: peak RSS (ru_maxrss) of each run's process. Gradient checkpointing (TRL's PPO default)
   is on in both memory runs and off in both speed runs.

The last two lines printed are `speed: N.NNx` (our steps/s over TRL's) and `peak_rss: N.NNx`
(our peak RSS over TRL's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trl_ppo  # benchmarks/, this script's directory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"
TRL_VENV = ROOT / "benchmarks" / ".venv-trl112"
OUT = ROOT / "benchmarks" / "out" / "ppo_vs_trl"
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
PROMPTS = [f"{verb} {topic} in one sentence." for verb in ("Explain", "Describe", "Praise", "Summarise")
           for topic in ("the sky", "bread", "cats", "the moon", "water", "python", "plants", "dogs")]


# ---- models both sides load -----------------------------------------------------------------------


def build_config_models(out: Path) -> dict:
    """A config-built Llama policy and a config-built Llama reward model (random, seeded), saved.

    The tokenizer (and so the vocabulary, 49,152 tokens) is the demo model's when it resolves: a
    real chat tokenizer makes the LM head and the softmax over the vocabulary cost what they cost
    in practice. Else the 586-token test tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_stack.errors import ModelNotFoundError
    from rlhf_stack.modeling import load_tokenizer, resolve_model_path

    try:
        source, vocab_name = resolve_model_path("smollm2-135m-instruct"), "SmolLM2 tokenizer (49,152 tokens)"
    except ModelNotFoundError:
        source, vocab_name = str(TINY), "test tokenizer (586 tokens)"
    tokenizer = load_tokenizer(source)
    config = AutoConfig.from_pretrained(source, num_hidden_layers=4, hidden_size=256, intermediate_size=688,
                                        num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                                        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out / "policy")
    torch.manual_seed(1)
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out / "rm")
    for name in ("policy", "rm"):
        tokenizer.save_pretrained(out / name)
    return {"policy": str(out / "policy"), "rm": str(out / "rm"), "tokenizer": str(out / "policy"),
            "model": f"config-built Llama 4 layers x 256 (random init), {vocab_name}", "lora": False}


def build_demo_models(out: Path) -> dict | None:
    """The demo model as policy; its LoRA sequence-classification adapter (random head) as the RM."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from rlhf_stack.errors import ModelNotFoundError
    from rlhf_stack.modeling import load_tokenizer, resolve_model_path

    try:
        base = resolve_model_path("smollm2-135m-instruct")
    except ModelNotFoundError as exc:
        print(f"[bench] demo model unavailable ({exc}); peak_rss uses the config-built model")
        return None
    tokenizer = load_tokenizer(base)
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm = get_peft_model(rm, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS"))
    rm.save_pretrained(out / "rm_lora")
    tokenizer.save_pretrained(out / "rm_lora")
    return {"policy": base, "rm": str(out / "rm_lora"), "tokenizer": base, "lora": True,
            "model": "SmolLM2-135M-Instruct + LoRA r=16 (reward model: LoRA adapter over the same base)"}


# ---- workers (each in its own process: peak RSS is per process) -----------------------------------


def run_ours(spec: dict) -> dict:
    from rlhf_stack.config import load_config
    from rlhf_stack.ppo import PPOConfig, train_ppo

    work = Path(tempfile.mkdtemp(prefix="ours_ppo_"))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in spec["prompts"]))
    cfg = load_config(PPOConfig, {
        "policy": {"name_or_path": spec["policy"], "tuning": "lora" if spec["lora"] else "full",
                   "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                   "gradient_checkpointing": spec["gradient_checkpointing"]},
        "prompts": {"path": str(work / "prompts.jsonl"), "eval_fraction": 0.0},
        "rewards": [{"kind": "reward_model", "path": spec["rm"]}], "value_init": spec["rm"],
        "steps": spec["steps"], "batch_size": spec["batch"], "mini_batch_size": spec["mini"],
        "grad_accum_steps": spec["mini"] // spec["micro"], "ppo_epochs": spec["epochs"],
        "max_new_tokens": spec["new_tokens"], "temperature": 1.0, "kl_coef": 0.05, "learning_rate": spec["lr"],
        "output_dir": str(work / "out"), "save_every_steps": None, "progress_bar": False, "eval_max_prompts": 0,
        "seed": spec["seed"],
    })
    result = train_ppo(cfg)
    log = [json.loads(line) for line in (work / "out" / "logs" / "ppo_log.jsonl").read_text().splitlines()]
    return {"step_ends": [r["elapsed_s"] for r in log], "models": result.metrics["models"],
            "response_length": sum(r["response_length"] for r in log) / len(log)}


def worker_main(kind: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    result = (trl_ppo.run_trl if kind == "trl" else run_ours)(spec)
    result["total_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def launch(python: str, kind: str, spec: dict, tag: str) -> dict:
    spec_path = OUT / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    print(f"[bench] {tag}: {kind} ...", flush=True)
    proc = subprocess.run([python, __file__, "--worker", kind, "--spec", str(spec_path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    ends = result["step_ends"]
    # The fastest step after the first (timeit's convention): the machine is shared, and other
    # jobs only ever make a step slower. The median is printed too.
    times = sorted(b - a for a, b in zip(ends, ends[1:], strict=False))
    result["steps_per_s"] = 1 / times[0] if times else float("nan")
    result["median_steps_per_s"] = 1 / times[len(times) // 2] if times else float("nan")
    steps = ", ".join(f"{b - a:.2f}" for a, b in zip(ends, ends[1:], strict=False))
    print(f"[bench] {tag}: {kind}: {result['steps_per_s']:.3f} steps/s (step times after the first: {steps} s; "
          f"whole run {result['total_s']:.1f} s), peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="PPO steps in the speed runs (rate over steps 2..N)")
    p.add_argument("--rss-steps", type=int, default=2, help="PPO steps in the peak-RSS runs")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--worker", choices=["trl", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.spec)

    OUT.mkdir(parents=True, exist_ok=True)
    trl_python = str(trl_ppo.ensure_trl_venv(TRL_VENV, TORCH_WHEEL))
    # One optimizer update per step: a mini-batch of all 16 rollouts in 2 micro-batches of 8.
    base = {"prompts": PROMPTS, "batch": 16, "mini": 16, "micro": 8, "new_tokens": 48, "epochs": 2, "lr": 1e-5,
            "seed": 0, "device": "cpu", "dtype": "float32", "threads": None, "float32_matmul_precision": "highest"}
    speed_models = build_config_models(OUT)
    # TRL's PPOConfig turns gradient checkpointing on by default; each comparison sets it the same
    # on both sides: off for speed, on for memory (the setting a memory-bound user picks).
    speed_spec = {**base, **speed_models, "steps": args.steps, "gradient_checkpointing": False}
    trl_speed = launch(trl_python, "trl", speed_spec, "speed")
    ours_speed = launch(sys.executable, "ours", speed_spec, "speed")
    speed = ours_speed["steps_per_s"] / trl_speed["steps_per_s"]
    figures = {"speed": {"model": speed_models["model"], "trl_steps_per_s": trl_speed["steps_per_s"],
                         "ours_steps_per_s": ours_speed["steps_per_s"], "ratio": speed,
                         "trl_median_steps_per_s": trl_speed["median_steps_per_s"],
                         "ours_median_steps_per_s": ours_speed["median_steps_per_s"],
                         "ours_models": ours_speed["models"]}}
    rss = float("nan")
    if not args.skip_rss:
        rss_models = build_demo_models(OUT) or {**speed_models, "lora": True}
        rss_spec = {**base, **rss_models, "steps": args.rss_steps, "lr": 1e-4, "gradient_checkpointing": True}
        trl_rss = launch(trl_python, "trl", rss_spec, "rss")
        ours_rss = launch(sys.executable, "ours", rss_spec, "rss")
        rss = ours_rss["peak_rss_mb"] / trl_rss["peak_rss_mb"]
        figures["peak_rss"] = {"model": rss_models["model"], "trl_mb": trl_rss["peak_rss_mb"],
                               "ours_mb": ours_rss["peak_rss_mb"], "ratio": rss, "ours_models": ours_rss["models"],
                               "trl_steps_per_s": trl_rss["steps_per_s"], "ours_steps_per_s": ours_rss["steps_per_s"]}
    (OUT / "results.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    print(f"speed: {speed:.2f}x")
    print(f"peak_rss: {rss:.2f}x")


if __name__ == "__main__":
    main()
