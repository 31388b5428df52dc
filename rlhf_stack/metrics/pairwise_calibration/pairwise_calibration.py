"""`evaluate` module `pairwise_calibration`: load it by path, offline (evaluate's hub is not needed).

    evaluate.load(str(rlhf_stack.metrics.metric_path("pairwise_calibration")))
"""

import datasets
import evaluate

from rlhf_stack.metrics.ranking import pairwise_calibration

_DESCRIPTION = """\
Calibration of sigmoid(s_i - s_j) as the probability that completion i is preferred over j
(Bradley-Terry), over every ordered pair with different ranks: expected calibration error
(equal-width bins), Brier score and log loss.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of K reward scores per ranking (K may differ between rankings).
    references: one list of K ranks per ranking (1 = best, equal numbers = tie).
    n_bins: number of equal-width probability bins for the ECE (default 10).
Returns:
    ece (float), brier (float), log_loss (float)
Examples:
    >>> metric = evaluate.load(str(rlhf_stack.metrics.metric_path("pairwise_calibration")))
    >>> metric.compute(predictions=[[2.0, 0.5, -1.0]], references=[[1, 2, 2]])
"""

_CITATION = """\
@inproceedings{guo2017calibration,
  title={On calibration of modern neural networks}, author={Guo, Chuan and others},
  booktitle={ICML}, year={2017}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairwiseCalibration(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("int64")),
            }),
        )

    def _compute(self, predictions, references, n_bins: int = 10):
        return pairwise_calibration(predictions, references, n_bins=n_bins)
