"""`evaluate` module `pairwise_calibration`: load it by path, offline (evaluate's hub is not needed).

    evaluate.load(str(rlhf_stack.metrics.metric_path("pairwise_calibration")))
"""

import evaluate

from rlhf_stack.metrics.ranking import pairwise_calibration
from rlhf_stack.metrics.ranking_module import RANKING_ARGS, ranking_metric_info

_DESCRIPTION = """\
Calibration of sigmoid(s_i - s_j) as the probability that completion i is preferred over j
(Bradley-Terry), over every ordered pair with different ranks: expected calibration error
(equal-width bins), Brier score and log loss.
"""

_KWARGS_DESCRIPTION = f"""
Args:
{RANKING_ARGS}
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
        return ranking_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, n_bins: int = 10):
        return pairwise_calibration(predictions, references, n_bins=n_bins)
