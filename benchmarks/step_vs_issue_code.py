"""The quickstart's PPO step against the code issue 12 was measured on, side by side in one run.

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/step_vs_issue_code.py [--run-dir runs/quickstart]
        [--commit 978d2bd] [--steps 6] [--repeats 3] [--out benchmarks/step_vs_issue_code.json]

Issue 12 asks for the quickstart's PPO step "2.5x faster than today's ~16 s", measured on the code
of its day: commit 978d2bd (2026-12-01 05:47, the last commit before the issue's work began).
This script exports that commit's `rlhf_stack/` (`git archive`, so it needs this repository's
history) and runs, `--repeats` times in alternating order, each in a fresh process: that code's
`train_ppo` and this checkout's. Both get the same thing:
- the PPO section of that commit's `recipes/quickstart.yaml`, the settings the issue measured
  (8 prompts, 40 new tokens, 2 epochs of 2 mini-batches, LoRA on the top 4 of 30 blocks, the RM
  hosted on the policy's base, PPO-ptx), with `steps: --steps`;
- the SFT and RM checkpoints of `--run-dir` (`make demo`, or `rlhf-stack run recipes/quickstart.yaml
  --only sft --only reward`);
- the default torch threads of this machine;
- the PPO seed: `--seed` + r in repeat r, so the repeats draw different samples (with one seed they
  repeat the same responses, and a step's time follows its response lengths).
Each side's times come from its own per-step log. The figures are medians over steps 2..N (step 1
warms up) of every repeat: the whole step, and the phases both codes log (generate = sampling and
the rollout's forward passes, score, train = the PPO epochs). The last line is `step_speedup:
N.NNx` (the issue-day step's median over ours). The two codes draw different samples (their samplers
differ; later, float rounding of different kernels), so each side's median response length and KL
are printed beside its times, and `response_tokens_per_s` (response tokens of a step over its time,
medians) as a second ratio that shorter responses cannot flatter.
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

ISSUE_COMMIT = "978d2bd"
PHASES = ("time_generate_s", "time_score_s", "time_train_s", "time_step_s")
KEPT = ("step", "response_length", "kl", "score", *PHASES)


def worker(code_root: str, recipe: str, run_dir: str, steps: int, seed: int, out: str) -> None:
    """In a fresh process: `code_root`'s train_ppo on the recipe's PPO section; its log to `out`."""
    sys.path.insert(0, code_root)
    import yaml

    from rlhf_stack.config import load_config
    from rlhf_stack.ppo.config import PPOConfig
    from rlhf_stack.ppo.trainer import train_ppo

    def resolve(value):  # "@sft" -> the run dir's sft checkpoint
        if isinstance(value, str) and value.startswith("@"):
            return str(Path(run_dir) / value[1:])
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    raw = resolve(yaml.safe_load(Path(recipe).read_text())["ppo"])
    with tempfile.TemporaryDirectory() as tmp:
        raw.update(output_dir=str(Path(tmp) / "ppo"), steps=steps, seed=seed, save_every_steps=None,
                   progress_bar=False, resume=False)
        cfg = load_config(PPOConfig, raw)
        train_ppo(cfg)
        log = [json.loads(line) for line in (Path(tmp) / "ppo" / "logs" / "ppo_log.jsonl").read_text().splitlines()]
    # response_length is the mean over the step's rows
    Path(out).write_text(json.dumps([{**{k: record[k] for k in KEPT},
                                      "response_tokens": record["response_length"] * cfg.batch_size} for record in log]))


def run_side(code_root: Path, recipe: Path, run_dir: Path, steps: int, seed: int, tmp: Path, tag: str) -> list[dict]:
    out = tmp / f"{tag}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code_root)}
    subprocess.run([sys.executable, __file__, "--worker", str(code_root), str(recipe), str(run_dir), str(steps),
                    str(seed), str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def export_commit(commit: str, dest: Path) -> Path:
    """`commit`'s rlhf_stack/ and recipes/quickstart.yaml under dest; returns the recipe's path."""
    archive = subprocess.run(["git", "archive", commit, "rlhf_stack", "recipes/quickstart.yaml"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "recipes" / "quickstart.yaml"


def medians(logs: list[list[dict]]) -> dict[str, float]:
    measured = [record for log in logs for record in log if record["step"] >= 2]
    out = {key: statistics.median(r[key] for r in measured) for key in (*PHASES, "response_length", "kl")}
    out["response_tokens_per_s"] = statistics.median(r["response_tokens"] / r["time_step_s"] for r in measured)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--commit", default=ISSUE_COMMIT)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42, help="repeat r runs both sides with PPO seed + r")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/step_vs_issue_code.json"))
    args = parser.parse_args()
    for stage in ("sft", "reward"):
        if not (args.run_dir / stage).is_dir():
            sys.exit(f"{args.run_dir / stage}: missing; run `rlhf-stack run recipes/quickstart.yaml "
                     f"--run-dir {args.run_dir} --only sft --only reward` first")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "rlhf_stack"], capture_output=True,
                                text=True).stdout.strip())
    logs: dict[str, list[list[dict]]] = {"issue": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        old_root = Path(tmp) / "issue_code"
        old_root.mkdir()
        recipe = export_commit(args.commit, old_root)
        roots = {"issue": old_root, "now": Path.cwd()}
        for repeat in range(args.repeats):
            order = ("issue", "now") if repeat % 2 == 0 else ("now", "issue")
            for side in order:
                log = run_side(roots[side], recipe, args.run_dir.resolve(), args.steps, args.seed + repeat, Path(tmp),
                               f"{side}{repeat}")
                logs[side].append(log)
                steps = ", ".join(f"{r['time_step_s']:.2f}" for r in log)
                print(f"repeat {repeat} {side:5s}: step times {steps} s", flush=True)
    result = {side: medians(runs) for side, runs in logs.items()}
    for side, m in result.items():
        label = f"issue code ({args.commit})" if side == "issue" else f"this checkout ({head}{'+dirty' if dirty else ''})"
        print(f"{label}: step {m['time_step_s']:.2f} s = generate {m['time_generate_s']:.2f} + score "
              f"{m['time_score_s']:.2f} + train {m['time_train_s']:.2f}; response {m['response_length']:.1f} "
              f"tokens, KL {m['kl']:.3f}")
    speedup = result["issue"]["time_step_s"] / result["now"]["time_step_s"]
    tokens_ratio = result["now"]["response_tokens_per_s"] / result["issue"]["response_tokens_per_s"]
    per_repeat = [statistics.median(r["time_step_s"] for r in old if r["step"] >= 2)
                  / statistics.median(r["time_step_s"] for r in new if r["step"] >= 2)
                  for old, new in zip(logs["issue"], logs["now"], strict=True)]
    args.out.write_text(json.dumps({"commit": args.commit, "head": head, "dirty": dirty, "steps": args.steps,
                                    "repeats": args.repeats, "seed": args.seed, "medians": result, "speedup_per_repeat": per_repeat,
                                    "logs": logs}, indent=1))
    print("per repeat: " + ", ".join(f"{x:.2f}x" for x in per_repeat))
    print(f"response_tokens_per_s: {tokens_ratio:.2f}x")
    print(f"step_speedup: {speedup:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), sys.argv[7])
    else:
        main()
