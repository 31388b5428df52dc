"""Stage 2: the reward model from K-wise rankings. `RewardConfig` + `train_reward(cfg) -> StageResult`.

Where to look:
- `stage.py`      the stage: config, data, model initialisation, the Trainer, normalisation;
- `batching.py`   rankings -> tensors, the one place (chat encoding, shared prompt, padding, collator);
- `functional.py` the ranking losses as pure functions on `(B, K)` tensors;
- `trainer.py`    transformers' Trainer with the K-wise `compute_loss` (gradient caching for large K);
- `scorer.py`     `RewardScorer`: a finished reward checkpoint scoring (prompt, response) text.

Names are imported on first use: `import rlhf_stack.reward.functional` needs torch alone.
"""

from importlib import import_module

_EXPORTS = {"RewardConfig": "rlhf_stack.reward.stage", "train_reward": "rlhf_stack.reward.stage",
            "load_reward_model": "rlhf_stack.reward.stage", "RewardScorer": "rlhf_stack.reward.scorer"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_stack.reward' has no attribute {name!r}")
