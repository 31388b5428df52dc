"""One training pass with and without the gated MLP's fused product (`rlhf_stack/gated_mlp.py`), side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gated_mlp_memory.py [--rounds 3] [--threads 2]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gated_mlp_memory.py --smoke   # the tiny test model
    HF_HUB_OFFLINE=1 python benchmarks/gated_mlp_memory.py --device cuda         # a GPU: bf16, ~1 minute

The model of `ppo_vs_trl.py`'s real row: SmolLM2-135M-Instruct, float32, LoRA r16/alpha32 on every linear
layer of the blocks (dropout 0), and the same model under full tuning. One pass as a PPO policy update
runs it: 8 rows of 110 tokens, logits on the last 48, log-softmax, backward. Each variant runs in its
own process (a fresh C heap), `--rounds` times, the order alternating (plain first in odd rounds).

Per variant, medians over the rounds:
- kept MB: the distinct storages autograd keeps for the backward (saved-tensor hooks), weights
  excluded; deterministic;
- live peak MB: the process's peak RSS over the pass minus its RSS before it, with glibc mapping every
  block of 64 KiB and more on its own (`MALLOC_MMAP_THRESHOLD_=65536`), so freed tensors leave RSS at
  once and the figure follows the live tensors;
- RSS peak MB: the same with glibc's default settings, as users run it (freed blocks stay resident);
- pass s: the time of the forward + backward.
With `--device cuda` (bf16 weights) the live peak is `torch.cuda.max_memory_allocated` over the pass
minus the memory allocated before it (the caching allocator's own count), and there is no RSS column.
Prints one table and `kept: N.NNx`, `live_peak: N.NNx` (fused over plain, LoRA row) last; writes
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
    switched = fuse_gated_mlps(model) if spec["fused"] else 0
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(3, spec["vocab"], (ROWS, TOKENS), generator=torch.Generator().manual_seed(1)).to(spec["device"])

    def one_pass(hooks: dict | None = None) -> float:
        model.zero_grad(set_to_none=False)
        started = time.perf_counter()

        def keep(tensor):
            storage = tensor.untyped_storage()
            if hooks is not None and storage.data_ptr() not in weights:
                hooks[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            logits = model(input_ids=ids, logits_to_keep=RESPONSE, use_cache=False).logits
        logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, -RESPONSE:, None])
        logprobs.float().mean().backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    kept: dict = {}
    one_pass(kept)  # warm-up; also counts what autograd keeps
    times = []
    if cuda:
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times.append(one_pass())
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = _rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        times.append(one_pass())
        peak = _rss_mb("VmHWM") - before
    times.append(one_pass())
    return {"switched": switched, "kept_mb": sum(kept.values()) / 2**20, "peak_mb": peak,
            "pass_s": statistics.median(times)}


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
    lines = [f"{'tuning':<6} {'variant':<6} {'blocks':>6} {'kept MB':>8} {'live peak MB':>13} {'RSS peak MB':>12} "
             f"{'pass s':>7}"]
    for tuning in ("lora", "full"):
        runs = {"plain": [], "fused": []}
        for round_ in range(rounds):
            for variant in ("plain", "fused") if round_ % 2 == 0 else ("fused", "plain"):
                spec = {"model": model, "vocab": vocab, "tuning": tuning, "fused": variant == "fused",
                        "threads": args.threads, "device": args.device}
                live = run(spec, mmap=True)
                default = run(spec, mmap=False) if args.device == "cpu" else {**live, "peak_mb": float("nan")}
                runs[variant].append({"kept_mb": live["kept_mb"], "live_peak_mb": live["peak_mb"],
                                      "rss_peak_mb": default["peak_mb"], "pass_s": default["pass_s"],
                                      "switched": live["switched"]})
                print(f"[bench] {tuning} {variant} round {round_ + 1}: {runs[variant][-1]}", flush=True)
        medians = {variant: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for variant, rs in runs.items()}
        report["results"][tuning] = {"runs": runs, "medians": medians}
        for variant, m in medians.items():
            lines.append(f"{tuning:<6} {variant:<6} {m['switched']:>6.0f} {m['kept_mb']:>8.1f} {m['live_peak_mb']:>13.1f} "
                         f"{m['rss_peak_mb']:>12.1f} {m['pass_s']:>7.2f}")
    lora = report["results"]["lora"]["medians"]
    report["kept"] = lora["fused"]["kept_mb"] / lora["plain"]["kept_mb"]
    report["live_peak"] = lora["fused"]["live_peak_mb"] / lora["plain"]["live_peak_mb"]
    out.write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    print(f"[bench] per-run numbers: {out}")
    print(f"kept: {report['kept']:.2f}x")
    print(f"live_peak: {report['live_peak']:.2f}x")


if __name__ == "__main__":
    main()
