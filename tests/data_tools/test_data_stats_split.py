"""Statistics (hand-computed cases) and the stage split (no prompt in two stages)."""

import json

import pytest
from data_tools_cases import read_jsonl

from data_tools.split import assign_prompts, parse_ratios, split_for_stages
from data_tools.stats import compute_stats, format_stats, percentiles, ranking_stats, validate_data
from rlhf_stack.data import prompt_key, row_prompt
from rlhf_stack.errors import DataError


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_percentiles_nearest_rank():
    # n = 10: p50 -> rank ceil(5) = 5 -> 5; p90 -> rank 9 -> 9; p95 -> rank ceil(9.5) = 10 -> 10
    assert percentiles(list(range(10, 0, -1))) == {"p50": 5, "p90": 9, "p95": 10, "p99": 10, "max": 10, "mean": 5.5}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7, "mean": 7.0}
    assert percentiles([]) == {}


def test_ranking_stats_by_hand():
    rows = [{"completions": ["a", "b", "c"], "ranks": [1, 2, 3], "annotator": "x"},   # 3 ordered pairs
            {"completions": ["a", "b"], "ranks": [1, 1], "annotator": "y"},           # all tied: 0 pairs
            {"completions": ["a", "b", "c"], "ranks": [1, 2, 2]}]                     # 2 pairs, a tie
    stats = ranking_stats(rows)
    assert stats["k_distribution"] == {2: 1, 3: 2}
    assert stats["tie_rate"] == 0.6667 and stats["all_tied_rate"] == 0.3333
    assert stats["comparisons"] == 5
    assert stats["annotators"] == {"x": 1, "y": 1, "(none)": 1}


def test_compute_stats_prompts_lengths_and_leakage(tmp_path):
    rows = [{"prompt": "abcd", "completions": ["xy", "xyz"], "ranks": [1, 2], "annotator": "a"},
            {"prompt": "abcd", "completions": ["xy", "xyz"], "ranks": [2, 1], "annotator": "b"},
            {"prompt": "efghij", "completions": ["x", "long answer"], "ranks": [1, 1]}]
    train = write(tmp_path / "train.jsonl", rows)
    held = write(tmp_path / "eval.jsonl", [{"prompt": "efghij"}, {"prompt": "new"}])
    stats = compute_stats(train, "rankings", max_length=8, against=[held])
    assert stats["rows"] == 3
    assert stats["prompts"] == {"distinct": 2, "rows_repeating_a_prompt": 1, "prompts_in_several_rows": 1,
                                "max_rows_per_prompt": 2}
    # character lengths: prompts 4, 4, 6; sequences 4+2, 4+3, 4+2, 4+3, 6+1, 6+11
    assert stats["lengths"]["unit"] == "chars"
    assert stats["lengths"]["prompt"]["max"] == 6
    assert sorted(stats["lengths"]["sequence"].values())[-1] == 17
    assert stats["lengths"]["sequences_over_max_length"] == 1
    assert stats["overlap"] == [{"file": str(held), "other_prompts": 2, "shared_prompts": 1, "share_of_this": 0.5}]
    text = format_stats(stats)
    assert "K=2: 3" in text and "shared prompts with" in text and "over max_length 8: 1" in text


def test_token_lengths_follow_the_chat_template(tmp_path, tiny_model_dir):
    pytest.importorskip("transformers", reason="token counts need transformers")
    from rlhf_stack.modeling import load_tokenizer

    rows = [{"prompt": "Tell me about cats.", "response": "Cats are small."},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]}]
    path = write(tmp_path / "sft.jsonl", rows)
    stats = compute_stats(path, "instructions", tokenizer=str(tiny_model_dir), max_length=10)
    tok = load_tokenizer(str(tiny_model_dir))
    full = [tok.apply_chat_template([{"role": "user", "content": "Tell me about cats."},
                                     {"role": "assistant", "content": "Cats are small."}], tokenize=True,
                                    return_dict=True)["input_ids"],
            tok.apply_chat_template(rows[1]["messages"], tokenize=True, return_dict=True)["input_ids"]]
    assert stats["lengths"]["unit"] == "tokens"
    assert stats["lengths"]["sequence"]["max"] == max(len(f) for f in full)
    assert stats["lengths"]["sequences_over_max_length"] == sum(len(f) > 10 for f in full)
    assert stats["turns"] == {2: 2}


def test_stats_refuses_invalid_files(tmp_path):
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "p", "completions": ["a"], "ranks": [1]}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: K = 1"):
        compute_stats(bad, "rankings")


def test_validate_lists_every_bad_row_up_to_the_cap(tmp_path):
    rows = [{"prompt": "p", "response": ""}] * 5 + [{"prompt": "ok", "response": "fine"}]
    path = write(tmp_path / "sft.jsonl", rows)
    with pytest.raises(DataError) as info:
        validate_data(path, "instructions", max_errors=3)
    lines = str(info.value).splitlines()
    assert lines[:3] == [f"{path}:{n}: 'response' is empty" for n in (1, 2, 3)]
    assert lines[3] == f"... and 2 more bad rows in {path}"
    assert validate_data(write(tmp_path / "ok.jsonl", rows[5:]), "instructions") == 1


def test_parse_ratios_and_assignment_sizes():
    assert parse_ratios("2:4:4") == [0.2, 0.4, 0.4] == parse_ratios("2,4,4")
    with pytest.raises(DataError, match="must be numbers"):
        parse_ratios("a:b")
    with pytest.raises(DataError, match="not all 0"):
        parse_ratios("0:0")
    keys = [f"prompt {i}" for i in range(20)]
    parts = assign_prompts(keys + keys[:5], [0.2, 0.4, 0.4], seed=1)  # repeats change nothing
    sizes = [sum(p == n for p in parts.values()) for n in range(3)]
    assert sizes == [4, 8, 8] and set(parts) == set(keys)
    assert assign_prompts(keys, [0.2, 0.4, 0.4], seed=1) == parts
    assert assign_prompts(keys, [0.2, 0.4, 0.4], seed=2) != parts


def test_split_gives_each_stage_its_own_prompts(tmp_path):
    rows = []
    for i in range(30):
        for annotator in ("a", "b") if i % 3 == 0 else ("a",):
            rows.append({"prompt": f"Question {i}?", "completions": [f"good {i}", f"bad {i}"],
                         "ranks": [1, 2] if annotator == "a" else [2, 1], "annotator": annotator})
    src = write(tmp_path / "all.jsonl", rows)
    written = split_for_stages(src, "rankings", "2:4:4", tmp_path / "out")
    assert set(written) == {"sft", "reward", "ppo"}
    data = {stage: read_jsonl(path) for stage, (path, _) in written.items()}
    prompts = {stage: {prompt_key(row_prompt(r)) for r in rs} for stage, rs in data.items()}
    assert not prompts["sft"] & prompts["reward"] and not prompts["sft"] & prompts["ppo"]
    assert not prompts["reward"] & prompts["ppo"]
    assert [len(prompts[s]) for s in ("sft", "reward", "ppo")] == [6, 12, 12]
    # SFT takes the first row's best completion, once per prompt; the reward stage keeps both annotators
    assert all(r["response"].startswith("good") for r in data["sft"]) and len(data["sft"]) == 6
    reward_rows = sum(1 for r in rows if r["prompt"] in prompts["reward"])
    assert len(data["reward"]) == reward_rows
    assert set(data["ppo"][0]) == {"prompt"}
    for stage, kind in (("sft", "instructions"), ("reward", "rankings"), ("ppo", "prompts")):
        assert validate_data(written[stage][0], kind) == len(data[stage])


def test_split_rejects_impossible_requests(tmp_path):
    src = write(tmp_path / "sft.jsonl", [{"prompt": f"p{i}", "response": "r"} for i in range(4)])
    with pytest.raises(DataError, match="instructions rows cannot feed the reward stage"):
        split_for_stages(src, "instructions", "1:1:1", tmp_path / "out")
    written = split_for_stages(src, "instructions", "1:0:1", tmp_path / "out")
    assert set(written) == {"sft", "ppo"}
    with pytest.raises(DataError, match="2 ratios for 3 stages"):
        split_for_stages(src, "instructions", "1:1", tmp_path / "out")
    tiny = write(tmp_path / "one.jsonl", [{"prompt": "only", "response": "r"}])
    with pytest.raises(DataError, match="too few distinct prompts"):
        split_for_stages(tiny, "instructions", "1:0:1", tmp_path / "out2")
