"""`rlhf-stack dpo` as a user runs it (a subprocess), `config show dpo`, and DPO in a recipe:
after `reward`, before `ppo`, fed by `@sft` and referable as `@dpo`, run and reused by the runner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_stack.errors import ConfigError
from rlhf_stack.pipeline import runner

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "tests" / "fixtures" / "tiny-llama")


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_stack.cli", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def dpo_config(tmp_path, rankings_file) -> Path:
    cfg = {"policy": {"name_or_path": TINY, "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
           "data": {"path": str(rankings_file), "eval_fraction": 0.25},
           "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1},
           "output_dir": str(tmp_path / "dpo"), "max_length": 64}
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.e2e
def test_rlhf_stack_dpo_runs(dpo_config, tmp_path):
    done = cli("dpo", "--config", str(dpo_config), "--set", "beta=0.2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"checkpoint: {tmp_path / 'dpo'}" in done.stdout and "eval_pairwise_accuracy" in done.stdout
    info = json.loads((tmp_path / "dpo" / "stage.json").read_text())
    assert info["stage"] == "dpo" and info["config"]["beta"] == 0.2 and info["metrics"]["steps"] == 2


def test_a_bad_value_is_one_error_line_and_exit_code_2(dpo_config, tmp_path, monkeypatch, capsys):
    from rlhf_stack.cli import main

    monkeypatch.setattr(sys, "argv", ["rlhf-stack", "dpo", "--config", str(dpo_config), "--set", "beta=-1"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and "beta: Input should be greater than 0" in err
    assert not (tmp_path / "dpo").exists()


def test_config_show_dpo_lists_every_key():
    from rlhf_stack.cli import app

    shown = CliRunner().invoke(app, ["config", "show", "dpo"])
    assert shown.exit_code == 0
    for key in ("policy.name_or_path", "data.path", "train.learning_rate", "loss", "beta", "max_length",
                "share_prompt"):
        assert f"{key}  [" in shown.stdout, key


def test_dpo_sits_between_reward_and_ppo_in_a_recipe(rankings_file):
    from rlhf_stack.pipeline.stages import ORDER, REFERABLE

    assert ORDER.index("reward") < ORDER.index("dpo") < ORDER.index("ppo") and "dpo" in REFERABLE
    model = {"name_or_path": TINY, "tuning": "lora"}
    recipe = {"sft": {"model": model, "data": {"path": str(rankings_file)}},
              "dpo": {"policy": {"name_or_path": "@sft"}, "data": {"path": str(rankings_file)}},
              "ppo": {"policy": {"name_or_path": "@dpo"}, "prompts": {"path": str(rankings_file)}},
              "evaluation": {"policy": "@dpo", "baseline": "@sft", "prompts": str(rankings_file)}}
    loaded, _ = runner.load_recipe(recipe)
    assert loaded.dpo.policy.name_or_path == "@sft"
    early = {"sft": recipe["sft"], "dpo": recipe["dpo"],
             "reward": {"model": model, "init_from": "@dpo", "data": {"path": str(rankings_file)}}}
    with pytest.raises(ConfigError, match=r"reward.init_from: '@dpo' is not an earlier stage"):
        runner.load_recipe(early)


@pytest.fixture
def one_thread():
    # The tiny model gains nothing from threads; on a busy 2-core machine two spin against each other.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.e2e
def test_the_runner_runs_dpo_from_an_sft_adapter_and_reuses_it(tmp_path, rankings_file, one_thread):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft_dir = tmp_path / "sft"  # what the SFT stage hands on under LoRA: an adapter over the base
    get_peft_model(AutoModelForCausalLM.from_pretrained(TINY),
                   LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")).save_pretrained(sft_dir)
    AutoTokenizer.from_pretrained(TINY).save_pretrained(sft_dir)
    recipe = {"dpo": {"policy": {"name_or_path": str(sft_dir), "tuning": "lora"},
                      "data": {"path": str(rankings_file), "eval_fraction": 0.25}, "max_length": 64,
                      "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
                                "early_stopping_patience": None}},
              "report": False}
    result = runner.run_recipe(recipe, run_dir=tmp_path / "run")
    assert result.ran == ["dpo"] and result.manifest["stages"]["dpo"]["status"] == "done"
    assert result.stages["dpo"].metrics["models"]["reference"] == "sft-adapter-copy"  # frozen, on the same base
    adapter = json.loads((tmp_path / "run" / "dpo" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(Path(TINY).resolve())
    again = runner.run_recipe(recipe, run_dir=tmp_path / "run")
    assert again.reused == ["dpo"] and again.ran == []
