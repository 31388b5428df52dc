"""The project's metrics as `evaluate` modules, loaded by path (evaluate's hub is unreachable offline).

    import evaluate
    from rlhf_stack.metrics import metric_path
    evaluate.load(str(metric_path("ranking_accuracy"))).compute(predictions=..., references=...)

Reward-model metrics (`ranking_accuracy`, `kendall_tau`, `pairwise_f1`, `pairwise_calibration`)
wrap the pure functions of `rlhf_stack.metrics.ranking`; `rlhf_stack.metrics.agreement` holds the
annotators' own agreement on rankings, the noise ceiling those metrics are read against.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
RANKING_METRICS = ("ranking_accuracy", "kendall_tau", "pairwise_f1", "pairwise_calibration")


def metric_path(name: str) -> Path:
    """Directory of the metric module `name` (what `evaluate.load` takes)."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no metric named {name!r}; available: {', '.join(available)}")
    return path


def load_metric(name: str):
    """`evaluate.load` of one of our metric modules, by path."""
    import evaluate

    return evaluate.load(str(metric_path(name)))
