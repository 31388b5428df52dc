"""The candidates file: good files load; bad ones fail `serve` with `path:line: problem`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from labeler_helpers import REPO, sample_items, write_candidates

from data_tools.labeler.candidates import Candidate, item_id_for, load_candidates
from data_tools.labeler.server import ServeSettings, prepare
from rlhf_stack.errors import DataError

GOOD = json.dumps({"id": "ok", "prompt": "Hi", "completions": ["a", "b"]})


def test_good_file_loads(candidates_file):
    items = load_candidates(candidates_file)
    assert [c.id for c in items] == ["item-0", "item-1", "item-2"]
    assert items[1].lineno == 2 and items[0].completions[2] == "Fruit answer 0.2"
    assert items[0].to_row() == sample_items()[0]


def test_chat_prompt_and_extras_round_trip(tmp_path):
    row = {"id": "c", "prompt": [{"role": "user", "content": "Hi"}], "completions": ["a", "b", "c"],
           "sampling": {"temperature": 0.7}, "model": "ckpt"}
    (item,) = load_candidates(write_candidates(tmp_path / "c.jsonl", [row]))
    assert item == Candidate(**row, source=str(tmp_path / "c.jsonl"), lineno=1)


@pytest.mark.parametrize("line, problem", [
    ('{"id": "x", "prompt": "Hi", "completions": ["a", "b"]', "invalid JSON"),
    ('{"id": "x", "prompt": "Hi", "completions": ["only one"]}', "K = 1"),
    ('{"id": "x", "prompt": "Hi", "completions": ' + json.dumps([str(i) for i in range(10)]) + "}", "K = 10"),
    ('{"id": "x", "prompt": "Hi"}', "missing 'completions'"),
    ('{"prompt": "Hi", "completions": ["a", "b"]}', "missing 'id'"),
    ('{"id": "x", "completions": ["a", "b"]}', "missing 'prompt'"),
    ('{"id": "x", "prompt": "Hi", "completions": ["a", "  "]}', "completion 1 is empty"),
    ('{"id": "x", "prompt": "Hi", "completions": ["a", "a"]}', "duplicate completions"),
    ('{"id": "ok", "prompt": "Hi", "completions": ["a", "b"]}', "duplicate id 'ok' (first on line 1)"),
    ('{"id": "x", "prompt": "", "completions": ["a", "b"]}', "'prompt' is empty"),
    ('{"id": "x", "prompt": "Hi", "completions": ["a", "b"], "rank": [1, 2]}', "unknown key(s) rank"),
    ('["not", "an", "object"]', "must be a JSON object"),
])
def test_bad_line_reports_path_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        load_candidates(path)
    assert str(err.value).startswith(f"{path}:2: ")
    assert problem in str(err.value)


def test_every_bad_line_is_listed(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n' + GOOD + "\nnot json\n")
    message = str(pytest.raises(DataError, load_candidates, path).value)
    assert f"{path}:1: " in message and f"{path}:3: invalid JSON" in message


def test_serve_refuses_bad_file_before_touching_the_db(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + '\n{"id": "y", "prompt": "Hi", "completions": ["a"]}\n')
    settings = ServeSettings(db=tmp_path / "labels.sqlite")
    with pytest.raises(DataError, match=rf"{path}:2: K = 1"):
        prepare(settings, path)
    assert not settings.db.exists()


def test_serve_command_prints_path_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n")
    proc = subprocess.run([sys.executable, "-m", "data_tools.labeler", "serve", str(path), "--db",
                           str(tmp_path / "l.sqlite")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {path}:1: invalid JSON") and "Traceback" not in proc.stderr


def test_reimport_with_changed_content_is_refused(tmp_path, candidates_file):
    settings = ServeSettings(db=tmp_path / "labels.sqlite")
    assert prepare(settings, candidates_file)["added"] == 3
    assert prepare(settings, candidates_file) == {"added": 0, "already_present": 3, "items": 3}
    changed = sample_items()
    changed[1]["completions"][0] = "something else"
    path = write_candidates(tmp_path / "changed.jsonl", changed)
    with pytest.raises(DataError, match=rf"{path}:2: item 'item-1' is already in the database"):
        prepare(settings, path)


def test_item_id_is_stable_and_prompt_based():
    assert item_id_for("Hi ") == item_id_for("Hi") != item_id_for("Hello")
    assert item_id_for([{"role": "user", "content": "Hi"}]).startswith("p-")
