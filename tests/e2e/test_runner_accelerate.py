"""A stage under `accelerate launch` with two CPU processes (gloo): the distributed path is real.

SFT and the reward model run in-process first; then PPO alone runs through the runner's accelerate
path with recipes/accelerate/cpu_ddp.yaml. The launcher is not part of a stage's config hash, so
the finished upstream stages are reused, not redone.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(run_dir: Path, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhf_stack.cli", "run", "recipes/tiny.yaml", "--run-dir", str(run_dir), *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.e2e
def test_ppo_runs_as_two_gloo_processes(tmp_path):
    run(tmp_path, "--only", "sft", "--only", "reward")
    run(tmp_path, "--only", "ppo", "--set", "accelerate_config=recipes/accelerate/cpu_ddp.yaml")
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert stages["ppo"]["status"] == "done"
    assert stages["ppo"]["launcher"] == "accelerate:recipes/accelerate/cpu_ddp.yaml"
    assert stages["ppo"]["metrics"]["world_size"] == 2
    assert stages["sft"]["launcher"] == stages["reward"]["launcher"] == "in-process"
    assert stages["sft"]["status"] == stages["reward"]["status"] == "done"  # reused, not redone
    assert (tmp_path / "configs" / "ppo.yaml").is_file()
