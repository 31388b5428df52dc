"""What the four ranking `evaluate` modules share: their inputs and the `MetricInfo` built on them.

Each module (`ranking_accuracy`, `kendall_tau`, `pairwise_f1`, `pairwise_calibration`) takes one
list of K reward scores and one list of K ranks per ranking. `evaluate.load(path)` copies a module
file into its cache before importing it, so the modules import this absolutely
(`from rlhf_stack.metrics.ranking_module import ...`; rlhf_stack is installed).
"""

from __future__ import annotations

import datasets
import evaluate

RANKING_ARGS = """\
    predictions: one list of K reward scores per ranking (K may differ between rankings).
    references: one list of K ranks per ranking (1 = best, equal numbers = tie)."""

RANKING_FEATURES = datasets.Features({
    "predictions": datasets.Sequence(datasets.Value("float64")),
    "references": datasets.Sequence(datasets.Value("int64")),
})


def ranking_metric_info(description: str, citation: str, inputs_description: str) -> evaluate.MetricInfo:
    """The `_info()` of a ranking metric module: its texts over the shared scores/ranks inputs."""
    return evaluate.MetricInfo(description=description, citation=citation,
                               inputs_description=inputs_description, features=RANKING_FEATURES)
