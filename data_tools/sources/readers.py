"""Read source records, streaming, each with the line (or row) it came from.

`iter_records(source, split)` accepts a local JSONL / JSON-array / Parquet file (optionally
gzipped JSON), a saved `datasets` directory, or a `datasets` Hub name. It yields
`(line, record | RowError)`: a bad line is reported where it is, never raised mid-stream, so the
caller decides whether to stop (convert) or to list every problem (validate).

Line numbers: JSONL and JSON arrays give the text line where the record starts; Parquet and
`datasets` inputs give the 1-based row number.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf_stack.data import RowError
from rlhf_stack.errors import DataError

try:  # orjson parses ~3x faster than json; the stdlib path gives the same results and messages
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _fast_loads = json.loads

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".gz")
PARQUET_BATCH_ROWS = 1024
_WHITESPACE = re.compile(r"[ \t\n\r]*")

Records = Iterator[tuple[int, Any]]


def iter_records(source: str | Path, split: str = "train") -> Records:
    """(line, record or RowError) for every record of a local file, dataset dir or `datasets` name."""
    path = Path(source).expanduser()
    if path.is_file():
        return _iter_file(path)
    if path.is_dir():
        return _iter_dataset(str(path), split)
    if str(source).startswith((".", "/", "~")) or path.suffix in FILE_SUFFIXES:
        raise DataError(f"{source}: no such file")
    return _iter_dataset(str(source), split)


def _iter_file(path: Path) -> Records:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if path.suffix == ".parquet":
        return _iter_parquet(path)
    opener = gzip.open if path.suffix == ".gz" else open
    if suffixes and suffixes[-1] == ".json" and _starts_with_bracket(path, opener):
        return _iter_json_array(path, opener)
    return _iter_jsonl(path, opener)


def _starts_with_bracket(path: Path, opener) -> bool:
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4096)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    return head.lstrip()[:1] == b"["


def _iter_jsonl(path: Path, opener) -> Records:
    try:
        with opener(path, "rb") as fh:
            for line, raw in enumerate(fh, start=1):
                try:
                    yield line, _fast_loads(raw)
                except ValueError:  # bad JSON, bad UTF-8, a blank line, or NaN (which orjson rejects)
                    if raw.strip():
                        yield line, _parse_slowly(raw)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile, a truncated .gz
        raise DataError(f"{path}: cannot read ({exc})") from None


def _parse_slowly(raw: bytes) -> Any:
    """Re-parse a line the fast parser refused with the stdlib: its record, or a precise RowError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RowError(f"not valid UTF-8 (byte {exc.start})")
    try:
        return json.loads(text.rstrip("\r\n"))  # so an error at the end points into the line
    except json.JSONDecodeError as exc:
        # Only the file's last line can lack its newline: a parse error there means a cut-off write.
        hint = " (the last line looks truncated)" if not raw.endswith(b"\n") else ""
        return RowError(f"invalid JSON: {_json_problem(exc)}{hint}")


def _json_problem(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _iter_json_array(path: Path, opener) -> Records:
    """Records of a JSON array file with the line each starts on (the file is read whole)."""
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield raw.count(b"\n", 0, exc.start) + 1, RowError(f"not valid UTF-8 (byte {exc.start} of the file)")
        return
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text, 0).end() + 1  # past the opening '['
    line, counted_to = 1, 0
    while True:
        pos = _WHITESPACE.match(text, pos).end()
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        if pos >= len(text):
            yield line, RowError("the JSON array is not closed (the file looks truncated)")
            return
        if text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            where = line + text.count("\n", counted_to, exc.pos)
            # An error in the last record of an array that is never closed: a cut-off file.
            truncated = " (the file looks truncated)" if not text.rstrip().endswith("]") else ""
            yield where, RowError(f"invalid JSON: {_json_problem(exc)}{truncated}")
            return
        yield line, record
        pos = _WHITESPACE.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] != "]":
            where = line + text.count("\n", counted_to, pos)
            yield where, RowError(f"invalid JSON: expected ',' or ']' after the record, found {text[pos]!r}")
            return


def _iter_parquet(path: Path) -> Records:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def _iter_dataset(name: str, split: str) -> Records:
    """Rows of a saved dataset directory or a `datasets` name; one clear line when it cannot load."""
    import datasets

    path = Path(name)
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; the user needs one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{name}: could not load as a local file or a `datasets` name ({type(exc).__name__}: {reason}). "
            "Offline? Download the data and pass the local .jsonl/.json/.parquet file."
        ) from None
    return enumerate(ds, start=1)
