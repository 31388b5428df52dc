"""Did RLHF help? Evaluation of trained policies and reward models, and the run report.

Where to look:
- `evaluate.py` `EvalConfig`, `evaluate_from_config` (win rate, KL, the best-of-n frontier,
  perplexity);
- `reward_accuracy.py` `evaluate_reward_model` (stage-2 metrics on any rankings file);
- `stats.py`    the statistics, pure functions: win rates, the prompt bootstrap, best-of-n picks,
  the frontier and a policy's position against it;
- `judges.py`   the judge registry (a reward model, a Python scorer, or a judge registered by name);
- `models.py`   the models under test, sampled and scored through stage 3's own rollout path;
- `report.py`   RUN_DIR/report.md; `markdown.py` how its cells and tables are written; `plots.py` its figures.

Names are imported on first use.
"""

from importlib import import_module

_EXPORTS = {"EvalConfig": "rlhf_stack.evaluation.evaluate", "evaluate_from_config": "rlhf_stack.evaluation.evaluate",
            "evaluate_reward_model": "rlhf_stack.evaluation.reward_accuracy", "JudgeConfig": "rlhf_stack.evaluation.judges",
            "write_report": "rlhf_stack.evaluation.report"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_stack.evaluation' has no attribute {name!r}")
