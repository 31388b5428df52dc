"""Stage 3: PPO and PPO-ptx. `PPOConfig` + `train_ppo(cfg, reward_fns=None) -> StageResult`.

Where to look:
- the loop: `trainer.py` the six steps of a PPO step, in order; `setup.py` what is built once
  before it; `update.py` step 5, the PPO epochs and their backward variants; `config.py` every
  setting, documented where it is declared;
- the math, pure tensor functions with hand-computed tests: `functional.py` log-probs, KL
  estimators, KL-penalised rewards, GAE, the clipped policy and value losses, loss aggregation;
  `estimators.py` the advantage estimators built on them (GAE, RLOO, GRPO, REINFORCE-baseline,
  best-of-k), one chosen at setup;
- rollouts and rewards: `rollout.py` prompts -> responses -> the tensors PPO needs; `sampling.py`
  the sampler inside `generate()`; `rewards.py` the reward sources and the raw score -> terminal
  reward processing;
- the models: `assembly.py` policy, reference and value from the SFT checkpoint (one shared base
  under LoRA); `models.py` their passes over a rollout; `value.py` the value's head and init;
  `shared_reward.py` a LoRA reward model as one more adapter on that base;
- speed paths, each with a setting that turns it off (same results up to float rounding):
  `prefill.py` the prompt pass without padding; `trunk.py` the frozen blocks run once a rollout;
  `trunk_reward.py` the RM scored from that trunk; `flat.py` passes over one packed row;
  `packed.py` oneDNN-packed weights for sampling and the frozen products of the updates;
- state across steps: `control.py` KL coefficient and score moments; `averaging.py` the policy's
  weight average (`policy_ema`); `checkpoint.py` exact resume; `data.py` data order as a function
  of the step; `guard.py` non-finite checks; `logs.py` the JSONL log and run summary.

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
