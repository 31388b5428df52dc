"""`evaluate` module `pairwise_f1`: load it by path, offline (evaluate's hub is not needed).

    evaluate.load(str(rlhf_stack.metrics.metric_path("pairwise_f1")))
"""

import datasets
import evaluate

from rlhf_stack.metrics.ranking import pairwise_prf

_DESCRIPTION = """\
Precision, recall and F1 of the binary call "the first completion beats the second" over every pair
(i, j), i < j in presentation order, whose ranks differ: label rank_i < rank_j, prediction s_i > s_j.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of K reward scores per ranking (K may differ between rankings).
    references: one list of K ranks per ranking (1 = best, equal numbers = tie).
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
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("int64")),
            }),
        )

    def _compute(self, predictions, references):
        return pairwise_prf(predictions, references)
