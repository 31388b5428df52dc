"""rlhf_stack: the InstructGPT pipeline (SFT -> K-wise reward model -> PPO/PPO-ptx, or DPO) on the HF stack.

Light re-exports only: `import rlhf_stack` loads no model code; each name is imported on first use.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "SFTConfig": "rlhf_stack.sft", "train_sft": "rlhf_stack.sft",
    "RewardConfig": "rlhf_stack.reward.stage", "train_reward": "rlhf_stack.reward.stage",
    "RewardScorer": "rlhf_stack.reward.scorer",
    "DPOConfig": "rlhf_stack.dpo.stage", "train_dpo": "rlhf_stack.dpo.stage",
    "PPOConfig": "rlhf_stack.ppo.config", "train_ppo": "rlhf_stack.ppo.trainer",
    "Recipe": "rlhf_stack.pipeline.runner", "run_recipe": "rlhf_stack.pipeline.runner",
    "RunResult": "rlhf_stack.pipeline.runner",
    "EvalConfig": "rlhf_stack.evaluation.evaluate", "evaluate_from_config": "rlhf_stack.evaluation.evaluate",
    "StageResult": "rlhf_stack.config", "ModelConfig": "rlhf_stack.config", "DataConfig": "rlhf_stack.config",
    "TrainingConfig": "rlhf_stack.config", "LoraSettings": "rlhf_stack.config", "load_config": "rlhf_stack.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_stack' has no attribute {name!r}")
