"""Acceptance: each converter's fixture -> a file `data validate` passes -> the matching stage trains on it.

One tiny-model run (2 optimizer steps) per source and kind: instructions feed SFT, rankings feed
the reward model. Every fixture variant of a source is converted and validated in
test_data_convert.py; here one per source goes all the way through training.
"""

import math

import pytest
from data_tools_cases import SOURCE_FIXTURES

from data_tools.convert import convert
from data_tools.stats import validate_data
from rlhf_stack.config import load_config

pytestmark = pytest.mark.slow

SFT_CASES = [("hh-rlhf", "hh_rlhf.jsonl"), ("ultrafeedback", "ultrafeedback.jsonl"),
             ("oasst", "oasst_messages.jsonl"), ("trl", "trl_conversational_implicit.jsonl"),
             ("alpaca", "alpaca.json")]
REWARD_CASES = [("hh-rlhf", "hh_rlhf.jsonl"), ("ultrafeedback", "ultrafeedback.jsonl"),
                ("oasst", "oasst_trees.jsonl"), ("trl", "trl_standard_explicit.jsonl"),
                ("argilla", "argilla_v1.json"), ("labelstudio", "labelstudio_ranker.json")]

QUICK = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1, "warmup_ratio": 0.0,
         "early_stopping_patience": None, "save_total_limit": 1}
TINY_LORA = {"tuning": "lora", "lora": {"r": 4, "alpha": 8}}


def converted(tmp_path, source, name, kind):
    out = tmp_path / f"{kind}.jsonl"
    result = convert(source, SOURCE_FIXTURES / name, kind, out)
    assert validate_data(out, kind) == result.rows_written > 0
    return out


@pytest.mark.parametrize("source,name", SFT_CASES, ids=[s for s, _ in SFT_CASES])
def test_converted_instructions_train_sft(tmp_path, tiny_model_dir, source, name):
    from rlhf_stack import sft
    data = converted(tmp_path, source, name, "instructions")
    cfg = load_config(sft.SFTConfig, {
        "model": {"name_or_path": str(tiny_model_dir), **TINY_LORA},
        "data": {"path": str(data), "eval_fraction": 0.0},
        "train": QUICK, "output_dir": str(tmp_path / "sft"), "max_length": 128, "eval_before_training": False,
    })
    result = sft.train_sft(cfg)
    assert result.metrics["steps"] == 2 and math.isfinite(result.metrics["train_loss"])
    assert (result.checkpoint / "stage.json").is_file()


@pytest.mark.parametrize("source,name", REWARD_CASES, ids=[s for s, _ in REWARD_CASES])
def test_converted_rankings_train_the_reward_model(tmp_path, tiny_model_dir, source, name):
    from rlhf_stack import reward
    data = converted(tmp_path, source, name, "rankings")
    cfg = load_config(reward.RewardConfig, {
        "model": {"name_or_path": str(tiny_model_dir), **TINY_LORA},
        "data": {"path": str(data), "eval_fraction": 0.0},
        "train": QUICK, "output_dir": str(tmp_path / "rm"), "max_length": 128,
    })
    result = reward.train_reward(cfg)
    assert result.metrics["steps"] == 2 and math.isfinite(result.metrics["train_loss"])
    assert result.metrics["n_train"] >= 2 and (result.checkpoint / "stage.json").is_file()
