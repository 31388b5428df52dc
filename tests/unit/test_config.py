"""Config loading: YAML + overrides, and one readable error for every kind of mistake."""

import pytest

from rlhf_stack.config import ModelConfig, apply_overrides, describe, load_config, parse_override
from rlhf_stack.errors import ConfigError
from rlhf_stack.sft import SFTConfig


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: m\n  lora:\n    r: 4\ndata:\n  path: d.jsonl\n")
    cfg = load_config(SFTConfig, path, ["train.learning_rate=1e-5", "model.lora.target_modules=[q_proj,v_proj]",
                                        "model.tuning=full"])
    assert cfg.model.lora.r == 4
    assert cfg.train.learning_rate == 1e-5
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.tuning == "full"
    assert cfg.max_length == 512  # default lives on the field


def test_unknown_key_names_path_line_and_allowed_keys(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: m\n  lora:\n    rank: 4\ndata:\n  path: d.jsonl\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    msg = str(err.value)
    assert f"{path}:4" in msg and "model.lora.rank" in msg
    assert "alpha, dropout, last_n_layers, r, target_modules" in msg


def test_wrong_type_and_missing_required(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: m\n  tuning: lorra\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path, ["train.batch_size=many"])
    msg = str(err.value)
    assert "model.tuning" in msg and "'lorra'" in msg
    assert "train.batch_size" in msg
    assert "missing required key 'data'" in msg


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "model:\n  name_or_path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:\d+: invalid YAML"):
        load_config(SFTConfig, path)


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(SFTConfig, "/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_every_field_documented():
    # One source of truth per field: each has a docstring that `rlhf-stack config show` prints.
    from rlhf_stack.dpo.stage import DPOConfig

    for cls in (SFTConfig, ModelConfig, DPOConfig):
        undocumented = [key for key, _, _, doc in describe(cls) if not doc]
        assert not undocumented, undocumented
