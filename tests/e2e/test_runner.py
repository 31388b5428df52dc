"""The runner in-process on the tiny model: hand-off, manifest, reuse, invalidation, --only/--from.

The SIGKILL-and-resume test is in test_runner_kill.py (subprocesses).
"""

import json
from pathlib import Path

import pytest
import yaml

from rlhf_stack.errors import ConfigError, RlhfStackError
from rlhf_stack.pipeline import manifest, runner, staleness
from rlhf_stack.pipeline.plan import plan

TINY = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny-llama")


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (conftest.one_thread)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    topics = ["cats", "dogs", "the sky", "bread", "rivers", "the moon"]
    return {
        "sft": _write(d / "sft.jsonl", [{"prompt": f"Tell me about {t} ({i}).", "response": f"{t} are nice."}
                                        for i in range(4) for t in topics]),
        "rankings": _write(d / "rank.jsonl", [
            {"prompt": f"Question {i}: name a fruit.", "completions": ["Apple.", "Banana.", "no no no"],
             "ranks": [1, 2, 3]} for i in range(12)]),
        "prompts": _write(d / "prompts.jsonl", [{"prompt": f"Say something nice {i}."} for i in range(16)]),
        "corpus": _write(d / "corpus.jsonl", [{"text": f"The moon orbits the earth. Line {i}."} for i in range(8)]),
    }


def tiny_recipe(data: dict) -> dict:
    quick = {"epochs": 1, "batch_size": 8, "logging_steps": 1, "learning_rate": 1e-3,
             "early_stopping_patience": None}
    model = {"name_or_path": TINY, "tuning": "full"}
    return {
        "sft": {"model": model, "data": {"path": data["sft"], "eval_fraction": 0.2}, "train": quick,
                "max_length": 256},
        "reward": {"model": model, "init_from": "@sft", "data": {"path": data["rankings"], "eval_fraction": 0.25},
                   "train": {**quick, "batch_size": 4}, "max_length": 256},
        "ppo": {"policy": {"name_or_path": "@sft", "tuning": "full"},
                "prompts": {"path": data["prompts"], "eval_fraction": 0.0},
                "rewards": [{"kind": "reward_model", "path": "@reward"}], "value_init": "@reward",
                "steps": 2, "batch_size": 4, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 8,
                "learning_rate": 1e-4, "eval_max_prompts": 0, "progress_bar": False, "save_every_steps": None},
        "evaluation": {"policy": "@ppo", "baseline": "@sft", "reward_model": "@reward", "prompts": data["prompts"],
                       "n_prompts": 4, "best_of_n": 2, "max_new_tokens": 8, "corpus": data["corpus"],
                       "n_corpus": 4, "policy_label": "PPO", "baseline_label": "SFT"},
    }


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return runner.run_recipe(tiny_recipe(data), run_dir=run_dir), run_dir


@pytest.mark.e2e
def test_first_run_hands_checkpoints_on_and_writes_everything(first_run):
    result, run_dir = first_run
    assert result.ran == ["sft", "reward", "ppo", "eval"] and result.reused == []
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved == result.manifest
    assert {name: e["status"] for name, e in saved["stages"].items()} == dict.fromkeys(result.ran, "done")
    for name in ("sft", "reward", "ppo"):
        entry = saved["stages"][name]
        assert entry["config_hash"].startswith("sha256:") and entry["metrics"]
        assert (run_dir / name / "stage.json").is_file()
        assert entry["data"] and all(v.startswith("sha256:") for v in entry["data"].values())
    assert set(saved["stages"]["reward"]["inputs"]) == {"sft"}
    assert set(saved["stages"]["ppo"]["inputs"]) == {"sft", "reward"}
    assert set(saved["stages"]["eval"]["inputs"]) == {"sft", "reward", "ppo"}
    assert {"torch", "transformers", "trl", "peft", "python"} <= set(saved["versions"])
    # hand-off: references resolved to the upstream checkpoints in the configs the stages ran with
    ppo_info = json.loads((run_dir / "ppo" / "stage.json").read_text())
    assert ppo_info["config"]["policy"]["name_or_path"] == str((run_dir / "sft").resolve())
    assert ppo_info["config"]["rewards"][0]["path"] == str((run_dir / "reward").resolve())
    reward_info = json.loads((run_dir / "reward" / "stage.json").read_text())
    assert reward_info["config"]["init_from"] == str((run_dir / "sft").resolve())
    assert (run_dir / "configs" / "ppo.yaml").is_file() and (run_dir / "recipe.yaml").is_file()
    for name in ("sft", "reward", "ppo"):  # a Hugging Face model card in every checkpoint
        info = json.loads((run_dir / name / "stage.json").read_text())
        card = (run_dir / name / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert front["base_model"] == info["base_model"] and front["library_name"] == "transformers"
        assert {"rlhf_stack", "full", {"reward": "reward-model"}.get(name, name)} <= set(front["tags"])
        assert f"`{name}`" in card and info["command"] in card
        assert info["data"] and all(f"| `{path}` | `{fp}` |" in card for path, fp in info["data"].items())
        assert all(key in card for key in info["metrics"] if isinstance(info["metrics"][key], float))
    assert result.report == run_dir / "report.md" and "## Evaluation" in result.report.read_text()
    assert 0.0 <= saved["stages"]["eval"]["metrics"]["policy_win_rate"] <= 1.0


@pytest.mark.e2e
def test_rerun_reuses_and_a_ppo_change_redoes_only_ppo(first_run, data):
    _, run_dir = first_run
    before = json.loads((run_dir / "manifest.json").read_text())["stages"]
    again = runner.run_recipe(tiny_recipe(data), run_dir=run_dir)
    assert again.ran == [] and again.reused == ["sft", "reward", "ppo", "eval"]
    assert {k: v["started_at"] for k, v in again.manifest["stages"].items()} == {
        k: v["started_at"] for k, v in before.items()}

    changed = runner.run_recipe(tiny_recipe(data), ["ppo.learning_rate=2e-4"], run_dir=run_dir)
    assert changed.ran == ["ppo", "eval"]  # eval measures the new PPO checkpoint, so it follows
    assert changed.reused == ["sft", "reward"]
    after = changed.manifest["stages"]
    assert after["ppo"]["config_hash"] != before["ppo"]["config_hash"]
    assert after["eval"]["config_hash"] != before["eval"]["config_hash"]  # upstream hash is part of it
    for name in ("sft", "reward"):
        assert after[name]["config_hash"] == before[name]["config_hash"]
        assert after[name]["started_at"] == before[name]["started_at"]
    assert json.loads((run_dir / "ppo" / "stage.json").read_text())["config"]["learning_rate"] == 2e-4


@pytest.mark.e2e
def test_only_from_and_a_missing_upstream(data, tmp_path):
    recipe = tiny_recipe(data)
    only = runner.run_recipe(recipe, run_dir=tmp_path, only=["sft"])
    assert only.ran == ["sft"]
    statuses = {k: v["status"] for k, v in only.manifest["stages"].items()}
    assert statuses == {"sft": "done", "reward": "skipped", "ppo": "skipped", "eval": "skipped"}

    # PPO alone cannot run before the reward model exists: the error names the key path
    with pytest.raises(ConfigError, match=r"ppo\.rewards\.0\.path: '@reward' needs a finished reward checkpoint"):
        runner.run_recipe(recipe, run_dir=tmp_path, only=["ppo"])

    later = runner.run_recipe(recipe, run_dir=tmp_path, from_stage="reward", only=["reward"])
    assert later.ran == ["reward"] and later.reused == ["sft"]

    forced = runner.run_recipe(recipe, run_dir=tmp_path, only=["reward"], force=True)
    assert forced.ran == ["reward"] and forced.manifest["stages"]["reward"]["attempts"] == 1

    with pytest.raises(ConfigError, match="unknown stage 'rm'"):
        runner.run_recipe(recipe, run_dir=tmp_path, only=["rm"])


def test_one_runner_per_run_directory(data, tmp_path):
    with manifest.run_lock(tmp_path):
        with pytest.raises(RlhfStackError, match="another rlhf-stack run"):
            runner.run_recipe(tiny_recipe(data), run_dir=tmp_path, only=["sft"])


def test_decide(tmp_path):
    marker = tmp_path / "sft" / "stage.json"
    entry = {"config_hash": "h", "inputs": {"sft": "c"}}
    assert staleness.stage_action({}, "h", {"sft": "c"}, marker, force=False) == "fresh"  # never started
    assert staleness.stage_action(entry, "h", {"sft": "c"}, marker, force=False) == "resume"  # interrupted
    marker.parent.mkdir()
    marker.write_text("{}")
    assert staleness.stage_action(entry, "h", {"sft": "c"}, marker, force=False) == "reuse"
    assert staleness.stage_action(entry, "h2", {"sft": "c"}, marker, force=False) == "fresh"  # config changed
    assert staleness.stage_action(entry, "h", {"sft": "c2"}, marker, force=False) == "fresh"  # upstream re-trained
    assert staleness.stage_action(entry, "h", {"sft": "c"}, marker, force=True) == "fresh"


def test_decide_under_another_number_of_processes(tmp_path):
    """Finished stages are reused on any number of processes; an interrupted one resumes only on
    the number that wrote its resume state, and says why it starts over otherwise."""
    marker = tmp_path / "ppo" / "stage.json"
    interrupted = {"config_hash": "h", "inputs": {}, "status": "pending", "started_at": "t", "world_size": 2}
    assert staleness.stage_action(interrupted, "h", {}, marker, force=False, world_size=2) == "resume"
    assert staleness.stage_action(interrupted, "h", {}, marker, force=False, world_size=1) == "fresh"
    assert "interrupted on 2 process(es), now 1" in staleness.restart_reason(interrupted, 1)
    assert staleness.restart_reason(interrupted, 2) is None
    assert staleness.restart_reason({"config_hash": "h"}, 4) is None  # never started: nothing to resume
    marker.parent.mkdir()
    marker.write_text("{}")
    assert staleness.stage_action(interrupted, "h", {}, marker, force=False, world_size=1) == "reuse"


def test_references_are_found_and_resolved():
    cfg = {"policy": {"name_or_path": "@sft"}, "rewards": [{"path": "@reward"}, {"path": "mod:fn"}], "x": 1}
    assert list(staleness.iter_references(cfg, "ppo")) == [("ppo.policy.name_or_path", "sft"),
                                                        ("ppo.rewards.0.path", "reward")]
    resolved = staleness.resolve_references(cfg, {"sft": "/r/sft", "reward": "/r/reward"})
    assert resolved == {"policy": {"name_or_path": "/r/sft"}, "rewards": [{"path": "/r/reward"}, {"path": "mod:fn"}],
                        "x": 1}


def test_stable_hash_ignores_key_order():
    assert staleness.stable_hash({"a": 1, "b": [1, 2]}) == staleness.stable_hash({"b": [1, 2], "a": 1})
    assert staleness.stable_hash({"a": 1}) != staleness.stable_hash({"a": 2})


def _stage(recipe, name):
    return next(stage for stage in plan(recipe) if stage.name == name)


def test_recipe_seed_fills_unset_stage_seeds(data):
    recipe, _ = runner.load_recipe({**branch_recipe(data), "seed": 7})
    assert runner.stage_dict(recipe, _stage(recipe, "sft"))["train"]["seed"] == 7
    assert runner.stage_dict(recipe, _stage(recipe, "ppo"))["seed"] == 7
    assert runner.stage_dict(recipe, _stage(recipe, "ppo_rloo"))["seed"] == 7
    explicit = tiny_recipe(data)
    explicit["sft"]["train"]["seed"] = 3
    recipe, _ = runner.load_recipe({**explicit, "seed": 7})
    assert runner.stage_dict(recipe, _stage(recipe, "sft"))["train"]["seed"] == 3


def branch_recipe(data: dict) -> dict:
    """The tiny recipe plus a named PPO branch with RLOO advantages, compared in the one evaluation."""
    recipe = tiny_recipe(data)
    rloo = {**recipe["ppo"], "kind": "ppo", "advantage_estimator": "rloo", "samples_per_prompt": 2}
    rloo.pop("value_init")
    recipe["stages"] = {"ppo_rloo": rloo}
    recipe["evaluation"]["policies"] = [{"name": "rloo", "path": "@ppo_rloo", "label": "RLOO"}]
    return recipe


@pytest.mark.e2e
def test_a_named_branch_runs_after_the_fixed_stages_and_follows_the_same_rules(data, tmp_path):
    first = runner.run_recipe(branch_recipe(data), run_dir=tmp_path)
    assert first.ran == ["sft", "reward", "ppo", "ppo_rloo", "eval"]
    entry = first.manifest["stages"]["ppo_rloo"]
    assert entry["kind"] == "ppo" and set(entry["inputs"]) == {"sft", "reward"}
    assert entry["metrics"]["advantage_estimator"] == "rloo" and "kind" not in first.manifest["stages"]["ppo"]
    assert json.loads((tmp_path / "ppo_rloo" / "stage.json").read_text())["config"]["advantage_estimator"] == "rloo"
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {"policy", "rloo"} <= {m["name"] for m in results["models"]}
    report = (tmp_path / "report.md").read_text()
    assert "| ppo_rloo (ppo) | done |" in report and "## Stage 3: PPO (`ppo_rloo`), rloo advantages" in report
    assert " steps.\n\n|  | first step | last step |\n" in report  # the table starts its own paragraph
    assert (tmp_path / "plots" / "ppo_rloo_reward_kl.png").is_file()

    # skip, staleness and --only hold per branch: a branch's change redoes the branch and the evaluation
    changed = runner.run_recipe(branch_recipe(data), ["stages.ppo_rloo.learning_rate=2e-4"], run_dir=tmp_path)
    assert changed.ran == ["ppo_rloo", "eval"] and changed.reused == ["sft", "reward", "ppo"]
    only = runner.run_recipe(branch_recipe(data), ["stages.ppo_rloo.learning_rate=3e-4"], run_dir=tmp_path,
                             only=["ppo_rloo"])
    assert only.ran == ["ppo_rloo"] and only.manifest["stages"]["eval"]["status"] == "skipped"


def test_named_branches_are_checked_like_fixed_stages(data):
    recipe = branch_recipe(data)
    recipe["stages"]["ppo_rloo"]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"unknown key 'stages\.ppo_rloo\.stepz'"):
        runner.load_recipe(recipe)
    recipe = branch_recipe(data)
    recipe["stages"]["ppo_rloo"]["kind"] = "pp0"
    with pytest.raises(ConfigError, match=r"stages\.ppo_rloo\.kind must be one of sft, reward, dpo, ppo"):
        runner.load_recipe(recipe)
    recipe = branch_recipe(data)
    recipe["stages"] = {"eval": recipe["stages"]["ppo_rloo"]}
    with pytest.raises(ConfigError, match="stage name 'eval'"):
        runner.load_recipe(recipe)
    recipe = branch_recipe(data)
    recipe["ppo"]["policy"]["name_or_path"] = "@ppo_rloo"  # the fixed stages run before the branches
    with pytest.raises(ConfigError, match=r"ppo\.policy\.name_or_path: '@ppo_rloo' is not an earlier stage"):
        runner.load_recipe(recipe)
    with pytest.raises(ConfigError, match="unknown stage 'ppo_gae'"):
        runner.run_recipe(branch_recipe(data), only=["ppo_gae"])
