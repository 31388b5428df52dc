"""The stage runner: one recipe -> SFT, reward model, DPO and/or PPO (and named branches), evaluation,
report, resumable.

`run_recipe(recipe, overrides)` composes the stage functions (STYLE item 1) and adds only what a
chain of stages needs:

- the plan (`plan.py`): the fixed sections, then the named branches of `stages:` (several PPO or DPO
  runs from one SFT and reward model), then the evaluation;
- hand-off by reference: any string `@sft`, `@reward`, `@dpo`, `@ppo` or `@<branch>` in a stage's config
  becomes that stage's checkpoint directory before the stage runs (`ppo.policy.name_or_path: "@sft"`);
  the reuse rule and its keys live in `staleness.py`, the manifest file and lock in `manifest.py`;
- `RUN_DIR/manifest.json` (written atomically after every change): per stage its status, checkpoint,
  timings, metrics, config hash, data fingerprints; plus package versions;
- skip and resume: a stage's config hash covers its own config, its data files' fingerprints and
  the hashes of the stages it references, so an upstream change invalidates what follows. A stage
  whose hash and upstream checkpoints are unchanged and whose output is finished (and still matches
  its checkpoint_manifest.json) is reused; one that was interrupted, or whose output was damaged
  since, is called again on the same directory, where it resumes from its newest whole checkpoint;
  any other is started over in an emptied directory.

Stages run in this process, or as `accelerate launch` subprocesses (`launch.py`) when the recipe
names an accelerate config. The stages come from the registry (`stages.py`); each stage's output
directory is RUN_DIR/<stage name> (`layout.py`), set here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, field_validator

from rlhf_stack.config import Config, StageResult, apply_overrides, read_yaml, validate
from rlhf_stack.dpo.stage import DPOConfig
from rlhf_stack.errors import ConfigError, RlhfStackError
from rlhf_stack.evaluation.evaluate import EvalConfig
from rlhf_stack.pipeline.layout import STAGE_FILE, RunLayout
from rlhf_stack.pipeline.manifest import (
    MANIFEST_FORMAT,
    now,
    package_versions,
    read_manifest,
    run_lock,
    world_size_of,
    write_atomic,
    write_manifest,
)
from rlhf_stack.pipeline.plan import PlannedStage, check_branches, plan, reference_problems, select
from rlhf_stack.pipeline.stages import StageSpec
from rlhf_stack.pipeline.staleness import (
    checkpoint_id,
    config_hash,
    data_files,
    iter_references,
    resolve_references,
    restart_reason,
    stage_action,
)
from rlhf_stack.ppo.config import PPOConfig
from rlhf_stack.reward.stage import RewardConfig
from rlhf_stack.sft import SFTConfig


class Recipe(Config):
    """A whole pipeline in one file: the stages to run and how they hand checkpoints on."""

    run_dir: str | None = None
    """Where every stage writes (RUN_DIR/sft, /reward, /dpo, /ppo, /eval, manifest.json, report.md).
    Default: runs/<recipe file name>. `--run-dir` overrides it."""
    seed: int = 42
    """Seed for every stage whose own seed (`train.seed` / `seed`) the recipe leaves unset."""
    sft: SFTConfig | None = None
    """Stage 1 (its output_dir is set by the runner: RUN_DIR/sft)."""
    reward: RewardConfig | None = None
    """Stage 2; `init_from: "@sft"` starts the reward model from the SFT checkpoint."""
    dpo: DPOConfig | None = None
    """DPO, the offline alternative to PPO on the same rankings: `policy.name_or_path: "@sft"`.
    Runs after `reward` and before `ppo` (which may then start from `@dpo`)."""
    ppo: PPOConfig | None = None
    """Stage 3; `policy.name_or_path: "@sft"`, reward sources with `path: "@reward"`."""
    stages: dict[str, dict] = {}
    """Named branches: `NAME: {kind: sft|reward|dpo|ppo, ...that stage's config}`. They run after the
    fixed training stages, in the order written, and before the evaluation; each writes RUN_DIR/NAME,
    has its own manifest entry (skip, resume and staleness as for any stage) and can be referenced as
    `@NAME` by later stages, e.g. `evaluation.policies: [{name: rloo, path: "@ppo_rloo"}]`.
    recipes/compare.yaml runs PPO with GAE, PPO with RLOO and DPO from one SFT and reward model."""
    evaluation: EvalConfig | None = None
    """Policy vs baseline after training (`policy: "@ppo"`, `baseline: "@sft"`); stage name `eval`."""
    torch_threads: int | None = Field(None, ge=1)
    """CPU threads of every stage (torch's intra-op threads; under `accelerate launch`, each
    process's OMP_NUM_THREADS). None keeps torch's choice (one per core). On a loaded or shared
    machine fewer threads can be faster: measured, one beat two there (benchmarks/RESULTS.md)."""
    accelerate_config: str | None = None
    """An accelerate config (recipes/accelerate/*.yaml): training stages then run under
    `accelerate launch`. None: in this process."""
    report: bool = True
    """Write RUN_DIR/report.md and its plots at the end."""

    @field_validator("stages")
    @classmethod
    def _check_branches(cls, value: dict[str, dict]) -> dict[str, dict]:
        return check_branches(value)


@dataclass(frozen=True)
class RunResult:
    """What a run produced."""

    run_dir: Path
    manifest: dict
    stages: dict[str, StageResult]  # every finished stage: checkpoint (eval: its dir) + metrics
    ran: list[str] = field(default_factory=list)  # stages executed by this call (started or resumed)
    reused: list[str] = field(default_factory=list)  # stages skipped as up to date
    report: Path | None = None


# ---- loading and checking a recipe --------------------------------------------------------------


def load_recipe(source: Recipe | str | Path | dict, overrides=()) -> tuple[Recipe, str]:
    """(Recipe, origin) from a YAML file, a dict or a Recipe, with `key.path=value` overrides applied.

    Beyond the schema, validates each named stage against its kind and checks that no stage sets
    output_dir (the runner owns it) and that every `@stage` reference names an earlier stage;
    errors carry the key path and YAML line.
    """
    recipe, origin, _ = _load(source, overrides)
    return recipe, origin


def _load(source: Recipe | str | Path | dict, overrides=()) -> tuple[Recipe, str, list[PlannedStage]]:
    lines: dict[str, int] = {}
    origin = ""
    if isinstance(source, Recipe):
        data = source.model_dump(exclude_unset=True)
    elif isinstance(source, dict):
        data = source
    else:
        origin = str(source)
        data, lines = read_yaml(source)
    data = apply_overrides(data, list(overrides))
    recipe = validate(Recipe, data, origin=origin, lines=lines)
    planned = plan(recipe, origin, lines)
    problems = reference_problems(planned, data)
    if problems:
        raise ConfigError("\n".join(f"{_where(origin, lines, key)}{key}: {msg}" for key, msg in problems))
    return recipe, origin, planned


def _where(origin: str, lines: dict[str, int], key: str) -> str:
    if not origin:
        return ""
    return f"{origin}:{lines[key]}: " if key in lines else f"{origin}: "


def stage_dict(recipe: Recipe, stage: PlannedStage | str) -> dict:
    """The stage's config (a planned stage, or a stage's name) as a plain dict, the recipe seed filled
    in where the stage left its own unset."""
    if isinstance(stage, str):
        found = [p for p in plan(recipe) if p.name == stage]
        if not found:
            raise ConfigError(f"the recipe has no stage '{stage}'")
        stage = found[0]
    cfg = stage.config
    data = cfg.model_dump(mode="json")
    data.pop("output_dir", None)
    if "seed" in type(cfg).model_fields and "seed" not in cfg.model_fields_set:
        data["seed"] = recipe.seed
    train = getattr(cfg, "train", None)
    if isinstance(train, BaseModel) and "seed" in type(train).model_fields and "seed" not in train.model_fields_set:
        data["train"]["seed"] = recipe.seed
    return data


# ---- running ------------------------------------------------------------------------------------


def run_recipe(recipe: Recipe | str | Path | dict, overrides=(), *, run_dir: str | Path | None = None,
               only: list[str] | None = None, from_stage: str | None = None, force: bool = False) -> RunResult:
    """Run a recipe's stages in order with checkpoint hand-off, then the report.

    only: run just these stages (others are used as they are). from_stage: run this stage and the
    ones after it. force: start the selected stages over even when they are up to date.
    """
    recipe, origin, planned = _load(recipe, overrides)
    run_dir = Path(run_dir or recipe.run_dir or default_run_dir(origin))
    selected = select(planned, only, from_stage)
    with run_lock(run_dir):
        run = _Run(recipe, run_dir, _open_manifest(run_dir, recipe, origin, selected), force)
        for stage in planned:
            run.visit(stage, stage.name in selected)
        report = None
        if recipe.report:
            from rlhf_stack.evaluation.report import write_report

            report = write_report(run_dir)
            run.manifest["report"] = report.name
            write_manifest(run_dir, run.manifest)
    return RunResult(run_dir, run.manifest, run.results, run.ran, run.reused, report)


def default_run_dir(origin: str) -> str:
    return f"runs/{Path(origin).stem}" if origin else "runs/recipe"


def _open_manifest(run_dir: Path, recipe: Recipe, origin: str, selected: list[str]) -> dict:
    manifest = read_manifest(run_dir) or {"format": MANIFEST_FORMAT, "created_at": now(), "stages": {}}
    manifest.update(recipe=origin or None, run_dir=str(run_dir), versions=package_versions())
    for name in selected:
        entry = manifest["stages"].setdefault(name, {"status": "pending"})
        if entry["status"] == "running":  # we hold the lock: that run was killed
            entry.update(status="pending", note="interrupted; resumes from its last checkpoint")
    write_atomic(RunLayout(run_dir).recipe, yaml.safe_dump(recipe.model_dump(mode="json", exclude_unset=True),
                                                         sort_keys=False))
    write_manifest(run_dir, manifest)
    return manifest


class _Run:
    """The state of one run_recipe call: the manifest and what has been done so far."""

    def __init__(self, recipe: Recipe, run_dir: Path, manifest: dict, force: bool):
        self.recipe, self.run_dir, self.manifest, self.force = recipe, run_dir, manifest, force
        self.layout = RunLayout(run_dir)
        self.results: dict[str, StageResult] = {}
        self.ran: list[str] = []
        self.reused: list[str] = []

    def visit(self, stage: PlannedStage, selected: bool) -> None:
        spec = stage.spec
        stage_dir = self.layout.stage_dir(stage.name)
        entry = self.manifest["stages"].setdefault(stage.name, {"status": "pending"})
        if stage.name != stage.kind:
            entry["kind"] = stage.kind
        try:
            config, resolved, key, inputs, data = self.prepare(stage)
        except ConfigError:
            if selected:
                raise
            entry.update(status="skipped", note="not selected, and an upstream stage has no checkpoint")
            return write_manifest(self.run_dir, self.manifest)
        world = self.world_size(spec)
        action = stage_action(entry, key, inputs, stage_dir / spec.marker, self.force and selected, world)
        if action == "fresh" and selected and (reason := restart_reason(entry, world)):
            print(f"[runner] {stage.name}: {reason}", flush=True)
        damage = damaged_output(spec, stage_dir) if action == "reuse" else None
        if damage:
            print(f"[runner] {stage.name}: the finished checkpoint in {stage_dir} is damaged ({damage}); "
                  "running the stage again", flush=True)
            action = "resume"
        if action == "reuse":
            entry.update(status="done", metrics=read_metrics(spec, stage_dir))
            entry.pop("note", None)
            self.reused.append(stage.name)
        elif not selected:
            entry.update(status="skipped", note="not selected; out of date or unfinished")
        else:
            self.execute(stage, entry, resolved, key, inputs, data, fresh=action == "fresh")
            self.ran.append(stage.name)
        if entry["status"] == "done":
            self.results[stage.name] = StageResult(stage_dir, entry["metrics"])
        write_manifest(self.run_dir, self.manifest)

    def prepare(self, stage: PlannedStage) -> tuple[dict, dict, str, dict, dict]:
        """(config, resolved config, config hash, upstream checkpoint ids, data fingerprints)."""
        from rlhf_stack.data import fingerprint

        config = stage_dict(self.recipe, stage)
        upstream, inputs, checkpoints = {}, {}, {}
        for key, ref in iter_references(config, stage.section):
            ref_dir = self.layout.stage_dir(ref)
            ckpt = checkpoint_id(ref_dir, STAGE_FILE)
            if ckpt is None:
                raise ConfigError(f"{key}: '@{ref}' needs a finished {ref} checkpoint in {ref_dir}, and there is "
                                  f"none (run the {ref} stage first, or give a path instead of @{ref})")
            upstream[ref] = self.manifest["stages"].get(ref, {}).get("config_hash") or ckpt
            inputs[ref], checkpoints[ref] = ckpt, str(ref_dir.resolve())
        data = {path: fingerprint(path) for path in data_files(stage.config)}
        key = config_hash(stage.name, config, data, upstream)
        resolved = {**resolve_references(config, checkpoints), "output_dir": str(self.layout.stage_dir(stage.name))}
        return config, resolved, key, inputs, data

    def launcher(self, spec: StageSpec) -> str:
        """How the stage runs: `in-process` or `accelerate:CONFIG` (recorded in the manifest)."""
        if self.recipe.accelerate_config and spec.name != "eval":
            return f"accelerate:{self.recipe.accelerate_config}"
        return "in-process"

    def world_size(self, spec: StageSpec) -> int:
        """The processes the stage runs on (recorded in the manifest; see `stage_action`)."""
        return world_size_of(self.recipe.accelerate_config) if self.launcher(spec) != "in-process" else 1

    def execute(self, stage: PlannedStage, entry: dict, resolved: dict, key: str, inputs: dict, data: dict,
                fresh: bool) -> None:
        spec = stage.spec
        stage_dir = self.layout.stage_dir(stage.name)
        if fresh:
            # Emptied before the new hash is recorded: a kill in between leaves the old hash, so the
            # next run starts over again rather than trusting files from another config.
            shutil.rmtree(stage_dir, ignore_errors=True)
        config_file = self.layout.config_file(stage.name)
        write_atomic(config_file, yaml.safe_dump(resolved, sort_keys=False))
        entry.update(status="running", checkpoint=str(stage_dir), config_hash=key, inputs=inputs, data=data,
                     launcher=self.launcher(spec), world_size=self.world_size(spec),
                     config_file=str(config_file.relative_to(self.run_dir)), started_at=now(),
                     attempts=1 if fresh else entry.get("attempts", 0) + 1, error=None)
        for stale in ("metrics", "finished_at", "duration_s", "note"):
            entry.pop(stale, None)
        write_manifest(self.run_dir, self.manifest)
        print(f"[runner] {stage.name}: {'starting' if fresh else 'resuming'} in {stage_dir}", flush=True)
        start = time.monotonic()
        try:
            self.launch(spec, resolved, config_file)
            metrics = read_metrics(spec, stage_dir)
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            with contextlib.suppress(OSError):  # a full disk may refuse the manifest too; `exc` says why
                write_manifest(self.run_dir, self.manifest)
            raise
        entry.update(status="done", metrics=metrics, finished_at=now(),
                     duration_s=round(time.monotonic() - start, 2))

    def launch(self, spec: StageSpec, resolved: dict, config_file: Path) -> None:
        if self.launcher(spec).startswith("accelerate:"):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(self.recipe.accelerate_config), "-m", "rlhf_stack.pipeline.launch", spec.name, str(config_file),
                   str(self.recipe.seed)]
            code = subprocess.run(cmd, check=False, env=launch_env(self.recipe.torch_threads)).returncode
            if code != 0:
                raise RlhfStackError(f"stage {spec.name} failed under accelerate launch (exit code {code}); "
                                     "its output is above")
            return
        cfg = validate(spec.config_type(), resolved, origin=spec.field)
        from rlhf_stack.modeling import configure_torch

        configure_torch(self.recipe.torch_threads)  # threads and precision, decided in one place
        seed_everything(self.recipe.seed)
        spec.entry()(cfg)


def launch_env(threads: int | None = None) -> dict[str, str]:
    """Environment of `accelerate launch`. Without CUDA, ACCELERATE_USE_CPU makes the torchrun-started
    processes CPU ranks of a gloo group (accelerate's MULTI_CPU launcher needs mpirun instead).
    threads: each process's CPU threads (OMP_NUM_THREADS), when set."""
    import torch

    from rlhf_stack.model_card import COMMAND_ENV, invocation

    env = dict(os.environ)
    env.setdefault(COMMAND_ENV, invocation())  # what the model cards of its checkpoints name
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def damaged_output(spec: StageSpec, stage_dir: Path) -> str | None:
    """Why a finished training stage's output cannot be handed on (a file no longer matches the
    size or sha256 its checkpoint_manifest.json records), or None. An output written before
    checkpoints carried a manifest is taken as it is."""
    from rlhf_stack import checkpointing

    if spec.marker != STAGE_FILE or not (stage_dir / checkpointing.MANIFEST_FILE).is_file():
        return None
    return checkpointing.verify(stage_dir)


def read_metrics(spec: StageSpec, stage_dir: Path) -> dict:
    """Final metrics from a finished output: stage.json's `metrics`, or the eval summary."""
    info = json.loads((stage_dir / spec.marker).read_text())
    if spec.name != "eval":
        return info.get("metrics", {})
    metrics = dict(info.get("summary", {}))
    rm = info.get("reward_model") or {}
    metrics.update({f"rm_{k}": v for k, v in rm.items() if isinstance(v, int | float)})
    return metrics


def seed_everything(seed: int) -> None:
    """Same seed before every in-process stage, so a stage's result does not depend on what ran
    before it in this process (a resumed run must match an uninterrupted one)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


