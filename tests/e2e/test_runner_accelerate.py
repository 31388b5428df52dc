"""A stage under `accelerate launch` with two CPU processes (gloo) and FSDP2: the sharded path is real.

SFT and the reward model run in-process first; then PPO alone runs through the runner's accelerate
path with recipes/accelerate/cpu_fsdp.yaml (two processes, parameters sharded). The manifest
records each stage's launcher and number of processes. Neither is part of a stage's config hash:
the finished upstream stages are reused, not redone, and re-running the whole recipe in one
process afterwards re-runs nothing (a finished checkpoint is whole, the same on any number of
processes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(run_dir: Path, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhf_stack.cli", "run", "recipes/tiny.yaml", "--run-dir", str(run_dir), *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.e2e
def test_ppo_runs_sharded_on_two_gloo_processes(tmp_path):
    run(tmp_path, "--only", "sft", "--only", "reward")
    run(tmp_path, "--only", "ppo", "--set", "accelerate_config=recipes/accelerate/cpu_fsdp.yaml")
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert stages["ppo"]["status"] == "done"
    assert stages["ppo"]["launcher"] == "accelerate:recipes/accelerate/cpu_fsdp.yaml"
    assert stages["ppo"]["world_size"] == stages["ppo"]["metrics"]["world_size"] == 2
    assert stages["ppo"]["metrics"]["sharded"] is True
    assert stages["sft"]["launcher"] == stages["reward"]["launcher"] == "in-process"
    assert stages["sft"]["world_size"] == stages["reward"]["world_size"] == 1
    assert stages["sft"]["status"] == stages["reward"]["status"] == "done"  # reused, not redone
    assert (tmp_path / "configs" / "ppo.yaml").is_file()

    out = run(tmp_path, "--only", "sft", "--only", "reward", "--only", "ppo")  # now one process
    assert "starting" not in out and "resuming" not in out  # nothing re-ran
    after = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert after["ppo"]["world_size"] == 2 and after["ppo"]["finished_at"] == stages["ppo"]["finished_at"]
