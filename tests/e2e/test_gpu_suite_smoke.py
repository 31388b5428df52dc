"""benchmarks/gpu_suite.py --smoke --skip-trl: the GPU suite's code path (our SFT, reward model and
PPO stages, the per-step clocks, MFU, the decode bound, the table and the JSON) on CPU with a tiny
shape, as a subprocess. The TRL 1.12 comparison is left out: it installs trl 1.12.0 (from the
index, or benchmarks/wheels), which CI cannot count on."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"
RUNS = ("sft", "rm", "ppo")
DECODE = {"decode_tokens_per_s", "decode_bound_tokens_per_s", "decode_of_bound"}


def test_smoke_prints_and_saves_every_row_with_positive_numbers(tmp_path):
    report_path = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(SUITE), "--smoke", "--skip-trl", "--work", str(tmp_path / "work"),
                           "--json", str(report_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    report = json.loads(report_path.read_text())
    assert report["suite"]["mode"] == "smoke" and report["suite"]["device"]["source"] == "measured"
    runs = {(r["shape"], r["run"]): r for r in report["runs"]}
    assert set(runs) == {("tiny", run) for run in RUNS}
    for (_, run), result in runs.items():
        assert set(result["figures"]) == {"tokens_per_s", "mfu"} | (DECODE if run == "ppo" else set())
        for name, fig in result["figures"].items():
            assert fig["n"] >= 1 and 0 < fig["min"] <= fig["median"] <= fig["max"], (run, name, fig)
        assert result["peak_memory_mb"] > 0
        assert all(step["time_s"] > 0 and step["tokens"] > 0 for step in result["steps"])
    assert runs[("tiny", "ppo")]["models"]["layout"] == "separate-models"  # full tuning, as on the GPU

    lines = proc.stdout.splitlines()
    for run in RUNS:
        row = next(line for line in lines if re.match(rf"tiny\s+{run}\s", line))
        numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", row.split(run, 1)[1])]
        assert len(numbers) == (8 if run == "ppo" else 5) and all(n > 0 for n in numbers), row
    assert lines[-1] == "ppo_speed_vs_trl[tiny]: skipped (--skip-trl)"
