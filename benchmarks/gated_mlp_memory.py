"""One training pass plain, with the gated MLP's fused product, and with activations rebuilt, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gated_mlp_memory.py [--rounds 3] [--threads 2]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gated_mlp_memory.py --smoke   # the tiny test model
    HF_HUB_OFFLINE=1 python benchmarks/gated_mlp_memory.py --device cuda         # a GPU: bf16, ~1 minute

The model of `ppo_vs_trl.py`'s real row: SmolLM2-135M-Instruct, float32, LoRA r16/alpha32 on every linear
layer of the blocks (dropout 0), and the same model under full tuning. One pass as a PPO policy update
runs it: 8 rows of 110 tokens, logits on the last 48, log-softmax, backward. Three variants: plain
(autograd op by op), fused (`gated_mlp.py`'s `GatedProduct` only) and rebuilt (the defaults: also
`rebuild.py`, the norms' outputs and the product rebuilt in the backward, not kept). Each runs in its own process (a
fresh C heap), `--rounds` times, the order rotating between rounds.

Per variant, medians over the rounds:
- held MB: what the forward leaves allocated for the backward (its saved tensors and the logits): the
  process's RSS after the forward minus before it, glibc mapping every block of 64 KiB and more on its
  own (`MALLOC_MMAP_THRESHOLD_=65536`), so the figure follows the live tensors. (Counting saved
  tensors with saved-tensor hooks would switch the rebuild off: it stands aside under outer hooks);
- live peak MB: the process's peak RSS over the pass minus its RSS before it, in the same setting;
- RSS peak MB: the same with glibc's default settings, as users run it (freed blocks stay resident);
- pass s: the time of the forward + backward.
With `--device cuda` (bf16 weights) held and live peak are `torch.cuda.memory_allocated` after the
forward and `max_memory_allocated` over the pass, minus the memory allocated before (the caching
allocator's own count), and there is no RSS column.
Prints one table and `held: N.NNx`, `live_peak: N.NNx` (rebuilt over plain, LoRA row) last; writes
benchmarks/gated_mlp_memory.json (`--smoke`: benchmarks/out/gated_mlp_memory_smoke.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS, TOKENS, RESPONSE = 8, 110, 48


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf_stack.gated_mlp import fuse_gated_mlps
    from rlhf_stack.rebuild import enable_rebuilds

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cuda = spec["device"] == "cuda"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if cuda else torch.float32)
    model.to(spec["device"])
    if spec["tuning"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    model.train()
    switched = fuse_gated_mlps(model) if spec["variant"] != "plain" else 0
    if spec["variant"] == "rebuilt":
        enable_rebuilds(model)
    ids = torch.randint(3, spec["vocab"], (ROWS, TOKENS), generator=torch.Generator().manual_seed(1)).to(spec["device"])

    def allocated_mb() -> float:
        return torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb("VmRSS")

    def one_pass(held: list | None = None) -> float:
        model.zero_grad(set_to_none=False)
        started = time.perf_counter()
        before = allocated_mb()
        logits = model(input_ids=ids, logits_to_keep=RESPONSE, use_cache=False).logits
        if held is not None:
            held.append(allocated_mb() - before)
        logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, -RESPONSE:, None])
        logprobs.float().mean().backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    one_pass()  # warm-up: gradients allocated, kernels chosen
    held: list = []
    times = []
    if cuda:
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times.append(one_pass(held))
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = _rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        times.append(one_pass(held))
        peak = _rss_mb("VmHWM") - before
    times.append(one_pass())
    return {"switched": switched, "held_mb": held[0], "peak_mb": peak, "pass_s": statistics.median(times)}


def run(spec: dict, mmap: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"worker failed ({spec}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="the tiny test model, one round")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16, peak from torch.cuda")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.smoke:
        model, vocab, rounds = str(ROOT / "tests/fixtures/tiny-llama"), 500, 1
        out = ROOT / "benchmarks/out/gated_mlp_memory_smoke.json"
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        from rlhf_stack.modeling import resolve_model_path

        model, vocab, rounds = resolve_model_path("smollm2-135m-instruct"), 49152, args.rounds
        out = ROOT / ("benchmarks/gated_mlp_memory.json" if args.device == "cpu" else "benchmarks/gated_mlp_memory_cuda.json")
    report = {"model": model, "device": args.device, "rows": ROWS, "tokens": TOKENS, "response": RESPONSE, "threads": args.threads,
              "rounds": rounds, "results": {}}
    lines = [f"{'tuning':<6} {'variant':<7} {'blocks':>6} {'held MB':>8} {'live peak MB':>13} {'RSS peak MB':>12} "
             f"{'pass s':>7}"]
    variants = ("plain", "fused", "rebuilt")
    for tuning in ("lora", "full"):
        runs = {variant: [] for variant in variants}
        for round_ in range(rounds):
            for variant in variants[round_ % 3:] + variants[:round_ % 3]:
                spec = {"model": model, "vocab": vocab, "tuning": tuning, "variant": variant,
                        "threads": args.threads, "device": args.device}
                live = run(spec, mmap=True)
                default = run(spec, mmap=False) if args.device == "cpu" else {**live, "peak_mb": float("nan")}
                runs[variant].append({"held_mb": live["held_mb"], "live_peak_mb": live["peak_mb"],
                                      "rss_peak_mb": default["peak_mb"], "pass_s": default["pass_s"],
                                      "switched": live["switched"]})
                print(f"[bench] {tuning} {variant} round {round_ + 1}: {runs[variant][-1]}", flush=True)
        medians = {variant: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for variant, rs in runs.items()}
        report["results"][tuning] = {"runs": runs, "medians": medians}
        for variant, m in medians.items():
            lines.append(f"{tuning:<6} {variant:<7} {m['switched']:>6.0f} {m['held_mb']:>8.1f} {m['live_peak_mb']:>13.1f} "
                         f"{m['rss_peak_mb']:>12.1f} {m['pass_s']:>7.2f}")
    lora = report["results"]["lora"]["medians"]
    report["held"] = lora["rebuilt"]["held_mb"] / lora["plain"]["held_mb"]
    report["live_peak"] = lora["rebuilt"]["live_peak_mb"] / lora["plain"]["live_peak_mb"]
    out.write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    print(f"[bench] per-run numbers: {out}")
    print(f"held: {report['held']:.2f}x")
    print(f"live_peak: {report['live_peak']:.2f}x")


if __name__ == "__main__":
    main()
