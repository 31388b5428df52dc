"""GPU suite: SFT, reward model and PPO through our stage functions on Qwen2.5-0.5B- and
1.5B-shaped models, and PPO against TRL 1.12's PPOTrainer; one command, no network.

    python benchmarks/gpu_suite.py                     # one H100/H200, bf16; sized for 8 minutes
    python benchmarks/gpu_suite.py --smoke --skip-trl  # the same code path on CPU: tiny shape, float32

Set-up (benchmarks/RESULTS.md "GPU suite" says how to bring the wheels for a machine without network):
per shape, a Qwen2Config with the published sizes, random init, saved once; the test tokenizer
(tests/fixtures/tiny-llama) padded to the model's vocabulary (`padded_tokenizer` says why); data
files generated so that every example of a stage has the same number of tokens. Then, in this
process: 1. `train_sft` (full fine-tuning); 2. `train_reward` from the SFT checkpoint (K=4
rankings, full); 3. `train_ppo` with the SFT checkpoint as policy and reference and the RM as
reward and value init (full, separate models); 4. TRL 1.12 PPO on the same checkpoints, prompts
and sizes in a child process (`trl_ppo.py`), on the same torch and transformers. 5. (GPU mode)
recipes/tiny.yaml under the FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 accelerate configs on every GPU
present (`gpu_scale_out.py`, JSON key `scale_out`).

Figures, each the median over the measured steps (warm-up steps dropped; spread and every per-step
number in the JSON):
- tokens/s: SFT, tokens the Trainer fed (TRL's `num_tokens`); RM, tokens forwarded (a ranking's
  shared prompt once + its K completions); PPO, response tokens per whole step.
- train MFU = 6 * N * tokens / time / peak FLOP/s (Kaplan et al. 2020, "6N"): N counts the weights
  of every matmul (Linear layers, LM head included, a tied embedding once); attention-score FLOPs
  are left out (~5% at 512 tokens). For PPO only the update phase (PPO epochs) counts: policy
  and value forward + backward over prompt + response, the LM head over response positions only.
- decode tokens/s = rollouts * max_new_tokens / `time_sample_s` of the PPO log, against the
  bandwidth bound rollouts * HBM bytes/s / bytes of the policy's weights (every decode step reads
  every weight once; KV-cache reads are left out, so the bound is an upper bound).
- peak memory: torch.cuda.max_memory_allocated over a stage, model loading included (on CPU: the
  process's peak RSS so far, labelled so).
Peak FLOP/s and bandwidth come from the datasheet table `DATASHEET` by device name; other devices
(and --smoke) use ceilings measured here (a matmul and a copy), labelled "measured".
The last lines are `ppo_speed_vs_trl[shape]: N.NNx` and `ppo_peak_memory_vs_trl[shape]: N.NNx`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # rlhf_stack without installing the project (the GPU machine)

import gpu_suite_parts as parts  # noqa: E402  (benchmarks/, this script's directory)
import trl_ppo  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
TRL_LAYER = OUT / f"trl-{trl_ppo.TRL_VERSION}-layer"

# Qwen/Qwen2.5-0.5B and -1.5B config.json (494M and 1,544M parameters, embeddings tied).
SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936),
}
SMOKE_SHAPES = {"tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=4096)}

# Work per stage. SFT/RM steps are cheap (2 warm-up steps: CUDA context, allocator growth);
# a PPO step is seconds (1 warm-up). PPO: one optimizer update per mini-batch and no gradient
# accumulation, the one geometry TRL 1.12 reproduces exactly (trl_ppo.trl_batch_args).
GPU_SIZES = {
    "sft": dict(batch=16, tokens=512, steps=12, warmup=2),
    "rm": dict(batch=16, k=4, prompt_words=96, completion_words=96, steps=12, warmup=2),
    "ppo": dict(batch=64, mini=16, micro=16, epochs=2, new_tokens=128, prompt_words=48, steps=5, warmup=1),
}
SMOKE_SIZES = {
    "sft": dict(batch=4, tokens=64, steps=3, warmup=1),
    "rm": dict(batch=4, k=4, prompt_words=12, completion_words=8, steps=3, warmup=1),
    "ppo": dict(batch=8, mini=4, micro=4, epochs=2, new_tokens=16, prompt_words=8, steps=3, warmup=1),
}


# ---- the three stages, ours -----------------------------------------------------------------------


def run_sft(ctx: parts.Context, sizes: dict) -> dict:
    from rlhf_stack.config import load_config
    from rlhf_stack.sft import SFTConfig, train_sft

    cfg = load_config(SFTConfig, {
        "model": {"name_or_path": str(ctx.work / "base"), "tuning": "full"},
        "data": {"path": str(ctx.data["sft"]), "eval_fraction": 0.0},
        "train": trainer_settings(sizes), "output_dir": str(ctx.work / "sft"),
        "max_length": sizes["tokens"] + 16, "eval_before_training": False,  # + 16: no truncation
    })
    clock = parts.step_clock(ctx.device.cuda)
    with parts.stage_memory(ctx.device.cuda) as memory:
        result = train_sft(cfg, callbacks=[clock])
    steps = []
    for step in range(1, len(clock.ends)):
        tokens = clock.num_tokens[step] - clock.num_tokens.get(step - 1, 0)
        steps.append(parts.train_step(step, clock.ends[step] - clock.ends[step - 1], tokens,
                                      6 * ctx.params["policy"]["matmul"] * tokens, ctx.device))
    return parts.summary("sft", steps, sizes, memory, {"stage_steps": result.metrics["steps"]})


def run_rm(ctx: parts.Context, sizes: dict) -> dict:
    from rlhf_stack.config import load_config
    from rlhf_stack.reward.stage import RewardConfig, train_reward

    cfg = load_config(RewardConfig, {
        "model": {"name_or_path": str(ctx.work / "base"), "tuning": "full"}, "init_from": str(ctx.work / "sft"),
        "data": {"path": str(ctx.data["rm"]), "eval_fraction": 0.0}, "train": trainer_settings(sizes),
        "output_dir": str(ctx.work / "rm"), "max_length": 4096,
    })
    clock = parts.step_clock(ctx.device.cuda)
    with parts.stage_memory(ctx.device.cuda) as memory:
        result = train_reward(cfg, callbacks=[clock])
    tokens = sizes["batch"] * ctx.lengths["rm_tokens_per_ranking"]
    steps = [parts.train_step(step, clock.ends[step] - clock.ends[step - 1], tokens,
                              6 * ctx.params["rm"]["matmul"] * tokens, ctx.device) for step in range(1, len(clock.ends))]
    return parts.summary("rm", steps, sizes, memory, {"stage_steps": result.metrics["steps"],
                                                      "tokens_per_ranking": ctx.lengths["rm_tokens_per_ranking"]})


def trainer_settings(sizes: dict) -> dict:
    return {"max_steps": sizes["steps"], "batch_size": sizes["batch"], "learning_rate": 1e-5,
            "lr_scheduler": "constant", "warmup_ratio": 0.0, "logging_steps": 1, "early_stopping_patience": None,
            "seed": 0}


def run_ppo(ctx: parts.Context, sizes: dict) -> dict:
    from rlhf_stack.config import load_config
    from rlhf_stack.ppo import PPOConfig, train_ppo

    cfg = load_config(PPOConfig, {
        "policy": {"name_or_path": str(ctx.work / "sft"), "tuning": "full"},
        "prompts": {"path": str(ctx.data["ppo"]), "eval_fraction": 0.0},
        "rewards": [{"kind": "reward_model", "path": str(ctx.work / "rm")}], "value_init": str(ctx.work / "rm"),
        "steps": sizes["steps"], "batch_size": sizes["batch"], "mini_batch_size": sizes["mini"],
        "grad_accum_steps": sizes["mini"] // sizes["micro"], "ppo_epochs": sizes["epochs"],
        "max_new_tokens": sizes["new_tokens"], "max_prompt_length": 4096, "temperature": 1.0, "kl_coef": 0.05,
        # TRL 1.12's loop has no gradient clipping and decays the learning rate linearly: the same here.
        "learning_rate": 1e-6, "lr_scheduler": "linear", "max_grad_norm": None,
        "output_dir": str(ctx.work / "ppo"), "save_every_steps": None, "resume": False, "progress_bar": False,
        "eval_max_prompts": 0, "seed": 0,
    })
    update_s: list[float] = []
    with parts.stage_memory(ctx.device.cuda) as memory, parts.timed_ppo_updates(update_s, ctx.device.cuda):
        result = train_ppo(cfg)
    log = [json.loads(line) for line in (ctx.work / "ppo" / "logs" / "ppo_log.jsonl").read_text().splitlines()]
    pol, val = ctx.params["policy"], ctx.params["rm"]
    prompt_len, b = ctx.lengths["ppo_prompt_tokens"], sizes["batch"]
    steps = []
    for i in range(1, len(log)):
        rec, response_len = log[i], log[i]["response_length"]
        positions = prompt_len + response_len - 1  # the last token is no input (models.causal_lm_logits)
        update_flops = 6 * sizes["epochs"] * b * ((pol["body"] + val["body"]) * positions + pol["head"] * response_len)
        step = parts.train_step(rec["step"], rec["elapsed_s"] - log[i - 1]["elapsed_s"], b * response_len,
                                update_flops, ctx.device, train_time_s=update_s[i])
        # Every row decodes until the last one stops: max_new_tokens steps unless all hit EOS.
        decoded = b * sizes["new_tokens"] if rec["eos_fraction"] < 1 else float("nan")
        step.update(time_sample_s=rec["time_sample_s"], decode_tokens=decoded,
                    decode_tokens_per_s=decoded / rec["time_sample_s"],
                    decode_bound_tokens_per_s=b * ctx.device.hbm_bytes_per_s / pol["decode_bytes"],
                    eos_fraction=rec["eos_fraction"])
        step["decode_of_bound"] = step["decode_tokens_per_s"] / step["decode_bound_tokens_per_s"]
        steps.append(step)
    return parts.summary("ppo", steps, sizes, memory, {"models": result.metrics["models"],
                                                       "prompt_tokens": prompt_len})


def run_trl(ctx: parts.Context, sizes: dict, threads: int | None, precision: str) -> dict:
    layer = trl_ppo.install_trl_layer(TRL_LAYER)
    spec = {"policy": str(ctx.work / "sft"), "rm": str(ctx.work / "rm"), "tokenizer": str(ctx.work / "sft"),
            "lora": False, "prompts": ctx.prompts, "batch": sizes["batch"], "mini": sizes["mini"],
            "micro": sizes["micro"], "epochs": sizes["epochs"], "new_tokens": sizes["new_tokens"], "lr": 1e-6,
            "seed": 0, "steps": sizes["steps"], "device": "cuda" if ctx.device.cuda else "cpu",
            "dtype": ctx.device.dtype, "threads": threads, "float32_matmul_precision": precision}
    spec_path = ctx.work / "trl_spec.json"
    spec_path.write_text(json.dumps(spec))
    # The worker checks its set-up (precision, geometry, trainable value model) and that it applied
    # one optimizer update per mini-batch, as ours does; it exits when any differs.
    result = trl_ppo.launch([sys.executable, str(Path(trl_ppo.__file__)), str(spec_path)],
                            env={"PYTHONPATH": f"{layer}{os.pathsep}{ROOT}"})
    # Tokens: the response tokens TRL really sampled (up to each row's first EOS), as ours counts.
    steps = [{"step": s["step"], "time_s": s["time_s"], "tokens": s["response_tokens"],
              "tokens_per_s": s["tokens_per_s"], "peak_memory_mb": s["peak_memory_mb"]}
             for s in result["steps"] if s["time_s"] is not None]
    memory = {"peak_memory_mb": result["peak_memory_mb"], "kind": result["peak_memory_kind"], "start_mb": 0.0}
    extra = {k: result[k] for k in ("mixed_precision", "device", "param_dtype", "trl_batch_args", "optimizer_steps",
                                    "checks", "versions", "total_s")}
    return parts.summary("ppo-trl", steps, sizes, memory, extra)


# ---- the run ------------------------------------------------------------------------------------------


def run_shape(name: str, shape: dict, sizes: dict, device: parts.Device, args, precision: str, record) -> None:
    """Our three stages, then TRL's PPO, on one shape; `record(run)` keeps each result as it comes."""
    work = (args.work or OUT / ("gpu_suite_smoke" if args.smoke else "gpu_suite")) / name
    shutil.rmtree(work, ignore_errors=True)  # a stage resumes from what it finds in its output_dir
    ctx = parts.prepare(shape, sizes, device, work)
    free_memory(device.cuda)  # the config-built model: not counted in the SFT stage's peak
    print(f"[suite] {name}: {ctx.params['policy']['total'] / 1e6:,.0f}M parameters, vocabulary {shape['vocab_size']:,}, "
          f"{device.dtype}", flush=True)
    for stage, fn in (("sft", run_sft), ("rm", run_rm), ("ppo", run_ppo)):
        started = time.perf_counter()
        record({"shape": name, **fn(ctx, sizes[stage])})
        print(f"[suite] {name} {stage}: {time.perf_counter() - started:.1f} s", flush=True)
        free_memory(device.cuda)
    if not args.skip_trl:
        started = time.perf_counter()
        try:
            record({"shape": name, **run_trl(ctx, sizes["ppo"], args.threads, precision)})
        except SystemExit as exc:  # the TRL worker failed (OOM, a missing wheel): keep our figures
            print(f"[suite] {name} ppo-trl FAILED: {str(exc)[-2000:]}", flush=True)
            record({"shape": name, "run": "ppo-trl", "error": str(exc)[-4000:]})
        print(f"[suite] {name} ppo-trl: {time.perf_counter() - started:.1f} s", flush=True)


def free_memory(cuda: bool) -> None:
    """Drop what the last stage left (trainers hold reference cycles) before the next one's peak."""
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, a tiny shape, float32, a few steps (< 1 minute)")
    p.add_argument("--skip-trl", action="store_true", help="leave out the TRL 1.12 PPO run")
    p.add_argument("--shapes", default=None, help="comma-separated subset of the shapes (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip-scale-out", action="store_true",
                   help="leave out the FSDP2 / DeepSpeed ZeRO-2 / ZeRO-3 runs (gpu_scale_out.py; GPU mode only)")
    p.add_argument("--work", type=Path, default=None,
                   help="models, data and checkpoints (default: benchmarks/out/gpu_suite[_smoke]; emptied per shape)")
    p.add_argument("--json", type=Path, default=None,
                   help="raw numbers (default: benchmarks/gpu_suite.json; --smoke: benchmarks/out/gpu_suite_smoke.json)")
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU path even on a GPU machine
    from rlhf_stack.modeling import configure_torch

    started = time.perf_counter()
    torch_settings = configure_torch(args.threads)
    device = parts.detect_device()
    if not args.smoke and not device.cuda:
        raise SystemExit("no CUDA device: the full suite needs one (--smoke runs the same code path on CPU)")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.shapes:
        shapes = {name: shapes[name] for name in args.shapes.split(",")}
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    out = args.json or (OUT / "gpu_suite_smoke.json" if args.smoke else ROOT / "benchmarks" / "gpu_suite.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"suite": {"mode": "smoke" if args.smoke else "gpu", "device": device.as_dict(),
                        "torch_settings": torch_settings, "versions": parts.versions(), "sizes": sizes,
                        "shapes": shapes, "wall_s": None},
              "runs": [], "ratios": {}}

    def record(run: dict) -> None:  # the JSON is rewritten after every run: a crash keeps what ran
        report["runs"].append(run)
        report["suite"]["wall_s"] = time.perf_counter() - started
        out.write_text(json.dumps(report, indent=2))

    for name, shape in shapes.items():
        run_shape(name, shape, sizes, device, args, torch_settings["float32_matmul_precision"], record)
    if device.cuda and not args.skip_scale_out:  # the sharded accelerate configs, on every GPU here
        import torch
        from gpu_scale_out import run_scale_out

        report["scale_out"] = run_scale_out(OUT / "scale_out", torch.cuda.device_count())
    ratios = report["ratios"] = parts.ratios(report["runs"], skipped=args.skip_trl, shapes=list(shapes))
    report["suite"]["wall_s"] = time.perf_counter() - started
    out.write_text(json.dumps(report, indent=2))
    print(parts.table(report))
    print(f"[suite] raw numbers: {out}; wall time {report['suite']['wall_s']:.0f} s")
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
