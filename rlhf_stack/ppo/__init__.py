"""Stage 3: PPO and PPO-ptx. `PPOConfig` + `train_ppo(cfg, reward_fns=None) -> StageResult`.

Names are imported on first use, so `import rlhf_stack.ppo.functional` needs torch alone.
"""

from importlib import import_module

_EXPORTS = {"PPOConfig": "rlhf_stack.ppo.config", "train_ppo": "rlhf_stack.ppo.trainer",
            "Rollout": "rlhf_stack.ppo.rollout"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_stack.ppo' has no attribute {name!r}")
