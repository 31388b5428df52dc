"""benchmarks/fused_lora_speed.py --smoke on the tiny model, in this process: both copies timed in
both passes, every block of the fused copy hooked, the ratios printed last. The measurement on the
demo model is the coordinator's benchmark run (benchmarks/RESULTS.md)."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fused_lora_speed.py"


def test_smoke_times_both_variants(capsys, one_thread):
    spec = importlib.util.spec_from_file_location("fused_lora_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--smoke", "--threads", "1"])

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("train: ") and lines[-1].startswith("no_grad: ")
    result = json.loads(bench.SMOKE_OUT.read_text())
    assert result["blocks_fused"] == 2 and result["rounds"] == 2
    for variant in ("peft", "fused"):
        for kind in ("train", "no_grad"):
            assert len(result["times_s"][variant][kind]) == 2 * 2  # A B B A: each variant twice a round
            assert result["medians_s"][variant][kind] > 0
