"""Every recipe file validates, has its header, and its data-preparation commands are real commands
whose outputs are exactly the files the recipe reads. Every accelerate config loads in accelerate."""

import importlib
import re
import shlex
from pathlib import Path

import pytest
import typer

from rlhf_stack.config import DataConfig
from rlhf_stack.errors import ConfigError
from rlhf_stack.pipeline.plan import plan
from rlhf_stack.pipeline.runner import load_recipe
from rlhf_stack.pipeline.staleness import data_files

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
ACCELERATE = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
LOCAL = {"quickstart.yaml", "tiny.yaml", "compare.yaml"}  # recipes whose data is in the repository


def header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def header_commands(path: Path) -> list[list[str]]:
    """`rlhf-stack ...` command lines in the header comment, as argument lists."""
    return [shlex.split(m.group(1)) for m in re.finditer(r"^#\s+rlhf-stack (.+?)\s*$", header(path), re.M)]


def parse_cli(args: list[str]) -> tuple[str, dict]:
    """Parse (not run) `rlhf-stack ARGS` with the real CLI: (command path, parsed parameters)."""
    from rlhf_stack.cli import app

    command = typer.main.get_command(app)
    path = []
    while hasattr(command, "commands"):  # a group (typer vendors its own click classes)
        name, args = args[0], args[1:]
        assert name in command.commands, f"no command {' '.join(path + [name])}"
        command, path = command.commands[name], path + [name]
    ctx = command.make_context(" ".join(path), list(args))
    return " ".join(path), ctx.params


def recipe_inputs(recipe) -> set[str]:
    """Every data file of every stage, named branches included."""
    return {file for stage in plan(recipe) for file in data_files(stage.config)}


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "tiny.yaml"} <= names and len(names) >= 5
    assert {"ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml", "multi_node.yaml"} <= {
        p.name for p in ACCELERATE}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_has_its_header(path):
    recipe, _ = load_recipe(path)
    text = header(path)
    for needed in ("rlhf-stack run", "Prerequisites", "Tested", "time"):
        assert needed in text or (needed == "rlhf-stack run" and "make demo" in text), f"header lacks {needed!r}"
    assert recipe.sft and recipe.reward and recipe.ppo and recipe.evaluation
    if recipe.accelerate_config:
        assert (REPO / recipe.accelerate_config).is_file()
    if path.name in LOCAL:
        missing = [f for f in recipe_inputs(recipe) if not (REPO / f).is_file()]
        assert not missing, f"{path.name} reads files that do not exist: {missing}"


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name not in LOCAL], ids=lambda p: p.name)
def test_gpu_recipe_data_commands_are_real_and_make_its_inputs(path):
    from data_tools.sources import SOURCES
    from data_tools.split import STAGE_KINDS

    recipe, _ = load_recipe(path)
    made: set[str] = set()
    commands = header_commands(path)
    assert any(args[:2] == ["data", "convert"] for args in commands)
    for args in commands:
        name, params = parse_cli(args)
        if name == "data convert":
            assert params["source"] in SOURCES
            assert params["to"] in importlib.import_module(SOURCES[params["source"]]).KINDS
            made.add(str(params["out"]))
        elif name == "data split":
            stages = params["stages"].split(",")
            assert set(stages) <= set(STAGE_KINDS) and len(params["ratios"].split(":")) == len(stages)
            assert params["file"] in made, f"{params['file']} is split before any command writes it"
            made.update(f"{params['out_dir']}/{stage}.jsonl" for stage in stages)
        elif name == "run":
            assert (REPO / params["recipe"]).resolve() == path.resolve()
    assert recipe_inputs(recipe) <= made, f"not made by the header's commands: {recipe_inputs(recipe) - made}"


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes >= 2
    assert "rlhf-stack run" in header(path)  # the header says how it is used


def test_stage_output_dir_belongs_to_the_runner(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("sft:\n  model: {name_or_path: x}\n  data: {path: d.jsonl}\n  output_dir: elsewhere\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:4: sft\.output_dir: is set by the runner"):
        load_recipe(bad)


def test_references_must_name_an_earlier_stage(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("reward:\n  model: {name_or_path: x}\n  data: {path: d.jsonl}\n  init_from: '@ppo'\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:4: reward\.init_from: '@ppo' is not an earlier stage"):
        load_recipe(bad)


def test_unknown_key_names_its_path_and_line(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("seed: 1\nppo:\n  policy: {name_or_path: x}\n  prompts: {path: p.jsonl}\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:5: unknown key 'ppo\.stepz'"):
        load_recipe(bad)


def test_data_files_walks_nested_data_configs():
    from rlhf_stack.evaluation.evaluate import EvalConfig
    from rlhf_stack.ppo import PPOConfig
    from rlhf_stack.reward.stage import RewardConfig

    cfg = PPOConfig(policy={"name_or_path": "m"}, prompts=DataConfig(path="p.jsonl", eval_path="pe.jsonl"),
                    ptx_data=DataConfig(path="c.jsonl"))
    assert sorted(data_files(cfg)) == ["c.jsonl", "p.jsonl", "pe.jsonl"]
    rm = RewardConfig(model={"name_or_path": "m"}, data=DataConfig(path="r.jsonl"), normalize_with="s.jsonl")
    assert sorted(data_files(rm)) == ["r.jsonl", "s.jsonl"]
    ev = EvalConfig(policy="@ppo", prompts="q.jsonl", corpus="t.jsonl", judge={"kind": "python", "path": "m:f"})
    assert sorted(data_files(ev)) == ["q.jsonl", "t.jsonl"]
