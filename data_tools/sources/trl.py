"""TRL dataset formats (huggingface.co/docs/trl/dataset_formats).

Preference rows, all four variants:

- standard, explicit prompt:       {"prompt": str, "chosen": str, "rejected": str}
- standard, implicit prompt:       {"chosen": str, "rejected": str} (the shared prefix is the prompt)
- conversational, explicit prompt: {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
- conversational, implicit prompt: {"chosen": [messages], "rejected": [messages]}

As in TRL's `maybe_extract_prompt`, a `prompt` whose type differs from `chosen` (a string prompt
beside full conversations, as in `HuggingFaceH4/ultrafeedback_binarized`) is ignored and the
prompt is extracted from the shared prefix. Instructions also come from prompt/completion rows
(standard or conversational) and `messages` rows; prompts from any row with a prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data_tools.sources.common import Skip, check_chat, pair_ranking, per_record
from rlhf_stack.data import RowError

KINDS = ("rankings", "instructions", "prompts")


def split_preference(record: dict) -> tuple[str | list[dict], str, str]:
    """(prompt, chosen text, rejected text) of any of the four preference variants."""
    chosen, rejected = record["chosen"], record["rejected"]
    conversational = isinstance(chosen, list)
    if isinstance(rejected, list) != conversational or not isinstance(chosen, list | str):
        raise RowError("'chosen' and 'rejected' must both be strings or both be message lists")
    prompt = record.get("prompt")
    explicit = prompt is not None and isinstance(prompt, list) == conversational
    if not conversational:
        if explicit:
            return _text_prompt(prompt), chosen, rejected
        cut = shared_text_prefix(chosen, rejected)
        return _text_prompt(chosen[:cut]), chosen[cut:], rejected[cut:]
    chosen, rejected = check_chat(chosen, "chosen"), check_chat(rejected, "rejected")
    if explicit:
        prompt = check_chat(prompt, "prompt")
    else:
        cut = shared_turns(chosen, rejected)
        prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
    return _chat_prompt(prompt), _one_reply(chosen, "chosen"), _one_reply(rejected, "rejected")


def shared_text_prefix(a: str, b: str) -> int:
    """Where the implicit prompt of two texts ends: their common prefix, cut back to whitespace.

    TRL cuts at the first differing character, which splits words ("The sky is b" + "lue"); ending
    the prompt at a whitespace boundary keeps every completion a whole continuation.
    """
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    if n == limit:  # one text is a prefix of the other: no shared prompt can be told apart
        raise RowError("implicit prompt: 'chosen' and 'rejected' do not diverge")
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return n


def shared_turns(a: list[dict], b: list[dict]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _text_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError("the prompt is empty (explicit 'prompt' missing, or 'chosen'/'rejected' share no prefix)")
    return prompt


def _chat_prompt(prompt: list[dict]) -> list[dict]:
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError("the conversational prompt must end with a user message")
    return prompt


def _one_reply(messages: list[dict], side: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise RowError(f"'{side}' must continue the prompt with exactly one assistant message "
                       f"(got {len(messages)} messages)")
    return messages[0]["content"]


def _extra(record: dict) -> dict:
    ident = record.get("id", record.get("prompt_id"))
    return {"id": str(ident)} if ident is not None else {}


def convert_record(record: dict, to: str) -> list[dict | Skip]:
    if "chosen" in record or "rejected" in record:
        if "chosen" not in record or "rejected" not in record:
            raise RowError("a preference row needs both 'chosen' and 'rejected'")
        prompt, chosen, rejected = split_preference(record)
        if to == "rankings":
            return [pair_ranking(prompt, chosen, rejected, _extra(record))]
        if to == "prompts":
            return [{"prompt": prompt}]
        return [_instruction(prompt, chosen)]
    if to == "rankings":
        raise RowError("not a preference row: rankings need 'chosen' and 'rejected' "
                       "(unpaired prompt/completion/label rows carry no ranking)")
    if "messages" in record:
        messages = check_chat(record["messages"], "messages")
        if to == "prompts":
            return [{"prompt": _chat_prompt(messages[:-1])}]
        return [{"messages": messages}]
    if "prompt" not in record:
        raise RowError("missing 'prompt' (or 'messages', or 'chosen'/'rejected')")
    prompt = record["prompt"]
    prompt = _chat_prompt(check_chat(prompt, "prompt")) if isinstance(prompt, list) else _text_prompt(prompt)
    if to == "prompts":
        return [{"prompt": prompt}]
    if record.get("label") is False:  # KTO's unpaired "bad" completions are not SFT targets
        return [Skip("unpaired completion labelled false")]
    completion = record.get("completion")
    if isinstance(completion, list):
        completion = _one_reply(check_chat(completion, "completion"), "completion")
    if not isinstance(completion, str):
        raise RowError("missing 'completion' (a string or one assistant message)")
    return [_instruction(prompt, completion)]


def _instruction(prompt: str | list[dict], response: str) -> dict | Skip:
    if not response.strip():
        return Skip("empty response")
    if isinstance(prompt, list):
        return {"messages": [*prompt, {"role": "assistant", "content": response}]}
    return {"prompt": prompt, "response": response}


def rows(records: Iterable[tuple[int, dict]], to: str) -> Iterator[dict | Skip]:
    """TRL preference / prompt-completion / messages rows -> rankings, instructions or prompts."""
    return per_record(convert_record, records, to)
