"""Public preference and instruction data -> our formats (`rlhf-stack data convert`).

    convert("ultrafeedback", "ultrafeedback.jsonl", "rankings", "data/rm.jsonl")
    convert_hh_rlhf("hh/train.jsonl.gz", "data/rm.jsonl")      # one function per source, same thing

Streaming: records are read one at a time (JSONL, gzip, Parquet in batches; a JSON array is parsed
whole but converted record by record), each converted row is checked with the loaders' own
`rlhf_stack.data.check_row`, and written to a temp file renamed into place at the end. The first
bad input record stops the run with `path:line: problem` and leaves no output file (or pass
`skip_bad_rows=True` to count and skip them). Exact duplicates (the same prompt, completions and
annotator; the same prompt for `prompts`) are dropped so the output passes `data validate`.

Sources and the kinds they give: see `data_tools.sources` (one module each) and `describe_sources()`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.sources import SOURCES
from data_tools.sources.common import SHAPE_ERRORS, BadRow, LineError, Skip
from data_tools.sources.readers import iter_records
from rlhf_stack.data import RowError, check_row, prompt_key
from rlhf_stack.errors import DataError

try:  # orjson writes ~10x faster than json.dumps; output bytes are equivalent JSON
    import orjson

    def _dumps(row: dict) -> bytes:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
except ImportError:  # pragma: no cover

    def _dumps(row: dict) -> bytes:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


MAX_LISTED_BAD_ROWS = 5


@dataclass
class ConvertResult:
    """What one conversion did."""

    out: Path | None  # the written file (None for iter_converted)
    kind: str
    rows_read: int = 0  # source records read
    rows_written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    bad_rows: list[str] = field(default_factory=list)  # first `path:line: problem`s (skip_bad_rows)
    line: int = 0  # the record being converted (for error messages)

    def summary(self) -> str:
        text = f"wrote {self.rows_written} {self.kind} rows to {self.out} from {self.rows_read} source records"
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
        return "\n".join([text, *self.bad_rows])


# ---- sources ------------------------------------------------------------------------------------


def source_module(name: str):
    if name not in SOURCES:
        raise DataError(f"unknown source {name!r}; expected one of {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name])


def source_options(name: str) -> dict[str, Any]:
    """The options a source takes (`--option key=value`) with their defaults."""
    params = inspect.signature(source_module(name).rows).parameters
    return {k: p.default for k, p in params.items() if k not in ("records", "to")}


def describe_sources() -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """(source, kinds it converts to, options with defaults) for every source."""
    return [(name, source_module(name).KINDS, source_options(name)) for name in SOURCES]


# ---- the driver ---------------------------------------------------------------------------------


def convert(source: str, input: str | Path, to: str, out: str | Path, *, split: str = "train",
            skip_bad_rows: bool = False, **options) -> ConvertResult:
    """Convert `input` (file, dataset dir or `datasets` name) from `source` into `to` rows at `out`."""
    out = Path(out)
    if Path(input).exists() and out.resolve() == Path(input).resolve():
        raise DataError(f"{out}: the output would overwrite the input")
    result = ConvertResult(out, to)
    rows = _converted_rows(source, input, to, split, skip_bad_rows, options, result)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb", buffering=1 << 20) as fh:
            write = fh.write
            for row in rows:
                try:
                    write(_dumps(row))
                except (TypeError, ValueError) as exc:  # a lone surrogate ("\ud800") cannot be UTF-8
                    raise DataError(f"{input}:{result.line}: the row cannot be written as UTF-8 JSON ({exc})") from None
                result.rows_written += 1
        if result.rows_written == 0:
            raise DataError(f"{input}: no {to} rows could be made from {result.rows_read} records"
                            + (f" (skipped: {dict(result.skipped)})" if result.skipped else ""))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def iter_converted(source: str, input: str | Path, to: str, *, split: str = "train", skip_bad_rows: bool = False,
                   **options) -> Iterator[dict]:
    """The converted, validated, de-duplicated rows, streamed (no file written)."""
    return _converted_rows(source, input, to, split, skip_bad_rows, options, ConvertResult(None, to))


def _converted_rows(source: str, input, to: str, split: str, skip_bad_rows: bool, options: dict,
                    result: ConvertResult) -> Iterator[dict]:
    module = source_module(source)
    if to not in module.KINDS:
        raise DataError(f"source {source!r} converts to {', '.join(module.KINDS)}, not {to!r}")
    allowed = source_options(source)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(unknown)} for source {source!r}; "
                        f"allowed: {', '.join(allowed) or 'none'}")
    records = _records(input, split, skip_bad_rows, result)
    return _checked(module.rows(records, to, **options), input, to, skip_bad_rows, result)


def _records(input, split: str, skip_bad_rows: bool, result: ConvertResult) -> Iterator[tuple[int, dict]]:
    """Source records, with the current line noted on `result`; unreadable ones stop or are skipped."""
    for line, record in iter_records(input, split):
        result.line = line
        result.rows_read += 1
        if not isinstance(record, RowError | dict):
            record = RowError(f"each record must be a JSON object, got {type(record).__name__}")
        if isinstance(record, RowError):
            if not skip_bad_rows:
                raise DataError(f"{input}:{line}: {record}")
            _note_bad(result, f"{input}:{line}: {record}")
            continue
        yield line, record


def _checked(items: Iterator[dict | Skip], input, kind: str, skip_bad_rows: bool,
             result: ConvertResult) -> Iterator[dict]:
    """Source output -> rows that pass `check_row`, minus exact duplicates; skips are counted."""
    seen: set[bytes] = set()
    key_of = _DEDUPE_KEYS[kind]
    try:
        for item in items:
            if isinstance(item, Skip):
                if isinstance(item, BadRow):
                    where = f"{input}:{result.line}: {item.problem}"
                    if not skip_bad_rows:
                        raise DataError(where)
                    _note_bad(result, where)
                else:
                    result.skipped[item.reason] += 1
                continue
            try:
                row = check_row(item, kind)
            except RowError as exc:
                raise DataError(f"{input}:{result.line}: the converted row breaks the {kind} format: {exc}") from None
            key = key_of(row)
            if key in seen:
                result.skipped[f"duplicate {kind} rows"] += 1
                continue
            seen.add(key)
            yield row
    except LineError as exc:
        raise DataError(f"{input}:{exc.line}: {exc}") from None
    except RowError as exc:
        raise DataError(f"{input}:{result.line}: {exc}") from None
    except SHAPE_ERRORS as exc:
        raise DataError(f"{input}:{result.line}: unexpected record shape ({type(exc).__name__}: {exc})") from None


def _note_bad(result: ConvertResult, where: str) -> None:
    result.skipped["bad input rows"] += 1
    if len(result.bad_rows) < MAX_LISTED_BAD_ROWS:
        result.bad_rows.append(where)


def _digest(*parts: str) -> bytes:
    return hashlib.blake2b("\x1e".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()


# Same identity as `rlhf_stack.data.validate_file`'s duplicate rule (prompt, completions, annotator).
_DEDUPE_KEYS = {
    "rankings": lambda r: _digest(prompt_key(r["prompt"]), "\x1f".join(r["completions"]), str(r.get("annotator"))),
    "prompts": lambda r: _digest(prompt_key(r["prompt"])),
    "instructions": lambda r: _digest(json.dumps(r, ensure_ascii=False, sort_keys=True)),
    "corpus": lambda r: _digest(r["text"]),
}


# ---- one function per source (the same as convert(name, ...)) ------------------------------------


def convert_hh_rlhf(input, out, to: str = "rankings", **kwargs) -> ConvertResult:
    """Anthropic HH-RLHF chosen/rejected transcripts -> K=2 rankings, chosen SFT conversations, prompts."""
    return convert("hh-rlhf", input, to, out, **kwargs)


def convert_ultrafeedback(input, out, to: str = "rankings", rating: str = "fine-grained_score",
                          **kwargs) -> ConvertResult:
    """UltraFeedback rated completions -> K-wise rankings with ties, top-rated SFT rows, prompts."""
    return convert("ultrafeedback", input, to, out, rating=rating, **kwargs)


def convert_oasst(input, out, to: str = "rankings", lang: str | None = None, **kwargs) -> ConvertResult:
    """oasst1/oasst2 message tables or tree exports -> sibling rankings, top-path SFT rows, prompts."""
    return convert("oasst", input, to, out, lang=lang, **kwargs)


def convert_trl(input, out, to: str = "rankings", **kwargs) -> ConvertResult:
    """TRL preference rows (standard/conversational, implicit/explicit prompt) -> our formats."""
    return convert("trl", input, to, out, **kwargs)


def convert_argilla(input, out, to: str = "rankings", **kwargs) -> ConvertResult:
    """Argilla RankingQuestion records (v1 or v2 exports) -> one ranking per annotator, or prompts."""
    return convert("argilla", input, to, out, **kwargs)


def convert_labelstudio(input, out, to: str = "rankings", **kwargs) -> ConvertResult:
    """Label Studio Ranker / Pairwise task exports -> one ranking per annotation, or prompts."""
    return convert("labelstudio", input, to, out, **kwargs)


def convert_alpaca(input, out, to: str = "instructions", **kwargs) -> ConvertResult:
    """Alpaca / Dolly instruction data -> instructions or prompts."""
    return convert("alpaca", input, to, out, **kwargs)
