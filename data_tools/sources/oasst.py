"""OpenAssistant oasst1 / oasst2 (Köpf et al. 2023): conversation trees of ranked messages.

Two shapes are read, detected from the first record:

- the flat message table (`OpenAssistant/oasst1` rows, `*.messages.jsonl`): one message a line with
  `message_id`, `parent_id`, `message_tree_id`, `role` (prompter|assistant), `text`, `rank`;
  a tree's messages must be contiguous (as the published files are) so trees stream one at a time;
- the nested tree export (`*.trees.jsonl`): one tree a line, `{"message_tree_id", "prompt": {...,
  "replies": [...]}}`.

Rankings: each prompter message with two or more ranked assistant replies gives one ranking (the
oasst `rank` 0 = best becomes rank 1); the prompt is the conversation from the root to that message.
Instructions: the top path of each tree (follow the best-ranked reply at every turn, as the
OpenAssistant SFT sets do). Prompts: each tree's first message. Deleted messages and messages that
failed review are dropped with their subtrees. Option `lang` keeps only messages in that language.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from data_tools.sources.common import LineError, Skip, ranking_row
from rlhf_stack.data import RowError

KINDS = ("rankings", "instructions", "prompts")
ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass
class Node:
    id: str
    parent_id: str | None
    role: str  # "user" | "assistant"
    text: str
    rank: int | None  # 0 = best among ranked siblings; None = not ranked
    line: int
    children: list[Node] = field(default_factory=list)

    def message(self) -> dict:
        return {"role": self.role, "content": self.text}


def rows(records: Iterable[tuple[int, dict]], to: str, lang: str | None = None) -> Iterator[dict | Skip]:
    """oasst message tables or tree exports -> rankings, instructions (top path) or prompts."""
    emit = {"rankings": tree_rankings, "instructions": top_path, "prompts": first_prompt}[to]
    for messages in _trees(records):
        root = build_tree(messages, lang)
        if root is None:
            yield Skip("tree whose first message was deleted, failed review or is in another language")
            continue
        yield from emit(root)


# ---- reading trees ------------------------------------------------------------------------------


def _trees(records: Iterable[tuple[int, dict]]) -> Iterator[list[tuple[int, dict]]]:
    """Each tree as [(line, message)], from either shape."""
    shape, current_id, current, finished = None, None, [], set()
    for line, record in records:
        nested = isinstance(record.get("prompt"), dict)
        if shape is None:
            shape = "nested" if nested else "flat"
        if nested != (shape == "nested"):
            raise RowError("mixes tree records and message records; convert one shape per file")
        if nested:
            yield [(line, msg) for msg in _flatten(record["prompt"])]
            continue
        if "message_id" not in record:
            raise RowError("not an OASST message (no 'message_id') nor a tree (no 'prompt' object)")
        tree_id = record.get("message_tree_id")
        if not isinstance(tree_id, str):
            raise RowError("missing 'message_tree_id'")
        if tree_id != current_id:
            if tree_id in finished:
                raise RowError(f"message of tree {tree_id} comes after that tree ended; "
                               "sort the table by message_tree_id")
            if current:
                yield current
                finished.add(current_id)
            current_id, current = tree_id, []
        current.append((line, record))
    if current:
        yield current


def _flatten(message: dict) -> Iterator[dict]:
    """A nested message and all its replies, depth first, each with its parent's id."""
    stack = [(message, None)]
    while stack:
        msg, parent_id = stack.pop()
        if not isinstance(msg, dict):
            raise RowError("every message and reply of a tree must be an object")
        yield {**msg, "parent_id": msg.get("parent_id", parent_id)}
        replies = msg.get("replies") or []
        if not isinstance(replies, list):
            raise RowError(f"'replies' of message {msg.get('message_id')} must be a list")
        stack.extend((reply, msg.get("message_id")) for reply in reversed(replies))


def build_tree(messages: list[tuple[int, dict]], lang: str | None = None) -> Node | None:
    """Link the kept messages of one tree; return its root (None when the root was dropped)."""
    nodes: dict[str, Node] = {}
    for line, msg in messages:
        node = _node(msg, line)
        if msg.get("deleted") is True or msg.get("review_result") is False:
            continue
        if lang is not None and msg.get("lang") != lang:
            continue
        nodes[node.id] = node
    root = None
    for node in nodes.values():
        if node.parent_id is None:
            if root is not None:
                raise LineError(f"a second root message in the tree of line {root.line}", node.line)
            root = node
        elif node.parent_id in nodes:  # replies to dropped messages go with them
            parent = nodes[node.parent_id]
            if parent.role == node.role:
                raise LineError(f"{node.role} message {node.id} replies to a {parent.role} message", node.line)
            parent.children.append(node)
    if root is not None and root.role != "user":
        raise LineError(f"tree root {root.id} must be a prompter message", root.line)
    return root


def _node(msg: dict, line: int) -> Node:
    try:
        if not isinstance(msg.get("message_id"), str):
            raise RowError("missing 'message_id'")
        if msg.get("role") not in ROLES:
            raise RowError(f"'role' is {msg.get('role')!r}; expected 'prompter' or 'assistant'")
        if not isinstance(msg.get("text"), str):
            raise RowError(f"message {msg['message_id']} has no string 'text'")
        rank = msg.get("rank")
        if rank is not None and (not isinstance(rank, int | float) or rank != rank):  # NaN from pandas
            rank = None
    except RowError as exc:
        raise LineError(str(exc), line) from None
    return Node(msg["message_id"], msg.get("parent_id"), ROLES[msg["role"]], msg["text"],
                None if rank is None else int(rank), line)


# ---- rows from a tree ---------------------------------------------------------------------------


def tree_rankings(root: Node) -> Iterator[dict | Skip]:
    """One ranking per prompter message with >= 2 ranked assistant replies."""
    found = False
    stack = [(root, [root.message()])]
    while stack:
        node, path = stack.pop()
        ranked = [c for c in node.children if c.role == "assistant" and c.rank is not None]
        if node.role == "user" and len(ranked) >= 2:
            row = ranking_row(path, [(c.text, c.rank) for c in ranked], higher_is_better=False,
                              extra={"id": node.id})
            found = True
            yield row
        stack.extend((child, path + [child.message()]) for child in reversed(node.children))
    if not found:
        yield Skip("tree with no ranked sibling replies")


def top_path(root: Node) -> Iterator[dict | Skip]:
    """The conversation that follows the best-ranked reply at every turn, ending on the assistant."""
    messages, node = [], root
    while node is not None:
        messages.append(node.message())
        node = min(node.children, key=lambda c: (c.rank is None, c.rank or 0), default=None)
    if messages[-1]["role"] == "user":
        messages.pop()
    if len(messages) < 2 or not messages[-1]["content"].strip():
        yield Skip("tree with no assistant reply")
        return
    yield {"messages": messages}


def first_prompt(root: Node) -> Iterator[dict | Skip]:
    yield {"prompt": root.text} if root.text.strip() else Skip("empty first message")
