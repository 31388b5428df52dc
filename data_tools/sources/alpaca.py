"""Plain instruction data: Alpaca `{instruction, input, output}` and Dolly `{instruction, context, response}`.

The prompt is the instruction, followed by the input (or Dolly's context) after a blank line when
there is one -- the same text Alpaca's own template puts under "### Input:". Rows with an empty
output are skipped (Alpaca has a few).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data_tools.sources.common import Skip, per_record, require_text
from rlhf_stack.data import RowError

KINDS = ("instructions", "prompts")


def prompt_of(record: dict, separator: str) -> str:
    instruction = require_text(record, "instruction").strip()
    extra = record.get("input", record.get("context")) or ""
    if not isinstance(extra, str):
        raise RowError("'input' / 'context' must be a string")
    return f"{instruction}{separator}{extra.strip()}" if extra.strip() else instruction


def convert_record(record: dict, to: str, separator: str) -> list[dict | Skip]:
    prompt = prompt_of(record, separator)
    if not prompt:
        return [Skip("empty instruction")]
    if to == "prompts":
        return [{"prompt": prompt}]
    key = "output" if "output" in record else "response"
    response = require_text(record, key) if key in record else None
    if response is None:
        raise RowError("missing 'output' (Alpaca) or 'response' (Dolly)")
    return [{"prompt": prompt, "response": response} if response.strip() else Skip("empty output")]


def rows(records: Iterable[tuple[int, dict]], to: str, separator: str = "\n\n") -> Iterator[dict | Skip]:
    """Alpaca / Dolly records -> instructions or prompts."""
    return per_record(convert_record, records, to, separator=separator)
