"""SIGKILL the runner during each stage in turn; re-running the same command must finish, repeat no
completed stage, and end with the manifest of an uninterrupted run (recipes/tiny.yaml, CPU).

One chain of runs: the 1st run is killed in SFT, the 2nd (same command) in the reward stage, the
3rd in PPO after its first resumable checkpoint, the 4th in the evaluation, the 5th finishes. A
separate uninterrupted run gives the reference manifest.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/tiny.yaml"
PHASE_TIMEOUT_S = 240
# Metrics that measure time or how a run went rather than what it produced.
VOLATILE = ("runtime", "per_s", "_time", "time_", "resumed", "duration", "seconds", "memory")


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "rlhf_stack.cli", "run", RECIPE, "--run-dir", str(run_dir)]


def env() -> dict:
    # One thread: on a small shared CPU, two OpenMP threads per process spin against each other
    # (measured 5x slower for the tiny model's SFT on 2 busy cores).
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def status(run_dir: Path, stage: str) -> str | None:
    return read_manifest(run_dir)["stages"].get(stage, {}).get("status")


def run_to_end(run_dir: Path) -> None:
    done = subprocess.run(command(run_dir), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=PHASE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def run_and_kill(run_dir: Path, stage: str, ready) -> None:
    """Start the command; SIGKILL its process group once `ready(run_dir)` holds during `stage`."""
    proc = subprocess.Popen(command(run_dir), cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    try:
        while not (status(run_dir, stage) == "running" and ready(run_dir)):
            assert proc.poll() is None, f"the run ended (code {proc.returncode}) before it could be killed in {stage}"
            assert time.monotonic() < deadline, f"timed out waiting for {stage}"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert status(run_dir, stage) == "running", f"{stage} finished before the kill landed"


def after(seconds: float):
    """Ready `seconds` after it is first asked (the stage is running by then)."""
    start = []

    def ready(_run_dir):
        start.append(time.monotonic()) if not start else None
        return time.monotonic() - start[0] >= seconds

    return ready


def ppo_checkpointed(run_dir: Path) -> bool:
    root = run_dir / "ppo" / "checkpoints"
    return root.is_dir() and any(root.iterdir())


def stable_view(manifest: dict) -> dict:
    """What must not depend on interruptions: status, config hash, data fingerprints, metrics."""
    out = {}
    for name, entry in manifest["stages"].items():
        metrics = {k: v for k, v in entry.get("metrics", {}).items()
                   if isinstance(v, int | float) and not any(tag in k for tag in VOLATILE)}
        out[name] = {"status": entry["status"], "config_hash": entry["config_hash"], "data": entry["data"],
                     "metrics": metrics}
    return out


def assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        a, e = actual[name], expected[name]
        assert (a["status"], a["config_hash"], a["data"]) == (e["status"], e["config_hash"], e["data"]), name
        assert a["metrics"].keys() == e["metrics"].keys(), name
        for key, value in e["metrics"].items():
            got = a["metrics"][key]
            same = math.isclose(got, value, rel_tol=1e-3, abs_tol=1e-4) or (math.isnan(got) and math.isnan(value))
            assert same, f"{name}.{key}: {got} after kills, {value} uninterrupted"


@pytest.mark.e2e
def test_sigkill_in_each_stage_then_rerun_matches_an_uninterrupted_run(tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    run_to_end(reference_dir)
    reference = read_manifest(reference_dir)
    assert [e["status"] for e in reference["stages"].values()] == ["done"] * 4

    finished: dict[str, dict] = {}  # stage -> its manifest entry when it was first seen done
    for stage, ready in (("sft", after(1.0)), ("reward", after(1.0)), ("ppo", ppo_checkpointed),
                         ("eval", after(0.0))):  # the tiny evaluation lasts about a second: kill at once
        run_and_kill(killed_dir, stage, ready)
        stages = read_manifest(killed_dir)["stages"]
        for name, entry in finished.items():  # nothing completed earlier was run again
            assert stages[name] == entry, f"{name} was repeated after a kill in {stage}"
        finished.update({n: e for n, e in stages.items() if e["status"] == "done" and n not in finished})
        assert stage not in finished
    run_to_end(killed_dir)

    final = read_manifest(killed_dir)
    for name, entry in finished.items():
        assert final["stages"][name] == entry, f"{name} was repeated by the final run"
    assert all(final["stages"][s]["attempts"] == 2 for s in ("sft", "reward", "ppo", "eval"))  # each resumed once
    assert_same(stable_view(final), stable_view(reference))
    assert (killed_dir / "report.md").is_file()
