"""DPO: the offline alternative to stage 3, from SFT on the same K-wise rankings. `DPOConfig` + `train_dpo(cfg) -> StageResult`.

Where to look:
- `stage.py`      the stage: config, data, the Trainer, metrics, checkpoint;
- `batching.py`   rankings -> tensors: the reward model's batching + where each completion starts;
- `functional.py` the losses (sigmoid / IPO / Plackett-Luce) as pure functions on `(B, K)` log-ratios;
- `models.py`     the policy and its frozen reference (one base copy under LoRA);
- `trainer.py`    transformers' Trainer with the K-wise DPO `compute_loss` and the eval metrics.

Names are imported on first use: `import rlhf_stack.dpo.functional` needs torch alone.
"""

from importlib import import_module

_EXPORTS = {"DPOConfig": "rlhf_stack.dpo.stage", "train_dpo": "rlhf_stack.dpo.stage"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhf_stack.dpo' has no attribute {name!r}")
