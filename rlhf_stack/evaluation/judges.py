"""Who decides which of two responses is better: the judge registry.

A judge is a batch scorer `f(prompts, responses) -> list[float]`, higher is better (the same
contract as a Python reward source). `JudgeConfig.kind` names one of:

- `reward_model`: a trained RM checkpoint (`path`, e.g. `@reward` in a recipe);
- `python`: any scorer named `package.module:function` (`path`);
- a registered judge, by name. Packages register judges as entry points in the group
  `rlhf_stack.judges` (`name = "package.module:scorer"`); the bundled demo data registers its
  hidden gold judge as `gold` (pyproject.toml). rlhf_stack never imports the package that
  provides a judge: it finds it by name, so new judges need no change here.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from pydantic import field_validator

from rlhf_stack.config import Config, load_callable
from rlhf_stack.errors import ConfigError

ScoreFn = Callable[[list, list[str]], list[float]]
"""(prompts, responses) -> one float per response, higher is better (the reward-source contract)."""

ENTRY_POINT_GROUP = "rlhf_stack.judges"
BUILTIN = ("reward_model", "python")


def registered_judges() -> dict[str, str]:
    """Judges other packages register, by name -> `module:function` (not imported)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


class JudgeConfig(Config):
    """Who decides which of two responses is better."""

    kind: str = "gold"
    """`reward_model`: a trained RM checkpoint; `python`: `f(prompts, responses) -> list[float]` named
    `package.module:function`; or a registered judge by name (`gold`: the demo data's hidden gold
    judge, registered by `data_tools`)."""
    path: str | None = None
    """The RM checkpoint (kind reward_model; `@reward` in a recipe) or `module:function` (kind python)."""

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        known = (*BUILTIN, *registered_judges())
        if kind not in known:
            raise ValueError(f"unknown judge {kind!r} (known: {', '.join(known)}; register more under the "
                             f"entry-point group {ENTRY_POINT_GROUP})")
        return kind


def reward_model_scorer(checkpoint: str) -> ScoreFn:
    from rlhf_stack.reward.scorer import RewardScorer

    return RewardScorer(checkpoint).score


def build_judge(judge: JudgeConfig) -> ScoreFn:
    """The judge's batch scorer: higher is better."""
    if judge.kind in BUILTIN and not judge.path:
        raise ConfigError(f"judge.path is required for judge kind {judge.kind}")
    if judge.kind == "reward_model":
        return reward_model_scorer(judge.path)
    fn = load_callable(judge.path if judge.kind == "python" else registered_judges()[judge.kind])
    return lambda prompts, responses: [float(x) for x in fn(list(prompts), list(responses))]
