"""A recipe's stages as one ordered list: the fixed sections, then named branches, then the evaluation.

A recipe holds at most one of each fixed stage (`sft:`, `reward:`, `dpo:`, `ppo:`, `evaluation:`)
and, under `stages:`, any number of named ones, each with a `kind`:

    stages:
      ppo_rloo:                 # RUN_DIR/ppo_rloo, manifest key `ppo_rloo`, referable as @ppo_rloo
        kind: ppo               # any training stage of the registry: sft, reward, dpo, ppo
        policy: {name_or_path: "@sft", tuning: lora}
        advantage_estimator: rloo
        ...

The plan runs the fixed training stages in registry order, then the named ones in the order written,
then the evaluation, so several branches can start from the same SFT and reward model and one
evaluation can compare them all (`evaluation.policies`). A stage may reference (`@name`) only a
referable stage planned before it. Everything per stage (the manifest entry, skip and resume, the
output directory) is keyed by its name, so the rules that hold for the fixed stages hold for every
branch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rlhf_stack.config import validate
from rlhf_stack.errors import ConfigError
from rlhf_stack.pipeline.layout import CONFIGS_DIR, LOGS_DIR, PLOTS_DIR
from rlhf_stack.pipeline.stages import ORDER, STAGES, StageSpec
from rlhf_stack.pipeline.staleness import iter_references

BRANCH_KINDS = tuple(name for name in ORDER if name != "eval")  # what a named stage can be
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
RESERVED = {*STAGES, CONFIGS_DIR, LOGS_DIR, PLOTS_DIR, "checkpoints"}  # would clash in RUN_DIR


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a run: its name (output directory, manifest key, `@name`), what kind of stage it
    is, its validated config, and the key path of its section in the recipe (for error messages)."""

    name: str
    spec: StageSpec
    config: BaseModel
    section: str

    @property
    def kind(self) -> str:
        return self.spec.name


def check_branches(branches: dict[str, Any]) -> dict[str, Any]:
    """The `stages:` mapping's own rules (names and kinds); the bodies are validated by `plan`."""
    for name, body in branches.items():
        if not NAME_RE.match(name) or name in RESERVED:
            raise ValueError(f"stage name '{name}': use lower-case letters, digits and _ (starting with a letter), "
                             f"and none of {', '.join(sorted(RESERVED))}")
        if not isinstance(body, dict) or body.get("kind") not in BRANCH_KINDS:
            got = body.get("kind") if isinstance(body, dict) else body
            raise ValueError(f"stages.{name}.kind must be one of {', '.join(BRANCH_KINDS)} (got {got!r})")
    return branches


def plan(recipe: Any, origin: str = "", lines: dict[str, int] | None = None) -> list[PlannedStage]:
    """The recipe's stages in run order, each named stage's config validated against its kind
    (errors carry `stages.NAME.key` and the YAML line)."""
    fixed = [PlannedStage(spec.name, spec, getattr(recipe, spec.field), spec.field)
             for spec in STAGES.values() if getattr(recipe, spec.field) is not None]
    named = []
    for name, body in (recipe.stages or {}).items():
        spec = STAGES[body["kind"]]
        section = f"stages.{name}"
        config = validate(spec.config_type(), {k: v for k, v in body.items() if k != "kind"}, origin=origin,
                          lines=lines, prefix=section)
        named.append(PlannedStage(name, spec, config, section))
    evaluation = [p for p in fixed if p.kind == "eval"]
    return [p for p in fixed if p.kind != "eval"] + named + evaluation


def reference_problems(planned: list[PlannedStage], raw: dict) -> list[tuple[str, str]]:
    """(key path, message) for every `@name` that is not a referable stage planned earlier, and for
    sections that set output_dir (the runner owns it). raw: the recipe as a plain dict."""
    problems = []
    earlier: list[str] = []
    for stage in planned:
        section = _section(raw, stage.section)
        if isinstance(section, dict) and "output_dir" in section:
            problems.append((f"{stage.section}.output_dir", f"is set by the runner (RUN_DIR/{stage.name}); remove "
                                                            "it, or choose the run directory with run_dir / --run-dir"))
        for key, ref in iter_references(section, stage.section):
            if ref not in earlier:
                problems.append((key, f"'@{ref}' is not an earlier stage (allowed: "
                                      f"{', '.join('@' + s for s in earlier) or 'none'})"))
        if stage.spec.referable:
            earlier.append(stage.name)
    return problems


def _section(raw: dict, path: str) -> Any:
    node: Any = raw
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def select(planned: list[PlannedStage], only: list[str] | None, from_stage: str | None) -> list[str]:
    """The names of the stages this call runs, in plan order."""
    names = [p.name for p in planned]
    for name in [*(only or []), *([from_stage] if from_stage else [])]:
        if name not in names:
            known = STAGES[name].field if name in STAGES else None
            raise ConfigError(f"the recipe has no {known} section, so stage '{name}' cannot run" if known else
                              f"unknown stage '{name}' (this recipe's stages: {', '.join(names)})")
    chosen = [n for n in names if not only or n in only]
    if from_stage:
        chosen = [n for n in chosen if names.index(n) >= names.index(from_stage)]
    return chosen
