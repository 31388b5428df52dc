"""`evaluate` module `kendall_tau`: load it by path, offline (evaluate's hub is not needed).

    evaluate.load(str(rlhf_stack.metrics.metric_path("kendall_tau")))
"""

import evaluate

from rlhf_stack.metrics.ranking import kendall_tau
from rlhf_stack.metrics.ranking_module import RANKING_ARGS, ranking_metric_info

_DESCRIPTION = """\
Mean per-ranking Kendall tau-b between the reward model's scores and the human ranking
(+1: same order, -1: reversed); ties on either side handled by tau-b.
"""

_KWARGS_DESCRIPTION = f"""
Args:
{RANKING_ARGS}
Returns:
    kendall_tau (float)
Examples:
    >>> metric = evaluate.load(str(rlhf_stack.metrics.metric_path("kendall_tau")))
    >>> metric.compute(predictions=[[2.0, 0.5, -1.0]], references=[[1, 2, 2]])
"""

_CITATION = """\
@article{kendall1945treatment,
  title={The treatment of ties in ranking problems}, author={Kendall, Maurice G},
  journal={Biometrika}, volume={33}, number={3}, pages={239--251}, year={1945}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KendallTau(evaluate.Metric):
    def _info(self):
        return ranking_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        return kendall_tau(predictions, references)
