"""`rlhf-stack data ...` through the typer app (the lead's CLI mounts it and prints DataError)."""

import json
import subprocess
import sys

from data_tools_cases import SOURCE_FIXTURES, read_jsonl
from typer.testing import CliRunner

from data_tools.cli import app
from rlhf_stack.errors import DataError

runner = CliRunner()


def test_no_args_shows_help_with_every_command():
    result = runner.invoke(app, [])
    for command in ("convert", "validate", "stats", "split", "sources"):
        assert command in result.output


def test_convert_then_validate_then_stats(tmp_path):
    out = tmp_path / "rm.jsonl"
    result = runner.invoke(app, ["convert", "--from", "ultrafeedback", str(SOURCE_FIXTURES / "ultrafeedback.jsonl"),
                                 "--to", "rankings", "--out", str(out), "--option", "rating=overall_score"])
    assert result.exit_code == 0, result.output
    assert f"wrote 8 rankings rows to {out}" in result.output
    assert read_jsonl(out)[0]["ratings"] == [9.0, 7.5, 3.0, 2.0]
    result = runner.invoke(app, ["validate", str(out), "--kind", "rankings"])
    assert result.exit_code == 0 and f"ok: 8 rankings rows in {out}" in result.output
    result = runner.invoke(app, ["stats", str(out), "--kind", "rankings", "--json"])
    assert result.exit_code == 0
    stats = json.loads(result.output)
    assert stats["rankings"]["k_distribution"] == {"4": 8} and stats["rows"] == 8


def test_convert_reports_skips(tmp_path):
    result = runner.invoke(app, ["convert", "--from", "hh-rlhf", str(SOURCE_FIXTURES / "hh_rlhf.jsonl"),
                                 "--to", "rankings", "-o", str(tmp_path / "rm.jsonl")])
    assert result.exit_code == 0
    assert "1 identical chosen and rejected responses" in result.output and "1 duplicate rankings rows" in result.output


def test_bad_input_raises_data_error_with_location(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"instruction": "q", "output": "a"}\n{"instruction": "q2", "out')
    out = tmp_path / "sft.jsonl"
    result = runner.invoke(app, ["convert", "--from", "alpaca", str(src), "--to", "instructions", "--out", str(out)])
    assert result.exit_code != 0
    assert isinstance(result.exception, DataError)
    assert f"{src}:2: invalid JSON" in str(result.exception) and "truncated" in str(result.exception)
    assert not out.exists()


def test_validate_fails_listing_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 3]}\n{"prompt": ""}\n')
    result = runner.invoke(app, ["validate", str(bad), "--kind", "rankings"])
    assert result.exit_code != 0 and isinstance(result.exception, DataError)
    lines = str(result.exception).splitlines()
    assert lines[0].startswith(f"{bad}:1: ranks [1, 3] are not dense") and lines[1].startswith(f"{bad}:2: ")


def test_bad_kind_and_bad_option_are_usage_errors(tmp_path):
    result = runner.invoke(app, ["validate", "x.jsonl", "--kind", "pairs"])
    assert result.exit_code == 2 and "is not one of" in result.output
    result = runner.invoke(app, ["convert", "--from", "trl", "x", "--to", "rankings", "--out", "y", "--option", "novalue"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_sources_lists_kinds_and_options():
    result = runner.invoke(app, ["sources"])
    assert result.exit_code == 0
    assert "oasst" in result.output and "lang=None" in result.output and "rating='fine-grained_score'" in result.output


def test_split_command(tmp_path):
    rm = tmp_path / "rm.jsonl"
    runner.invoke(app, ["convert", "--from", "trl", str(SOURCE_FIXTURES / "trl_standard_explicit.jsonl"),
                        "--to", "rankings", "--out", str(rm)])
    result = runner.invoke(app, ["split", str(rm), "--out-dir", str(tmp_path / "stages"), "--ratios", "1:1:2"])
    assert result.exit_code == 0, result.output
    assert "sft: 3 rows" in result.output and "reward: 3 rows" in result.output and "ppo: 6 rows" in result.output


def test_importing_the_cli_stays_cheap():
    code = ("import sys, data_tools.cli; heavy = [m for m in ('torch', 'transformers', 'datasets', 'pyarrow') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
