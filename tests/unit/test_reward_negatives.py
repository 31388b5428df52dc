"""Off-prompt negatives (`reward/negatives.py`): what each ranking gains, and the held-out metric."""

import pytest
import torch

from rlhf_stack.data import preferred_pairs
from rlhf_stack.reward import negatives
from rlhf_stack.reward.negatives import add_off_prompt_negatives, off_prompt_accuracy

ROWS = [
    {"prompt": "What is rain?", "completions": ["Water falling.", "Clouds cry."], "ranks": [1, 2]},
    {"prompt": "What is rain?", "completions": ["Water falling.", "Clouds cry."], "ranks": [2, 1], "annotator": "b"},
    {"prompt": "Name a cat.", "completions": ["Tom.", "Felix.", "A dog."], "ranks": [1, 1, 2]},
    {"prompt": "Count to two.", "completions": ["One, two.", "Two."], "ranks": [1, 2]},
]


@pytest.mark.parametrize("seed", range(6))
def test_each_ranking_gains_answers_to_other_prompts_ranked_below_its_own(seed):
    out = add_off_prompt_negatives(ROWS, 2, seed=seed)
    for row, new in zip(ROWS, out, strict=True):
        k = len(row["completions"])
        assert new["completions"][:k] == row["completions"] and new["ranks"][:k] == row["ranks"]
        assert new["ranks"][k:] == [max(row["ranks"]) + 1] * 2
        others = {c for r in ROWS if r["prompt"] != row["prompt"] for c in r["completions"]}
        assert set(new["completions"][k:]) <= others
        # every own completion now beats each negative; the negatives tie with each other
        assert len(preferred_pairs(new["ranks"])) == len(preferred_pairs(row["ranks"])) + 2 * k
    assert ROWS[0]["ranks"] == [1, 2] and len(ROWS[0]["completions"]) == 2  # the input is not modified


def test_labelers_of_one_completion_set_get_the_same_negatives_and_the_draw_is_seeded():
    out = add_off_prompt_negatives(ROWS, 1, seed=3)
    assert out[0]["completions"] == out[1]["completions"]  # so group_labelers still scores the set once
    assert out == add_off_prompt_negatives(ROWS, 1, seed=3)
    draws = {tuple(r["completions"][-1] for r in add_off_prompt_negatives(ROWS, 1, seed=s)) for s in range(8)}
    assert len(draws) > 1
    assert add_off_prompt_negatives(ROWS, 0, seed=0) == ROWS


def test_one_prompt_has_no_other_prompts_to_draw_from():
    with pytest.raises(ValueError, match="at least 2 different prompts"):
        add_off_prompt_negatives(ROWS[:2], 1, seed=0)


class _Tokenizer:
    """Encodes a conversation as one id per character of the response (no template)."""

    pad_token_id = 0

    def apply_chat_template(self, messages, tokenize, return_dict):
        return {"input_ids": [ord(ch) for ch in messages[-1]["content"]]}


SCORES = {"Water falling.": 3.0, "Clouds cry.": -1.0, "Tom.": 0.5, "Felix.": 2.0, "A dog.": -2.0, "One, two.": 1.0,
          "Two.": 0.5}  # ties "Tom.": a tie is no win


@pytest.mark.parametrize("seed", range(4))
def test_off_prompt_accuracy_counts_own_answers_scored_above_the_negative(monkeypatch, seed):
    # a "reward model" with a fixed score per answer: count by hand what it gets right
    monkeypatch.setattr(negatives, "score_sequences", lambda model, seqs, pad, batch, device, groups: torch.tensor(
        [SCORES["".join(map(chr, s))] for s in seqs]))
    model = torch.nn.Linear(1, 1)
    sets = [ROWS[0], ROWS[2], ROWS[3]]  # ROWS[1] is ROWS[0]'s completion set: counted once
    drawn = [r["completions"][-1] for r in add_off_prompt_negatives(sets, 1, seed=seed)]
    wins = sum(SCORES[c] > SCORES[neg] for row, neg in zip(sets, drawn, strict=True) for c in row["completions"])
    assert off_prompt_accuracy(model, _Tokenizer(), ROWS, 64, 8, seed=seed) == pytest.approx(wins / 7)
    assert off_prompt_accuracy(model, _Tokenizer(), ROWS[:2], 64, 8, seed=5) is None
