"""`evaluate` module `ranking_accuracy`: load it by path, offline (evaluate's hub is not needed).

    evaluate.load(str(rlhf_stack.metrics.metric_path("ranking_accuracy")))
"""

import evaluate

from rlhf_stack.metrics.ranking import pairwise_accuracy, top1_accuracy
from rlhf_stack.metrics.ranking_module import RANKING_ARGS, ranking_metric_info

_DESCRIPTION = """\
Pairwise accuracy (share of preferred pairs rank_i < rank_j that the reward model orders s_i > s_j;
tied pairs excluded, exact score ties count one half) and top-1 accuracy (share of rankings whose
highest-scored completion is ranked best).
"""

_KWARGS_DESCRIPTION = f"""
Args:
{RANKING_ARGS}
Returns:
    pairwise_accuracy (float), n_pairs (int), top1_accuracy (float), n_rankings (int)
Examples:
    >>> metric = evaluate.load(str(rlhf_stack.metrics.metric_path("ranking_accuracy")))
    >>> metric.compute(predictions=[[2.0, 0.5, -1.0]], references=[[1, 2, 2]])
"""

_CITATION = """\
@article{ouyang2022training,
  title={Training language models to follow instructions with human feedback},
  author={Ouyang, Long and others}, journal={NeurIPS}, year={2022}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankingAccuracy(evaluate.Metric):
    def _info(self):
        return ranking_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        return {**pairwise_accuracy(predictions, references), **top1_accuracy(predictions, references)}
