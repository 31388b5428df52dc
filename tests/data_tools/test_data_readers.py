"""Source readers: JSONL (+gzip), JSON arrays with real line numbers, Parquet, saved datasets."""

import gzip
import json

import pytest
from data_tools_cases import SOURCE_FIXTURES, read_jsonl

from data_tools.convert import convert
from data_tools.sources.readers import iter_records
from rlhf_stack.data import RowError
from rlhf_stack.errors import DataError


def test_json_array_records_carry_the_line_they_start_on(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a": 2,\n   "b": [1,\n 2]},\n  {"a": 3}\n]\n')
    assert [(line, rec["a"]) for line, rec in iter_records(path)] == [(2, 1), (4, 2), (7, 3)]


def test_json_array_missing_comma_is_located(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n {"a": 1}\n {"a": 2}\n]')
    items = list(iter_records(path))
    assert items[0] == (2, {"a": 1})
    assert items[1][0] == 3 and isinstance(items[1][1], RowError) and "expected ','" in str(items[1][1])


def test_jsonl_blank_lines_skipped_and_nan_accepted(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": NaN}\n')
    items = list(iter_records(path))
    assert [line for line, _ in items] == [1, 4]
    assert items[1][1]["a"] != items[1][1]["a"]  # NaN, parsed by the stdlib fallback


def test_a_dot_json_file_holding_jsonl_is_read_as_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert [rec["a"] for _, rec in iter_records(path)] == [1, 2]


def test_gzipped_jsonl_converts(tmp_path):
    src = tmp_path / "train.jsonl.gz"  # how Anthropic ships HH-RLHF
    with gzip.open(src, "wb") as fh:
        fh.write((SOURCE_FIXTURES / "hh_rlhf.jsonl").read_bytes())
    result = convert("hh-rlhf", src, "rankings", tmp_path / "rm.jsonl")
    assert result.rows_written == 12


def test_corrupt_gzip_is_a_data_error(tmp_path):
    src = tmp_path / "bad.jsonl.gz"
    src.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz: cannot read"):
        convert("hh-rlhf", src, "rankings", tmp_path / "rm.jsonl")
    assert not (tmp_path / "rm.jsonl").exists()


def test_parquet_input_rows_are_numbered(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet input needs pyarrow")
    import pyarrow.parquet as pq

    rows = read_jsonl(SOURCE_FIXTURES / "trl_standard_explicit.jsonl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    result = convert("trl", tmp_path / "pairs.parquet", "rankings", tmp_path / "rm.jsonl")
    assert result.rows_written == len(rows)
    assert read_jsonl(tmp_path / "rm.jsonl")[0]["completions"] == [rows[0]["chosen"], rows[0]["rejected"]]
    rows[4]["chosen"] = None  # a null where text belongs: located by row number
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet:5: .*'chosen' and 'rejected' must both be strings"):
        convert("trl", tmp_path / "bad.parquet", "rankings", tmp_path / "bad.jsonl")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        convert("trl", tmp_path / "junk.parquet", "rankings", tmp_path / "bad.jsonl")


def test_saved_dataset_directory(tmp_path):
    datasets = pytest.importorskip("datasets", reason="saved dataset dirs need `datasets`")
    rows = [json.loads(line) for line in (SOURCE_FIXTURES / "dolly.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "dolly_ds"))
    result = convert("alpaca", tmp_path / "dolly_ds", "instructions", tmp_path / "sft.jsonl")
    assert result.rows_written == len(rows)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(DataError, match=r"missing\.parquet: no such file"):
        list(iter_records("./missing.parquet"))
