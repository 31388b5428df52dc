"""Malformed input of every source: a `path:line: problem` error and no output file, ever."""

import json
import re

import pytest
from data_tools_cases import CASES, SOURCE_FIXTURES

from data_tools.convert import convert
from rlhf_stack.errors import DataError

JSONL_CASES = [(s, n, kinds[0]) for s, n, kinds in CASES if n.endswith(".jsonl")]
ARRAY_CASES = [(s, n, kinds[0]) for s, n, kinds in CASES if n.endswith(".json")]


def expect_error(tmp_path, source, src, kind, pattern, **options):
    """Convert must fail with `src:LINE: ...pattern...`, leave a prior output untouched and no temp file."""
    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n")
    with pytest.raises(DataError) as info:
        convert(source, src, kind, out, **options)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert out.read_text() == "previous content\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    return message


def write_lines(tmp_path, name, lines: list[bytes]):
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return path


def good_lines(name: str, n: int = 3) -> list[bytes]:
    """The first n records of a fixture as JSONL lines (JSON-array fixtures are re-serialised)."""
    if name.endswith(".json"):
        return [(json.dumps(r) + "\n").encode() for r in json.loads((SOURCE_FIXTURES / name).read_text())[:n]]
    return (SOURCE_FIXTURES / name).read_bytes().splitlines(keepends=True)[:n]


# ---- reading: the same for every source ---------------------------------------------------------


@pytest.mark.parametrize("source,name,kind", JSONL_CASES, ids=[n for _, n, _ in JSONL_CASES])
def test_non_utf8_bytes(tmp_path, source, name, kind):
    src = write_lines(tmp_path, "bad.jsonl", [*good_lines(name, 2), b'{"x": "caf\xe9"}\n', *good_lines(name, 1)])
    expect_error(tmp_path, source, src, kind, r"bad\.jsonl:3: not valid UTF-8 \(byte 10\)")


@pytest.mark.parametrize("source,name,kind", JSONL_CASES, ids=[n for _, n, _ in JSONL_CASES])
def test_truncated_last_line(tmp_path, source, name, kind):
    lines = good_lines(name, 3)
    src = write_lines(tmp_path, "cut.jsonl", [*lines[:-1], lines[-1][: len(lines[-1]) // 2]])
    expect_error(tmp_path, source, src, kind, rf"cut\.jsonl:{len(lines)}: invalid JSON: .*\(the last line looks truncated\)")


@pytest.mark.parametrize("source,name,kind", ARRAY_CASES, ids=[n for _, n, _ in ARRAY_CASES])
def test_truncated_json_array(tmp_path, source, name, kind):
    text = (SOURCE_FIXTURES / name).read_bytes()
    src = write_lines(tmp_path, "cut.json", [text[: len(text) // 2]])
    expect_error(tmp_path, source, src, kind, r"cut\.json:\d+: invalid JSON: .*truncated")


@pytest.mark.parametrize("source,name,kind", ARRAY_CASES, ids=[n for _, n, _ in ARRAY_CASES])
def test_non_utf8_in_json_array_names_its_line(tmp_path, source, name, kind):
    lines = (SOURCE_FIXTURES / name).read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"', b'"\xff', 1)
    src = write_lines(tmp_path, "bad.json", lines)
    expect_error(tmp_path, source, src, kind, r"bad\.json:5: not valid UTF-8")


def test_record_that_is_not_an_object(tmp_path):
    src = write_lines(tmp_path, "list.jsonl", [*good_lines("trl_standard_explicit.jsonl", 1), b"[1, 2]\n"])
    expect_error(tmp_path, "trl", src, "rankings", r"list\.jsonl:2: each record must be a JSON object, got list")


def test_missing_file_and_offline_dataset_name(tmp_path):
    expect_error(tmp_path, "trl", tmp_path / "nope.jsonl", "rankings", r"nope\.jsonl: no such file")
    message = expect_error(tmp_path, "trl", "someone/no-such-dataset-xyz", "rankings",
                           r"^someone/no-such-dataset-xyz: could not load as a local file or a `datasets` name")
    assert "Offline?" in message and "\n" not in message


# ---- each source's own rules ----------------------------------------------------------------------


def one_bad(tmp_path, source, good_file, bad_record, kind="rankings", pattern="", name="bad.jsonl", **options):
    """Two good records, then `bad_record` on line 3: the error names line 3."""
    src = write_lines(tmp_path, name, [*good_lines(good_file, 2), (json.dumps(bad_record) + "\n").encode()])
    return expect_error(tmp_path, source, src, kind, rf"{re.escape(name)}:3: .*{pattern}", **options)


@pytest.mark.parametrize("bad,pattern", [
    ({"chosen": "\n\nHuman: hi\n\nAssistant: yo"}, "missing 'rejected'"),
    ({"chosen": "\n\nUser: hi\n\nBot: yo", "rejected": "\n\nUser: hi\n\nBot: no"}, "no '.*Human:'.*turn markers"),
    ({"chosen": "Hi\n\nHuman: a\n\nAssistant: b", "rejected": "x"}, "text before its first"),
    ({"chosen": "\n\nAssistant: a\n\nHuman: b\n\nAssistant: c", "rejected": "x"}, "turn 1 should be 'Human:'"),
    ({"chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c", "rejected": "x"}, "turn 2 should be 'Assistant:'"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected": "x"}, "must end with an .*Assistant:' turn"),
    ({"chosen": 5, "rejected": "x"}, "'chosen' must be a string, got int"),
])
def test_hh_rlhf_bad_records(tmp_path, bad, pattern):
    one_bad(tmp_path, "hh-rlhf", "hh_rlhf.jsonl", bad, pattern=pattern)


@pytest.mark.parametrize("bad,pattern", [
    ({"completions": []}, "missing 'instruction'"),
    ({"instruction": "q", "completions": "none"}, "'completions' must be a list"),
    ({"instruction": "q", "completions": [{"model": "m"}]}, r"'completions\[0\]' must be an object with a string 'response'"),
])
def test_ultrafeedback_bad_records(tmp_path, bad, pattern):
    one_bad(tmp_path, "ultrafeedback", "ultrafeedback.jsonl", bad, pattern=pattern)


def oasst_msg(mid, parent, tree, role="assistant", **extra):
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role, "text": "t", "rank": 0,
            **extra}


def test_oasst_bad_role_names_the_message_line(tmp_path):
    lines = good_lines("oasst_messages.jsonl", 8)  # tree t1 (lines 1-8), then t2 starts
    bad = oasst_msg("x", "t1", "t1", role="bot")
    lines.insert(3, (json.dumps(bad) + "\n").encode())
    src = write_lines(tmp_path, "oasst.jsonl", lines)
    expect_error(tmp_path, "oasst", src, "rankings", r"oasst\.jsonl:4: 'role' is 'bot'; expected 'prompter' or 'assistant'")


def test_oasst_structure_errors(tmp_path):
    base = good_lines("oasst_messages.jsonl", 15)
    # a message of tree t1 after tree t2 started: the table is not grouped by tree
    late = (json.dumps(oasst_msg("late", "t1", "t1")) + "\n").encode()
    src = write_lines(tmp_path, "order.jsonl", [*base[:11], late])
    expect_error(tmp_path, "oasst", src, "rankings", r"order\.jsonl:12: message of tree t1 comes after that tree ended")
    # an assistant answering an assistant
    loop = (json.dumps(oasst_msg("aa", "t1a", "t1")) + "\n").encode()
    src = write_lines(tmp_path, "loop.jsonl", [*base[:3], loop, *base[3:8]])
    expect_error(tmp_path, "oasst", src, "rankings", r"loop\.jsonl:4: assistant message aa replies to a assistant")
    # neither a message nor a tree
    src = write_lines(tmp_path, "what.jsonl", [*base[:2], b'{"text": "hello"}\n'])
    expect_error(tmp_path, "oasst", src, "rankings", r"what\.jsonl:3: not an OASST message")
    # a nested tree whose reply is not an object
    tree = json.loads(good_lines("oasst_trees.jsonl", 1)[0])
    tree["prompt"]["replies"].append("oops")
    src = write_lines(tmp_path, "tree.jsonl", [*good_lines("oasst_trees.jsonl", 2), (json.dumps(tree) + "\n").encode()])
    expect_error(tmp_path, "oasst", src, "rankings", r"tree\.jsonl:3: every message and reply of a tree must be an object")


@pytest.mark.parametrize("bad,pattern", [
    ({"prompt": "q", "chosen": "a"}, "needs both 'chosen' and 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "both be strings or both"),
    ({"prompt": [{"role": "user", "content": "q"}],
      "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "exactly one assistant message"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "robot", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, r"'chosen\[0\].role' is 'robot'"),
    ({"chosen": "same text", "rejected": "same text and more"}, "do not diverge"),
    ({"prompt": "q", "completion": "a", "label": True}, "not a preference row"),
])
def test_trl_bad_records(tmp_path, bad, pattern):
    one_bad(tmp_path, "trl", "trl_standard_explicit.jsonl", bad, pattern=pattern)


def test_argilla_bad_records(tmp_path):
    good = json.loads(good_lines("argilla_v2.jsonl", 1)[0])
    no_prompt = {**good, "fields": {k: v for k, v in good["fields"].items() if k != "prompt"}}
    one_bad(tmp_path, "argilla", "argilla_v2.jsonl", no_prompt, pattern="no prompt field")
    wrong_option = {**good, "responses": {"ranking": [{"value": ["response9", "response1"], "user_id": "u"}]}}
    one_bad(tmp_path, "argilla", "argilla_v2.jsonl", wrong_option, pattern="option 'response9' .* is not a text field")
    bad_item = {**good, "responses": {"ranking": [{"value": ["response1", {"x": 1}], "user_id": "u"}]}}
    one_bad(tmp_path, "argilla", "argilla_v2.jsonl", bad_item, pattern="ranking item 2 must be", question="ranking")


def test_labelstudio_bad_tasks(tmp_path):
    tasks = json.loads((SOURCE_FIXTURES / "labelstudio_ranker.json").read_text())
    bad = json.loads(json.dumps(tasks[0]))
    bad["annotations"][0]["result"][0]["value"]["ranker"]["answers"] = ["b", "zz"]
    src = tmp_path / "ranker.json"
    src.write_text(json.dumps([tasks[1], bad], indent=1))
    message = expect_error(tmp_path, "labelstudio", src, "rankings", r"ranked item id 'zz' is not in the task's items")
    line = int(re.match(r".*ranker\.json:(\d+):", message).group(1))
    assert src.read_text().splitlines()[line - 1].strip() == "{" and line > 2  # where the second task starts
    pair = json.loads((SOURCE_FIXTURES / "labelstudio_pairwise.json").read_text())[0]
    pair["annotations"][0]["result"][0]["value"]["selected"] = "middle"
    one_bad(tmp_path, "labelstudio", "labelstudio_ranker.json", pair, pattern="value.selected = 'left' or 'right'",
            name="pw.jsonl")
    one_bad(tmp_path, "labelstudio", "labelstudio_ranker.json", {"id": 1, "annotations": []},
            pattern="missing 'data'", name="nodata.jsonl")


@pytest.mark.parametrize("bad,pattern", [
    ({"instruction": "q", "input": ""}, r"missing 'output' \(Alpaca\) or 'response' \(Dolly\)"),
    ({"input": "x", "output": "y"}, "missing 'instruction'"),
    ({"instruction": "q", "input": ["x"], "output": "y"}, "'input' / 'context' must be a string"),
])
def test_alpaca_bad_records(tmp_path, bad, pattern):
    one_bad(tmp_path, "alpaca", "dolly.jsonl", bad, kind="instructions", pattern=pattern)


def test_unforeseen_record_shape_is_still_a_located_error(tmp_path):
    # `annotations` is a list of strings where the converter expects {id, ...} tasks' objects
    one_bad(tmp_path, "labelstudio", "labelstudio_ranker.json",
            {"data": {"prompt": "q", "items": []}, "annotations": [{"result": ["x"]}]},
            pattern=r"unexpected record shape \(AttributeError", name="shape.jsonl")


def test_skip_bad_rows_counts_and_lists_them(tmp_path):
    lines = [*good_lines("hh_rlhf.jsonl", 3), b'{"chosen": "\\n\\nUser: a", "rejected": "b"}\n', b"\xff\n",
             *good_lines("hh_rlhf.jsonl", 12)[3:]]
    src = write_lines(tmp_path, "mixed.jsonl", lines)
    result = convert("hh-rlhf", src, "rankings", tmp_path / "out.jsonl", skip_bad_rows=True)
    assert result.skipped["bad input rows"] == 2
    assert result.bad_rows[0].startswith(f"{src}:4: 'chosen' has no")
    assert result.bad_rows[1] == f"{src}:5: not valid UTF-8 (byte 0)"
    assert result.rows_written == 12
    assert "2 bad input rows" in result.summary()


def test_nothing_converted_is_an_error_without_output(tmp_path):
    same = b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: b"}\n'
    src = write_lines(tmp_path, "same.jsonl", [same])
    with pytest.raises(DataError, match="no rankings rows could be made from 1 records"):
        convert("hh-rlhf", src, "rankings", tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()


def test_lone_surrogate_escape_is_a_located_error(tmp_path):
    bad = b'{"prompt": "q\\ud800", "chosen": "a", "rejected": "b"}\n'
    src = write_lines(tmp_path, "sur.jsonl", [*good_lines("trl_standard_explicit.jsonl", 2), bad])
    expect_error(tmp_path, "trl", src, "rankings", r"sur\.jsonl:3: the row cannot be written as UTF-8 JSON")
