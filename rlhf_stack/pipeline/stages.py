"""The stage registry: the one list of the stages a recipe can hold and how each is called.

The runner, `rlhf-stack <stage>`, `rlhf-stack config show` and the subprocess launcher all read
it. A new stage is one entry here plus its typed field on `runner.Recipe` (a test checks the two
agree). Modules are named, not imported, so reading the registry costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from rlhf_stack.pipeline.layout import RESULTS_FILE, STAGE_FILE


@dataclass(frozen=True)
class StageSpec:
    """How the runner and the CLI call one stage."""

    name: str  # stage name: manifest key, RUN_DIR/<name>, `--only` value, CLI command
    field: str  # the Recipe field holding its config
    config: str  # `module:Class` of its config
    function: str  # `module:function`, cfg -> StageResult (training stages) or results dict (eval)
    marker: str  # file whose presence in the output dir marks it finished
    referable: bool  # another stage may name its checkpoint as `@name`

    def config_type(self) -> type:
        return _resolve(self.config)

    def entry(self) -> Callable:
        return _resolve(self.function)


def _resolve(spec: str):
    module, _, name = spec.partition(":")
    return getattr(import_module(module), name)


STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("sft", "sft", "rlhf_stack.sft:SFTConfig", "rlhf_stack.sft:train_sft", STAGE_FILE, True),
    StageSpec("reward", "reward", "rlhf_stack.reward.stage:RewardConfig", "rlhf_stack.reward.stage:train_reward",
              STAGE_FILE, True),
    StageSpec("dpo", "dpo", "rlhf_stack.dpo.stage:DPOConfig", "rlhf_stack.dpo.stage:train_dpo", STAGE_FILE, True),
    StageSpec("ppo", "ppo", "rlhf_stack.ppo.config:PPOConfig", "rlhf_stack.ppo.trainer:train_ppo", STAGE_FILE, True),
    StageSpec("eval", "evaluation", "rlhf_stack.evaluation.evaluate:EvalConfig",
              "rlhf_stack.evaluation.evaluate:evaluate_from_config", RESULTS_FILE, False),
)}
ORDER = tuple(STAGES)  # pipeline order: a stage may reference only earlier ones
REFERABLE = tuple(name for name, spec in STAGES.items() if spec.referable)
