"""Anthropic HH-RLHF (Bai et al. 2022): `{"chosen": transcript, "rejected": transcript}`.

A transcript is `"\\n\\nHuman: ...\\n\\nAssistant: ..."` turns. Both sides share the conversation
and differ in the last assistant turn, so one record is a K=2 ranking whose prompt is the shared
turns as chat messages. SFT rows take the whole chosen conversation; prompts take the shared turns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from data_tools.sources.common import Skip, pair_ranking, per_record, require_text
from rlhf_stack.data import RowError

KINDS = ("rankings", "instructions", "prompts")

# A turn marker: a blank line, then the speaker. The raw files always put "\n\n" before a speaker.
_MARKER = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_transcript(text: str, side: str) -> list[dict]:
    """`\\n\\nHuman: a\\n\\nAssistant: b` -> [{user: a}, {assistant: b}]; RowError on bad markers."""
    if text.startswith(("Human:", "Assistant:")):  # some re-exports strip the leading blank line
        text = "\n\n" + text
    parts = _MARKER.split(text)
    # split() gives [before, speaker1, text1, speaker2, text2, ...]
    if len(parts) < 3:
        raise RowError(f"'{side}' has no '\\n\\nHuman:' / '\\n\\nAssistant:' turn markers")
    if parts[0].strip():
        raise RowError(f"'{side}' has text before its first '\\n\\nHuman:' marker: {parts[0][:40]!r}")
    messages = [{"role": _ROLE[parts[n]], "content": parts[n + 1].strip()} for n in range(1, len(parts), 2)]
    for n, msg in enumerate(messages):
        expected = "user" if n % 2 == 0 else "assistant"
        if msg["role"] != expected:
            speaker = "Human" if expected == "user" else "Assistant"
            raise RowError(f"'{side}' turn {n + 1} should be '{speaker}:' (turns must alternate, Human first)")
    if messages[-1]["role"] != "assistant":
        raise RowError(f"'{side}' must end with an '\\n\\nAssistant:' turn")
    return messages


def convert_record(record: dict, to: str) -> list[dict | Skip]:
    chosen = parse_transcript(require_text(record, "chosen"), "chosen")
    if to == "instructions":
        return [{"messages": chosen} if chosen[-1]["content"] else Skip("empty chosen response")]
    rejected = parse_transcript(require_text(record, "rejected"), "rejected")
    if chosen[:-1] != rejected[:-1]:
        # A handful of raw records continue different conversations on each side: no shared prompt.
        return [Skip("chosen and rejected continue different conversations")]
    prompt = chosen[:-1]
    if to == "prompts":
        return [{"prompt": prompt}]
    return [pair_ranking(prompt, chosen[-1]["content"], rejected[-1]["content"])]


def rows(records: Iterable[tuple[int, dict]], to: str) -> Iterator[dict | Skip]:
    """HH-RLHF records -> rankings (K=2), instructions (chosen conversation) or prompts."""
    return per_record(convert_record, records, to)
