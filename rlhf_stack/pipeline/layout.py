"""Every file name of a run directory and of a stage's output directory, in one place.

    RUN_DIR/
      manifest.json        the runner's record: per stage its status, config hash, inputs, metrics
      recipe.yaml          the recipe as run (overrides applied)
      configs/<stage>.yaml each stage's resolved config (references replaced, output_dir set)
      <stage>/             a stage's output: its checkpoint, or the evaluation's results
        stage.json         a finished checkpoint's record, written last (the commit marker)
        checkpoint_manifest.json  size and sha256 of every file of the checkpoint (checkpointing.py)
        logs/              train_log.jsonl (SFT, RM) or ppo_log.jsonl + samples.jsonl (PPO)
        checkpoints/       resumable training state (Trainer checkpoint-N/, PPO step-N/), each with
                           its checkpoint_manifest.json; .partial/ while one is written, corrupt/
                           for those a resume skipped
      eval/results.json    a finished evaluation (its commit marker), eval/samples.jsonl beside it
      report.md, plots/    the report
      .lock                one runner per run directory

Stdlib only, so every module (the foundation included) can name these files without cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE_FILE = "stage.json"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
PPO_LOG = "ppo_log.jsonl"
SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
MANIFEST_FILE = "manifest.json"
RECIPE_FILE = "recipe.yaml"
CONFIGS_DIR = "configs"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    def stage_dir(self, stage: str) -> Path:
        """A stage's output directory (its checkpoint; the evaluation's results)."""
        return self.root / stage

    def config_file(self, stage: str) -> Path:
        """The stage's resolved config, as the runner handed it over."""
        return self.root / CONFIGS_DIR / f"{stage}.yaml"

    def stage_record(self, stage: str) -> Path:
        """stage.json of a training stage's checkpoint."""
        return self.stage_dir(stage) / STAGE_FILE

    def log(self, stage: str, name: str) -> Path:
        """A log file of a stage (TRAIN_LOG, PPO_LOG, SAMPLES_FILE)."""
        return self.stage_dir(stage) / LOGS_DIR / name
