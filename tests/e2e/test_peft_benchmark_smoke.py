"""benchmarks/peft_methods.py --smoke on the tiny model, in this process: the table, the JSON and the
plot for a method that runs in both stages (LoRA) and one the reward stage refuses (prompt tuning).
The full comparison (every method, the demo model) is the coordinator's benchmark run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "peft_methods.py"


def test_smoke_writes_table_json_and_plot(tmp_path, monkeypatch, capsys, one_thread):
    spec = importlib.util.spec_from_file_location("peft_methods_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--smoke", "--out", str(tmp_path), "--methods", "lora,prompt_tuning"])
    bench.main()

    result = json.loads((tmp_path / "peft_methods_smoke.json").read_text())
    runs = {(r["stage"], r["method"]): r for r in result["runs"]}
    assert set(runs) == {("sft", "lora"), ("sft", "prompt_tuning"), ("reward", "lora")}
    for run in runs.values():
        assert 0 < run["trainable"] < run["total"] and run["peak_rss_mb"] > 0 and run["tokens_per_s"] > 0
        assert run["steps"] == 2
    assert runs[("sft", "prompt_tuning")]["trainable"] == 16 * 64  # 16 virtual tokens x hidden size 64
    assert 0.0 <= runs[("reward", "lora")]["heldout"] <= 1.0 and runs[("sft", "lora")]["heldout"] > 0
    assert (tmp_path / "peft_methods_smoke.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "| lora | " in table and "| prompt_tuning | " in table and "refused: the reward model's score" in table
