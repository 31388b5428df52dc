"""The stage runner: one recipe -> SFT, reward model, DPO and/or PPO, evaluation, report, resumable.

`run_recipe(recipe, overrides)` composes the stage functions (STYLE item 1) and adds only what a
chain of stages needs:

- hand-off by reference: any string `@sft`, `@reward`, `@dpo` or `@ppo` in a stage's config becomes that
  stage's checkpoint directory before the stage runs (`ppo.policy.name_or_path: "@sft"`);
  the reuse rule and its keys live in `staleness.py`, the manifest file and lock in `manifest.py`;
- `RUN_DIR/manifest.json` (written atomically after every change): per stage its status, checkpoint,
  timings, metrics, config hash, data fingerprints; plus package versions;
- skip and resume: a stage's config hash covers its own config, its data files' fingerprints and
  the hashes of the stages it references, so an upstream change invalidates what follows. A stage
  whose hash and upstream checkpoints are unchanged and whose output is finished is reused; one that
  was interrupted is called again on the same directory, where it resumes from its last checkpoint;
  any other is started over in an emptied directory.

Stages run in this process, or as `accelerate launch` subprocesses (`launch.py`) when the recipe
names an accelerate config. The stages come from the registry (`stages.py`); each stage's output
directory is RUN_DIR/<stage> (`layout.py`), set here and nowhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from rlhf_stack.config import Config, StageResult, apply_overrides, read_yaml, validate
from rlhf_stack.dpo.stage import DPOConfig
from rlhf_stack.errors import ConfigError, RlhfStackError
from rlhf_stack.evaluation.evaluate import EvalConfig
from rlhf_stack.pipeline.layout import RunLayout
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
from rlhf_stack.pipeline.stages import ORDER, REFERABLE, STAGES, StageSpec
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

    Beyond the schema, checks that no stage sets output_dir (the runner owns it) and that every
    `@stage` reference names an earlier stage; errors carry the key path and YAML line.
    """
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
    problems = []
    for spec in STAGES.values():
        section = data.get(spec.field)
        if not isinstance(section, dict):
            continue
        if "output_dir" in section:
            problems.append((f"{spec.field}.output_dir", "is set by the runner (RUN_DIR/" + spec.name
                             + "); remove it, or choose the run directory with run_dir / --run-dir"))
        for key, ref in iter_references(section, spec.field):
            if ref not in REFERABLE or ORDER.index(ref) >= ORDER.index(spec.name):
                earlier = [s for s in REFERABLE if ORDER.index(s) < ORDER.index(spec.name)]
                problems.append((key, f"'@{ref}' is not an earlier stage (allowed: "
                                      f"{', '.join('@' + s for s in earlier) or 'none'})"))
    if problems:
        raise ConfigError("\n".join(f"{_where(origin, lines, key)}{key}: {msg}" for key, msg in problems))
    return recipe, origin


def _where(origin: str, lines: dict[str, int], key: str) -> str:
    if not origin:
        return ""
    return f"{origin}:{lines[key]}: " if key in lines else f"{origin}: "


def stage_dict(recipe: Recipe, spec: StageSpec) -> dict:
    """The stage's config as a plain dict, the recipe seed filled in where the stage left its own unset."""
    cfg = getattr(recipe, spec.field)
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
    recipe, origin = load_recipe(recipe, overrides)
    run_dir = Path(run_dir or recipe.run_dir or default_run_dir(origin))
    present = [name for name in ORDER if getattr(recipe, STAGES[name].field) is not None]
    selected = select_stages(present, only, from_stage)
    with run_lock(run_dir):
        run = _Run(recipe, run_dir, _open_manifest(run_dir, recipe, origin, selected), force)
        for name in present:
            run.visit(STAGES[name], name in selected)
        report = None
        if recipe.report:
            from rlhf_stack.evaluation.report import write_report

            report = write_report(run_dir)
            run.manifest["report"] = report.name
            write_manifest(run_dir, run.manifest)
    return RunResult(run_dir, run.manifest, run.results, run.ran, run.reused, report)


def default_run_dir(origin: str) -> str:
    return f"runs/{Path(origin).stem}" if origin else "runs/recipe"


def select_stages(present: list[str], only: list[str] | None, from_stage: str | None) -> list[str]:
    """The stages this call runs, in pipeline order."""
    for name in [*(only or []), *([from_stage] if from_stage else [])]:
        if name not in STAGES:
            raise ConfigError(f"unknown stage '{name}' (stages: {', '.join(ORDER)})")
        if name not in present:
            raise ConfigError(f"the recipe has no {STAGES[name].field} section, so stage '{name}' cannot run")
    chosen = [s for s in present if not only or s in only]
    if from_stage:
        chosen = [s for s in chosen if ORDER.index(s) >= ORDER.index(from_stage)]
    return chosen


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

    def visit(self, spec: StageSpec, selected: bool) -> None:
        stage_dir = self.layout.stage_dir(spec.name)
        entry = self.manifest["stages"].setdefault(spec.name, {"status": "pending"})
        try:
            config, resolved, key, inputs, data = self.prepare(spec)
        except ConfigError:
            if selected:
                raise
            entry.update(status="skipped", note="not selected, and an upstream stage has no checkpoint")
            return write_manifest(self.run_dir, self.manifest)
        world = self.world_size(spec)
        action = stage_action(entry, key, inputs, stage_dir / spec.marker, self.force and selected, world)
        if action == "fresh" and selected and (reason := restart_reason(entry, world)):
            print(f"[runner] {spec.name}: {reason}", flush=True)
        if action == "reuse":
            entry.update(status="done", metrics=read_metrics(spec, stage_dir))
            entry.pop("note", None)
            self.reused.append(spec.name)
        elif not selected:
            entry.update(status="skipped", note="not selected; out of date or unfinished")
        else:
            self.execute(spec, entry, resolved, key, inputs, data, fresh=action == "fresh")
            self.ran.append(spec.name)
        if entry["status"] == "done":
            self.results[spec.name] = StageResult(stage_dir, entry["metrics"])
        write_manifest(self.run_dir, self.manifest)

    def prepare(self, spec: StageSpec) -> tuple[dict, dict, str, dict, dict]:
        """(config, resolved config, config hash, upstream checkpoint ids, data fingerprints)."""
        from rlhf_stack.data import fingerprint

        config = stage_dict(self.recipe, spec)
        upstream, inputs, checkpoints = {}, {}, {}
        for key, ref in iter_references(config, spec.field):
            ref_dir = self.layout.stage_dir(ref)
            ckpt = checkpoint_id(ref_dir, STAGES[ref].marker)
            if ckpt is None:
                raise ConfigError(f"{key}: '@{ref}' needs a finished {ref} checkpoint in {ref_dir}, and there is "
                                  f"none (run the {ref} stage first, or give a path instead of @{ref})")
            upstream[ref] = self.manifest["stages"].get(ref, {}).get("config_hash") or ckpt
            inputs[ref], checkpoints[ref] = ckpt, str(ref_dir.resolve())
        data = {path: fingerprint(path) for path in data_files(getattr(self.recipe, spec.field))}
        key = config_hash(spec.name, config, data, upstream)
        resolved = {**resolve_references(config, checkpoints), "output_dir": str(self.layout.stage_dir(spec.name))}
        return config, resolved, key, inputs, data

    def launcher(self, spec: StageSpec) -> str:
        """How the stage runs: `in-process` or `accelerate:CONFIG` (recorded in the manifest)."""
        if self.recipe.accelerate_config and spec.name != "eval":
            return f"accelerate:{self.recipe.accelerate_config}"
        return "in-process"

    def world_size(self, spec: StageSpec) -> int:
        """The processes the stage runs on (recorded in the manifest; see `stage_action`)."""
        return world_size_of(self.recipe.accelerate_config) if self.launcher(spec) != "in-process" else 1

    def execute(self, spec: StageSpec, entry: dict, resolved: dict, key: str, inputs: dict, data: dict,
                fresh: bool) -> None:
        stage_dir = self.layout.stage_dir(spec.name)
        if fresh:
            # Emptied before the new hash is recorded: a kill in between leaves the old hash, so the
            # next run starts over again rather than trusting files from another config.
            shutil.rmtree(stage_dir, ignore_errors=True)
        config_file = self.layout.config_file(spec.name)
        write_atomic(config_file, yaml.safe_dump(resolved, sort_keys=False))
        entry.update(status="running", checkpoint=str(stage_dir), config_hash=key, inputs=inputs, data=data,
                     launcher=self.launcher(spec), world_size=self.world_size(spec),
                     config_file=str(config_file.relative_to(self.run_dir)), started_at=now(),
                     attempts=1 if fresh else entry.get("attempts", 0) + 1, error=None)
        for stale in ("metrics", "finished_at", "duration_s", "note"):
            entry.pop(stale, None)
        write_manifest(self.run_dir, self.manifest)
        print(f"[runner] {spec.name}: {'starting' if fresh else 'resuming'} in {stage_dir}", flush=True)
        start = time.monotonic()
        try:
            self.launch(spec, resolved, config_file)
            metrics = read_metrics(spec, stage_dir)
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
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

    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
    return env


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


