"""The four formats: every validation rule gives `path:line: problem`; splits are deterministic."""

import json

import pytest

from rlhf_stack.data import load_rankings, load_rows, split_train_eval, validate_file, write_jsonl
from rlhf_stack.errors import DataError


def lines(tmp_path, *rows, raw=None):
    path = tmp_path / "d.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(text.encode() + (raw or b""))
    return path


GOOD = {"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 2, 2]}


@pytest.mark.parametrize("row, problem", [
    ({"prompt": "p", "completions": ["a"], "ranks": [1]}, "at least 2 completions"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 3]}, "not dense from 1"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]}, "not dense from 1"),
    ({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 2]}, "3 completions but 2 ranks"),
    ({"prompt": "p", "completions": ["a", " "], "ranks": [1, 2]}, "completion 1 is empty"),
    ({"prompt": "p", "completions": ["a", "a"], "ranks": [1, 2]}, "duplicate completions"),
    ({"completions": ["a", "b"], "ranks": [1, 2]}, "missing 'prompt'"),
    ({"prompt": "", "completions": ["a", "b"], "ranks": [1, 2]}, "'prompt' is empty"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, "2"]}, "list of integers"),
    ({"prompt": [{"role": "assistant", "content": "x"}], "completions": ["a", "b"], "ranks": [1, 2]},
     "must end with a user message"),
])
def test_ranking_rules(tmp_path, row, problem):
    path = lines(tmp_path, GOOD, row)
    with pytest.raises(DataError) as err:
        load_rows(path, "rankings")
    assert f"{path}:2: " in str(err.value) and problem in str(err.value)


def test_duplicate_ranking_rows(tmp_path):
    path = lines(tmp_path, GOOD, GOOD)
    with pytest.raises(DataError, match=r"d.jsonl:2: duplicate of line 1"):
        load_rows(path, "rankings")


def test_pairwise_rows_are_k2_rankings_and_ties_kept(tmp_path):
    path = lines(tmp_path, {"prompt": "p", "chosen": "good", "rejected": "bad"}, GOOD)
    first, second = load_rankings(path)
    assert first.completions == ["good", "bad"] and first.ranks == [1, 2]
    assert second.ordered_pairs() == [(0, 1), (0, 2)]  # the tied pair (1, 2) is skipped


def test_malformed_json_non_utf8_and_truncated(tmp_path):
    path = lines(tmp_path, {"prompt": "p", "response": "r"}, raw=b'\xff\xfe\n{"prompt": "p", "resp')
    rows, errors = validate_file(path, "instructions")
    assert len(rows) == 1
    assert errors[0].startswith(f"{path}:2: not valid UTF-8")
    assert errors[1].startswith(f"{path}:3: invalid JSON") and "truncated" in errors[1]


@pytest.mark.parametrize("kind, row, problem", [
    ("instructions", {"prompt": "p", "response": ""}, "'response' is empty"),
    ("instructions", {"prompt": "p"}, "missing 'response'"),
    ("instructions", {"messages": [{"role": "user", "content": "hi"}]}, "must end with a non-empty assistant"),
    ("instructions", {"messages": [{"role": "bot", "content": "hi"}]}, "expected one of"),
    ("prompts", {"text": "x"}, "missing 'prompt'"),
    ("corpus", {"text": 3}, "'text' must be a string"),
    ("corpus", [1, 2], "must be a JSON object"),
])
def test_other_kinds(tmp_path, kind, row, problem):
    with pytest.raises(DataError, match=problem):
        load_rows(lines(tmp_path, row), kind)


def test_errors_are_capped_and_counted(tmp_path):
    path = lines(tmp_path, *[{"prompt": ""} for _ in range(30)])
    _, errors = validate_file(path, "prompts", max_errors=5)
    assert len(errors) == 6 and "25 more bad rows" in errors[-1]


def test_split_is_deterministic_and_by_prompt():
    rows = [{"prompt": f"p{i % 50}", "response": str(i)} for i in range(200)]
    train, held = split_train_eval(rows, 0.2, seed=1)
    assert (train, held) == split_train_eval(rows, 0.2, seed=1)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in held})
    assert 0.05 < len(held) / len(rows) < 0.4


def test_write_jsonl_is_atomic(tmp_path):
    out = tmp_path / "o.jsonl"

    def rows():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(rows(), out)
    assert not out.exists() and not list(tmp_path.iterdir())
