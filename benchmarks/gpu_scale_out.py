"""The GPU suite's scale-out check: the sharded accelerate configs that need a GPU, run for real.

    python benchmarks/gpu_suite.py                  # runs this after the shapes (GPU mode only)
    python benchmarks/gpu_scale_out.py [--work DIR] # this part alone

For each of recipes/accelerate/{fsdp,deepspeed_zero2,deepspeed_zero3}.yaml, with num_processes set
to the GPUs present: recipes/tiny.yaml's SFT, reward model and PPO through the runner
(`rlhf-stack run ... --set accelerate_config=...`), each stage under `accelerate launch`. Recorded
per config: exit code, seconds, and per stage its status, world size and whether it sharded.
DeepSpeed is not a dependency: `pip install 'rlhf-stack[deepspeed]'` first (it has no wheel, so
benchmarks/gpu_wheels.py does not bring it); without it those two configs report FAILED with the
ImportError. Status (issue 16): written and checked on CPU only up to the launch command; never
run on a GPU yet. FSDP2 itself is tested on two CPU processes (tests/e2e/test_fsdp.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml")


def command(run_dir: Path, accelerate_config: Path) -> list[str]:
    return [sys.executable, "-m", "rlhf_stack.cli", "run", "recipes/tiny.yaml", "--run-dir", str(run_dir),
            "--only", "sft", "--only", "reward", "--only", "ppo", "--set", "report=false",
            "--set", f"accelerate_config={accelerate_config}"]


def run_scale_out(work: Path, gpus: int) -> list[dict]:
    """One result per config: {config, returncode, seconds, stages: {name: {status, world_size, sharded}}}."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in CONFIGS:
        config = yaml.safe_load((ROOT / "recipes" / "accelerate" / name).read_text())
        config["num_processes"] = gpus
        config_path = work / name
        config_path.write_text(yaml.safe_dump(config))
        run_dir = work / name.removesuffix(".yaml")
        started = time.perf_counter()
        proc = subprocess.run(command(run_dir, config_path), cwd=ROOT, capture_output=True, text=True, timeout=3600)
        manifest_path = run_dir / "manifest.json"
        stages = json.loads(manifest_path.read_text())["stages"] if manifest_path.is_file() else {}
        result = {"config": name, "num_processes": gpus, "returncode": proc.returncode,
                  "seconds": round(time.perf_counter() - started, 1),
                  "stages": {stage: {"status": entry.get("status"), "world_size": entry.get("world_size"),
                                     "sharded": (entry.get("metrics") or {}).get("sharded")}
                             for stage, entry in stages.items()}}
        if proc.returncode:
            result["error"] = (proc.stdout[-2000:] + proc.stderr[-4000:])
        results.append(result)
        print(f"[suite] scale-out {name} x{gpus}: {'ok' if proc.returncode == 0 else 'FAILED'} "
              f"({result['seconds']} s) {json.dumps(result['stages'])}", flush=True)
    return results


def main(argv=None) -> None:
    import argparse

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "scale_out")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: these configs need GPUs (FSDP2 on CPU: recipes/accelerate/cpu_fsdp.yaml)")
    results = run_scale_out(args.work, torch.cuda.device_count())
    (args.work / "scale_out.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
