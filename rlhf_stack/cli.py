"""`rlhf-stack`: the command line. Each command is a thin wrapper over the Python API.

    rlhf-stack run RECIPE.yaml [--set k=v ...] [--run-dir DIR] [--only STAGE ...] [--from STAGE] [--force]
    rlhf-stack sft|reward|dpo|ppo --config FILE [--set k=v ...]
    rlhf-stack eval --config FILE [--set k=v ...]
    rlhf-stack report RUN_DIR
    rlhf-stack export CHECKPOINT OUT [--merge]
    rlhf-stack config show sft|reward|dpo|ppo|eval|recipe
    rlhf-stack label ...   (the labeling tool, data_tools/labeler)
    rlhf-stack data ...    (convert / validate / stats / split, data_tools)

Bad input (`RlhfStackError`) prints one `error: ...` message and exits 2, without a traceback.
Heavy modules are imported inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from data_tools.cli import app as data_app
from data_tools.labeler.cli import app as label_app
from rlhf_stack.errors import RlhfStackError, disk_full

app = typer.Typer(help="RLHF the InstructGPT way: SFT -> reward model -> PPO(-ptx).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
config_app = typer.Typer(help="Show every option of a config, with its default and documentation.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(label_app, name="label", help="Collect human rankings: generate candidates, serve, export, stats.")
app.add_typer(data_app, name="data", help="Convert public data sets, validate and inspect data, split by stage.")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str], typer.Option("--set", "-s", help="Override: key.path=value (repeatable).")]


def _run_stage(stage: str, config: Path, overrides: list[str]) -> None:
    from rlhf_stack.config import load_config
    from rlhf_stack.pipeline.stages import STAGES

    spec = STAGES[stage]
    cfg = load_config(spec.config_type(), config, overrides or [])
    result = spec.entry()(cfg)
    _print_result(getattr(result, "checkpoint", None), getattr(result, "metrics", result))


def _print_result(checkpoint, metrics) -> None:
    if checkpoint is not None:
        typer.echo(f"checkpoint: {checkpoint}")
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            if isinstance(value, float):
                typer.echo(f"  {key}: {value:.4g}")
            elif isinstance(value, int | str | bool) or value is None:
                typer.echo(f"  {key}: {value}")


@app.command()
def sft(config: ConfigOpt, set: SetOpt = None) -> None:  # noqa: A002 - the flag is --set
    """Stage 1: supervised fine-tuning on instructions (or continued pretraining on a corpus)."""
    _run_stage("sft", config, set)


@app.command()
def reward(config: ConfigOpt, set: SetOpt = None) -> None:  # noqa: A002
    """Stage 2: train a reward model on K-wise rankings."""
    _run_stage("reward", config, set)


@app.command()
def dpo(config: ConfigOpt, set: SetOpt = None) -> None:  # noqa: A002
    """DPO from the SFT policy on K-wise rankings: the offline alternative to reward model + PPO."""
    _run_stage("dpo", config, set)


@app.command()
def ppo(config: ConfigOpt, set: SetOpt = None) -> None:  # noqa: A002
    """Stage 3: PPO (and PPO-ptx) against the reward model."""
    _run_stage("ppo", config, set)


@app.command("eval")
def evaluate(config: ConfigOpt, set: SetOpt = None) -> None:  # noqa: A002
    """Evaluate a policy against a baseline: win rate, score, KL, length, perplexity, best-of-N."""
    _run_stage("eval", config, set)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set: SetOpt = None,  # noqa: A002
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default: the recipe's run_dir).")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Run only these stages (repeatable).")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Start at this stage; earlier ones must be done.")] = None,
    force: Annotated[bool, typer.Option(help="Re-run stages even when their checkpoint is up to date.")] = False,
) -> None:
    """Run a recipe: the stages in order with checkpoint hand-off, then evaluation and the report."""
    from rlhf_stack.pipeline.runner import run_recipe

    result = run_recipe(recipe, set or [], run_dir=run_dir, only=only, from_stage=from_stage, force=force)
    typer.echo(f"run dir: {result.run_dir}")
    if getattr(result, "report", None):
        typer.echo(f"report: {result.report}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory written by `rlhf-stack run`.")]) -> None:
    """(Re)write RUN_DIR/report.md and its plots."""
    from rlhf_stack.evaluation.report import write_report

    typer.echo(f"report: {write_report(run_dir)}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A stage checkpoint directory.")],
    out: Annotated[Path, typer.Argument(help="Output directory.")],
    merge: Annotated[bool, typer.Option(help="Merge an adapter into its base (a full model); prompt tuning, "
                                             "prefix tuning and bottleneck adapters cannot be merged.")] = True,
) -> None:
    """Export a checkpoint as a standalone HF model directory (an adapter of any mergeable method merged)."""
    from rlhf_stack.modeling import export_merged, read_stage_info

    if read_stage_info(checkpoint) is None and not (checkpoint / "config.json").exists():
        raise RlhfStackError(f"{checkpoint} is not a finished checkpoint (no stage.json)")
    if not merge:
        import shutil

        shutil.copytree(checkpoint, out, dirs_exist_ok=False)
        typer.echo(f"copied to {out}")
        return
    typer.echo(f"exported: {export_merged(checkpoint, out)}")


@config_app.command("show")
def config_show(stage: Annotated[str, typer.Argument(help="sft | reward | dpo | ppo | eval | recipe")]) -> None:
    """Print every key of a stage config with its type, default and documentation."""
    from rlhf_stack.config import describe
    from rlhf_stack.pipeline.stages import STAGES

    if stage == "recipe":
        from rlhf_stack.pipeline.runner import Recipe as cls
    elif stage in STAGES:
        cls = STAGES[stage].config_type()
    else:
        raise RlhfStackError(f"unknown stage {stage!r}; expected one of {', '.join([*STAGES, 'recipe'])}")
    for key, type_name, default, doc in describe(cls):
        typer.echo(f"{key}  [{type_name}{' = ' + default if default else ''}]")
        if doc:
            typer.echo(f"    {' '.join(doc.split())}")


def main() -> None:
    """Console entry point: one readable line for user errors (a full disk included), exit code 2."""
    try:
        app()
    except RlhfStackError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        if (full := disk_full(exc)) is None:
            raise
        typer.echo(f"error: {full}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
