"""Each source fixture converts into rows that `data validate` passes, with the values we expect."""

import json

import pytest
from data_tools_cases import CASES, SOURCE_FIXTURES, read_jsonl

from data_tools.convert import (
    convert,
    convert_alpaca,
    convert_argilla,
    convert_hh_rlhf,
    convert_labelstudio,
    convert_oasst,
    convert_trl,
    convert_ultrafeedback,
    describe_sources,
    iter_converted,
)
from data_tools.stats import validate_data
from rlhf_stack.data import load_rankings
from rlhf_stack.errors import DataError

ALL = [(source, name, kind) for source, name, kinds in CASES for kind in kinds]


@pytest.mark.parametrize("source,name,kind", ALL, ids=[f"{s}:{n}:{k}" for s, n, k in ALL])
def test_every_fixture_converts_to_rows_that_validate(tmp_path, source, name, kind):
    out = tmp_path / f"{kind}.jsonl"
    result = convert(source, SOURCE_FIXTURES / name, kind, out)
    assert result.rows_written > 0
    assert validate_data(out, kind) == result.rows_written == len(read_jsonl(out))
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_source_has_a_fixture_and_a_python_function():
    covered = {source for source, _, _ in CASES}
    assert covered == {name for name, _, _ in describe_sources()}
    for fn in (convert_hh_rlhf, convert_ultrafeedback, convert_oasst, convert_trl, convert_argilla,
               convert_labelstudio, convert_alpaca):
        assert fn.__doc__


def test_hh_rlhf_shared_turns_become_the_prompt(tmp_path):
    result = convert_hh_rlhf(SOURCE_FIXTURES / "hh_rlhf.jsonl", tmp_path / "rm.jsonl")
    rows = read_jsonl(tmp_path / "rm.jsonl")
    assert rows[0] == {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
                       "completions": ["The capital of France is Paris.", "France is in Europe."], "ranks": [1, 2]}
    multi = rows[10]  # the bread conversation: 3 shared turns, then the two assistant replies
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user"]
    assert multi["completions"][0].startswith("Then dissolve it")
    # the identical pair and the exact repeat are counted, not written
    assert result.skipped == {"identical chosen and rejected responses": 1, "duplicate rankings rows": 1}
    assert result.rows_read == 14 and result.rows_written == 12


def test_hh_rlhf_instructions_are_the_chosen_conversation(tmp_path):
    convert_hh_rlhf(SOURCE_FIXTURES / "hh_rlhf.jsonl", tmp_path / "sft.jsonl", to="instructions")
    rows = read_jsonl(tmp_path / "sft.jsonl")
    assert rows[10]["messages"][-1] == {"role": "assistant",
                                        "content": "Then dissolve it in warm water with a pinch of sugar first."}
    assert len(rows[10]["messages"]) == 4


def test_ultrafeedback_ratings_become_ranks_with_ties(tmp_path):
    convert_ultrafeedback(SOURCE_FIXTURES / "ultrafeedback.jsonl", tmp_path / "rm.jsonl")
    rows = read_jsonl(tmp_path / "rm.jsonl")
    # record 0: fine-grained scores 5, 4, 2, 1 -> ranks 1..4; record 1: 5, 4, 2, 2 -> the last two tie
    assert rows[0]["ranks"] == [1, 2, 3, 4] and rows[0]["ratings"] == [5.0, 4.0, 2.0, 1.0]
    assert rows[1]["ranks"] == [1, 2, 3, 3]
    # record 3 lost fine-grained_score on its last completion: the mean of the rated aspects stands in
    # (helpfulness "N/A"; honesty, instruction_following, truthfulness = 2 -> 2.0)
    assert rows[3]["ratings"][3] == 2.0
    tied = [r for r in load_rankings(tmp_path / "rm.jsonl") if not r.all_tied]
    assert len(tied) == 8


def test_ultrafeedback_overall_score_option(tmp_path):
    convert_ultrafeedback(SOURCE_FIXTURES / "ultrafeedback.jsonl", tmp_path / "rm.jsonl", rating="overall_score")
    rows = read_jsonl(tmp_path / "rm.jsonl")
    assert rows[0]["ratings"] == [9.0, 7.5, 3.0, 2.0]
    with pytest.raises(DataError, match="rating must be one of"):
        convert_ultrafeedback(SOURCE_FIXTURES / "ultrafeedback.jsonl", tmp_path / "x.jsonl", rating="stars")


def test_oasst_flat_table_sibling_ranks_and_top_path(tmp_path):
    convert_oasst(SOURCE_FIXTURES / "oasst_messages.jsonl", tmp_path / "rm.jsonl")
    rows = read_jsonl(tmp_path / "rm.jsonl")
    by_id = {r["id"]: r for r in rows}
    # the deleted reply t1d is gone; oasst rank 0 -> our rank 1
    assert by_id["t1"]["ranks"] == [1, 2, 3] and len(by_id["t1"]["completions"]) == 3
    # a second-level ranking carries the whole conversation as its prompt
    assert [m["role"] for m in by_id["t1a1"]["prompt"]] == ["user", "assistant", "user"]
    # tree t2 lists its replies rank 1, 0, 2
    assert by_id["t2"]["ranks"] == [2, 1, 3]
    convert_oasst(SOURCE_FIXTURES / "oasst_messages.jsonl", tmp_path / "sft.jsonl", to="instructions")
    top = read_jsonl(tmp_path / "sft.jsonl")[0]["messages"]
    assert [m["content"][:12] for m in top] == ["How do I kee", "Give it a su", "What if I ha", "Use a small "]


def test_oasst_lang_option_and_nested_trees(tmp_path):
    result = convert_oasst(SOURCE_FIXTURES / "oasst_messages.jsonl", tmp_path / "en.jsonl", to="prompts", lang="en")
    assert [r["prompt"][:7] for r in read_jsonl(tmp_path / "en.jsonl")] == ["How do ", "Explain"]
    assert result.skipped == {"tree whose first message was deleted, failed review or is in another language": 1}
    convert_oasst(SOURCE_FIXTURES / "oasst_trees.jsonl", tmp_path / "rm.jsonl")
    rows = read_jsonl(tmp_path / "rm.jsonl")
    assert [r["id"] for r in rows] == ["m1", "m2", "m2b1"]
    assert rows[2]["prompt"][-1] == {"role": "user", "content": "Where does it happen?"}


def test_trl_variants_agree(tmp_path):
    outputs = {}
    for variant in ("standard_explicit", "conversational_explicit", "conversational_implicit"):
        convert_trl(SOURCE_FIXTURES / f"trl_{variant}.jsonl", tmp_path / f"{variant}.jsonl")
        outputs[variant] = read_jsonl(tmp_path / f"{variant}.jsonl")
    assert outputs["standard_explicit"][0]["prompt"] == "What is the capital of France?"
    assert outputs["conversational_explicit"][0]["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    # the implicit prompt keeps the system turn; the string `prompt` beside conversations is ignored (as TRL does)
    assert outputs["conversational_implicit"][0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert outputs["conversational_implicit"][0]["id"] == "p0"
    completions = {v: [r["completions"] for r in rows] for v, rows in outputs.items()}
    assert completions["standard_explicit"] == completions["conversational_explicit"] == completions["conversational_implicit"]


def test_trl_standard_implicit_prompt_ends_on_a_word_boundary(tmp_path):
    convert_trl(SOURCE_FIXTURES / "trl_standard_implicit.jsonl", tmp_path / "rm.jsonl")
    row = read_jsonl(tmp_path / "rm.jsonl")[5]
    # "7 times 6 is 42." vs "7 times 6 is 36.": TRL would cut at the differing character
    assert row["prompt"] == "Question: What is 7 times 6? Answer: 7 times 6 is "
    assert row["completions"] == ["42.", "36."]


def test_argilla_shapes_give_the_same_rankings(tmp_path):
    v2 = list(iter_converted("argilla", SOURCE_FIXTURES / "argilla_v2.jsonl", "rankings"))
    flat = list(iter_converted("argilla", SOURCE_FIXTURES / "argilla_v2_flat.jsonl", "rankings"))
    submitted_first = [r for r in v2 if r["annotator"] == "ann-1"]
    assert submitted_first == flat
    assert flat[0]["completions"][0] == "The capital of France is Paris." and flat[0]["ranks"] == [1, 2, 3]
    # ann-2's drafts (even records) are skipped; their submitted ones kept
    assert sum(r["annotator"] == "ann-2" for r in v2) == 4
    v1 = list(iter_converted("argilla", SOURCE_FIXTURES / "argilla_v1.json", "rankings"))
    v1_ds = list(iter_converted("argilla", SOURCE_FIXTURES / "argilla_v1_datasets.jsonl", "rankings"))
    assert v1 == v1_ds
    assert v1[0]["ranks"] == [1, 1, 2] and v1[1]["ranks"] == [1, 2, 3]  # v1 ranks may tie
    drafts = list(iter_converted("argilla", SOURCE_FIXTURES / "argilla_v2.jsonl", "rankings",
                                 statuses="submitted,draft"))
    assert len(drafts) == 16


def test_labelstudio_ranker_buckets_tie_and_pairwise_picks_a_side(tmp_path):
    rows = list(iter_converted("labelstudio", SOURCE_FIXTURES / "labelstudio_ranker.json", "rankings"))
    assert rows[0]["ranks"] == [1, 2, 3] and rows[0]["annotator"] == "1" and rows[0]["id"] == "100"
    assert rows[1]["ranks"] == [1, 1, 2]  # buckets good=[b, c], bad=[a]
    pairs = list(iter_converted("labelstudio", SOURCE_FIXTURES / "labelstudio_pairwise.json", "rankings"))
    assert len(pairs) == 8
    for row in pairs:
        best = row["completions"][row["ranks"].index(1)]
        assert "Europe" not in best and "six legs" not in best
        assert row["annotator"] == "ann@example.com"
    flipped = list(iter_converted("labelstudio", SOURCE_FIXTURES / "labelstudio_pairwise.json", "rankings",
                                  left_field="answer2", right_field="answer1"))
    # swapping which field is "left" turns the same selection into the opposite preference
    for a, b in zip(flipped, pairs, strict=True):
        assert a["completions"][a["ranks"].index(1)] == b["completions"][b["ranks"].index(2)]


def test_alpaca_and_dolly_prompts(tmp_path):
    result = convert_alpaca(SOURCE_FIXTURES / "alpaca.json", tmp_path / "sft.jsonl")
    rows = read_jsonl(tmp_path / "sft.jsonl")
    assert rows[2]["prompt"] == "Name a primary colour.\n\nAnswer in one word."
    assert result.skipped == {"empty output": 1}
    dolly = list(iter_converted("alpaca", SOURCE_FIXTURES / "dolly.jsonl", "instructions"))
    assert dolly[0] == {"prompt": "What is the capital of France?\n\nUse general knowledge.",
                        "response": "The capital of France is Paris."}


def test_wrong_kind_and_unknown_option_and_source(tmp_path):
    with pytest.raises(DataError, match="converts to instructions, prompts, not 'rankings'"):
        convert("alpaca", SOURCE_FIXTURES / "alpaca.json", "rankings", tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="unknown option.*colour.*allowed: rating"):
        convert("ultrafeedback", SOURCE_FIXTURES / "ultrafeedback.jsonl", "rankings", tmp_path / "x.jsonl", colour="red")
    with pytest.raises(DataError, match="unknown source 'reddit'"):
        convert("reddit", SOURCE_FIXTURES / "alpaca.json", "prompts", tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_output_may_not_overwrite_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes((SOURCE_FIXTURES / "trl_standard_explicit.jsonl").read_bytes())
    with pytest.raises(DataError, match="overwrite the input"):
        convert("trl", src, "rankings", src)


def test_speed_benchmark_runs_on_a_small_file():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "convert_speed.py"
    out = subprocess.run([sys.executable, str(script), "--rows", "1000"], capture_output=True, text=True, check=True)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["source"] for r in results} == {"trl-pairs", "ultrafeedback"}
    assert all(r["written"] == r["rows"] and r["rows_per_s"] > 0 for r in results)
