"""`evaluate` module `pairwise_f1`: load it by path, offline (evaluate's hub is not needed).

    evaluate.load(str(rlhf_stack.metrics.metric_path("pairwise_f1")))
"""

import evaluate

from rlhf_stack.metrics.ranking import pairwise_prf
from rlhf_stack.metrics.ranking_module import RANKING_ARGS, ranking_metric_info

_DESCRIPTION = """\
Precision, recall and F1 of the binary call "the first completion beats the second" over every pair
(i, j), i < j in presentation order, whose ranks differ: label rank_i < rank_j, prediction s_i > s_j.
"""

_KWARGS_DESCRIPTION = f"""
Args:
{RANKING_ARGS}
Returns:
    precision (float), recall (float), f1 (float)
Examples:
    >>> metric = evaluate.load(str(rlhf_stack.metrics.metric_path("pairwise_f1")))
    >>> metric.compute(predictions=[[2.0, 0.5, -1.0]], references=[[1, 2, 2]])
"""

_CITATION = """\

"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairwiseF1(evaluate.Metric):
    def _info(self):
        return ranking_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        return pairwise_prf(predictions, references)
