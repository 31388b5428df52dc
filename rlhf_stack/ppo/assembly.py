"""Policy, reference and value function for PPO, assembled from the SFT checkpoint (and the RM).
(What they compute: `models.ActorCritic`.)

With LoRA, or another peft method that can be switched off and stacked (DoRA, rsLoRA, IA3, LoHa,
LoKr, OFT, BOFT: `peft_methods.METHODS` refuses the others for this stage), ONE copy of the base
weights serves all three (DESIGN "Tuning methods"; the layout is still named `lora-shared-base`):
  - policy    = peft adapter "default" (trainable; starts equal to the SFT model),
  - reference = the SFT model: a frozen copy of the SFT adapter ("ref") when the SFT checkpoint is
                itself an adapter over base B, else the base with adapters disabled,
  - value     = its own adapter "value" on the same base + a scalar head (where it starts, and
                when it is a model of its own instead: `value.py`).
A reward model that is a LoRA adapter over the same base joins them as the adapter "reward"
(`shared_reward.py`): one base copy in all. Any other reward model is the only other base copy
(loaded by the reward sources), where TRL's PPO held four models. When the value starts from such
a reward model (`value_init`), the value model is a copy of that RM with LoRA layers of the
policy's shape, and the same RM as a reward source scores on that copy with the value's adapters
disabled: two base copies in all. With full fine-tuning, policy, reference and value are
separate models.
The critic-free advantage estimators (rloo, grpo, reinforce_baseline) build no value at all:
no adapter, no head, no backbone, so nothing of it is trained, optimised or checkpointed.
The final policy is saved as a plain adapter over B (or a full model) that any HF user reloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlhf_stack import modeling
from rlhf_stack.ppo.models import POLICY, REF, ActorCritic
from rlhf_stack.ppo.value import (
    VALUE,
    ValueHead,
    head_from_classifier,
    lora_value_model,
    shared_value,
    usable_value_init,
    value_init_adapter,
)


@dataclass(frozen=True)
class ModelInfo:
    """How the models were assembled (recorded in stage.json)."""

    layout: str  # "lora-shared-base" | "lora-shared-base+lora-value-model" | "separate-models"
    reference: str  # "sft-adapter-copy" | "adapters-disabled" | "frozen-copy"
    value_init: str  # "reward-model" | "policy-base" | "none" (a critic-free estimator: no value model)
    base_model: str  # what the saved policy needs to reload (adapter base or the full model)
    # "adapter-on-shared-base" | "value-model-adapters-disabled" (the RM the value model was copied
    # from, scored on that copy) | "separate-model" | "none" (no RM source)
    reward_model: str = "none"
    trunk_blocks: int = 0  # blocks below every adapter, run once per rollout (trunk.py); 0: none


def build_actor_critic(cfg, tokenizer, device: torch.device) -> tuple[ActorCritic, ModelInfo]:
    """Policy/ref/value for `cfg` (a PPOConfig), on `device`, every module in eval mode (no dropout).
    No value function when cfg.uses_value_model is False (the critic-free estimators)."""
    path = modeling.resolve_model_path(cfg.policy.name_or_path)
    modeling.check_trainable_init(path, "policy.name_or_path")
    value_source = usable_value_init(cfg.value_init, tokenizer)
    if cfg.policy.adapter_method is not None:  # lora or another peft method: one shared base
        model, info = _build_shared(cfg, path, value_source, device, cfg.uses_value_model)
    else:
        model, info = _build_separate(cfg, path, value_source, device, cfg.uses_value_model)
    # Dropout off for good: rollout and update must see the same function (Huang et al. 2024;
    # TRL's disable_dropout_in_model). The trainer still switches to train() for the PPO epochs,
    # because transformers only applies gradient checkpointing in training mode.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.eval()
    return model, info


def _build_shared(cfg, path: str, value_source: str | None, device,
                  with_value: bool) -> tuple[ActorCritic, ModelInfo]:
    from peft import PeftModel

    if modeling.is_adapter_dir(path):
        # SFT = B + adapter: load B once; the SFT adapter twice, "ref" frozen and POLICY trainable.
        base_path = modeling.adapter_base(path)
        base = modeling.load_causal_lm(cfg.policy.model_copy(update={"name_or_path": base_path}), merge=True,
                                       device=device)
        modeling.configure_activations(base, cfg.policy)
        peft_model = PeftModel.from_pretrained(base, path, adapter_name=POLICY, is_trainable=True)
        peft_model.load_adapter(path, adapter_name=REF, is_trainable=False)
        ref_adapter, reference = REF, "sft-adapter-copy"
        if with_value:  # the value adapter joins the SFT adapter on its base: one kind per PeftModel
            from rlhf_stack.peft_methods import check_same_kind

            check_same_kind(cfg.policy, str(peft_model.peft_type.value), path)
    else:
        # SFT = full model B: the policy is a new adapter; B itself (adapters disabled) is the reference.
        base_path = path
        peft_model = modeling.apply_tuning(modeling.load_causal_lm(cfg.policy, device=device), cfg.policy)
        ref_adapter, reference = None, "adapters-disabled"
    value_model = origin = None
    if with_value and value_source is not None and value_init_adapter(value_source, base_path, peft_model) is None:
        # The RM is not a LoRA adapter over this base (a full model, or another base): the value
        # starts as the RM, as asked (InstructGPT), on a copy of the RM with LoRA of the policy's
        # shape, so only its adapter and head train.
        value_model, head, origin = lora_value_model(cfg.policy, value_source, device)
        value_init, layout = "reward-model", "lora-shared-base+lora-value-model"
    elif with_value:
        head, value_init = shared_value(cfg.policy, peft_model, value_source, base_path)
        layout = "lora-shared-base"
    else:
        head, value_init, layout = None, "none", "lora-shared-base"
    peft_model.base_model.set_adapter(POLICY, inference_mode=True)
    model = ActorCritic(peft_model, head.to(device) if head else None, ref_adapter=ref_adapter,
                        value_backbone=value_model, value_origin=origin)
    named = list(peft_model.named_parameters())
    value_params = [p for n, p in named if modeling.in_adapter(n, VALUE)] + (list(head.parameters()) if head else [])
    if value_model is not None:
        value_params = [p for p in value_model.parameters() if p.requires_grad] + list(head.parameters())
    model.set_trainable([p for n, p in named if modeling.in_adapter(n, POLICY)], value_params)
    return model, ModelInfo(layout, reference, value_init, base_path)


def _build_separate(cfg, path: str, value_source: str | None, device,
                    with_value: bool) -> tuple[ActorCritic, ModelInfo]:
    policy = modeling.apply_tuning(modeling.load_causal_lm(cfg.policy, merge=True, device=device), cfg.policy)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    ref = modeling.load_causal_lm(cfg.policy, merge=True, device=device).requires_grad_(False)
    if not with_value:
        model = ActorCritic(policy, None, ref_model=ref)
        model.set_trainable(trainable, [])
        return model, ModelInfo("separate-models", "frozen-copy", "none", path)
    if value_source is not None:
        rm_cfg = cfg.policy.model_copy(update={"name_or_path": value_source})
        rm = modeling.load_sequence_classifier(rm_cfg, merge=True, device=device)
        backbone, head = rm.base_model, head_from_classifier(rm)  # InstructGPT: value starts as the RM
        value_init = "reward-model"
    else:
        backbone = modeling.load_causal_lm(cfg.policy, merge=True, device=device).base_model
        head, value_init = ValueHead(backbone.config.hidden_size), "policy-base"
    modeling.configure_activations(backbone, cfg.policy)
    model = ActorCritic(policy, head.to(device), value_backbone=backbone, ref_model=ref)
    model.set_trainable(trainable, list(backbone.parameters()) + list(model.value_head.parameters()))
    return model, ModelInfo("separate-models", "frozen-copy", value_init, path)
