"""The DPO policy and its frozen reference, assembled from the SFT checkpoint.

With LoRA, or another peft method that can be switched off (DoRA, rsLoRA, IA3, LoHa, LoKr, OFT,
BOFT; `peft_methods.METHODS` refuses the others here), ONE copy of the base weights serves both
(DESIGN "Tuning methods"), as in PPO:
  - the SFT checkpoint is a LoRA adapter over base B: B is loaded once and the SFT adapter twice,
    as "default" (the policy, trainable, starting equal to the SFT model) and "ref" (frozen):
    reference `sft-adapter-copy`;
  - the SFT checkpoint is a full model: the policy is a new adapter on it, and the same model with
    adapters disabled is the reference: `adapters-disabled`.
With `full` or `freeze` tuning the reference is a second, frozen copy of the SFT model
(`frozen-copy`, layout `separate-models`). The saved policy is a plain adapter over B (the
reference adapter is deleted first) or a full model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from rlhf_stack import modeling
from rlhf_stack.config import ModelConfig

POLICY, REF = "default", "ref"  # "default": peft saves it as the top-level adapter


@dataclass(frozen=True)
class ModelInfo:
    """How policy and reference were assembled (recorded in stage.json's metrics as `models`)."""

    layout: str  # "lora-shared-base" | "separate-models"
    reference: str  # "sft-adapter-copy" | "adapters-disabled" | "frozen-copy"
    base_model: str  # what the saved policy needs to reload (adapter base or the full model)


class Reference:
    """The frozen reference policy pi_ref: an adapter on the policy's base, that base with its
    adapters disabled, or a model of its own (`ref_model`)."""

    def __init__(self, kind: str, trainable: list[nn.Parameter], ref_model: nn.Module | None = None) -> None:
        self.kind = kind  # ModelInfo.reference
        self.trainable = trainable  # the policy's trainable parameters, restored after each switch
        self.ref_model = ref_model

    @contextmanager
    def active(self, policy: nn.Module):
        """Yield the module that computes pi_ref, given the policy (unwrapped); use it without a graph.

        peft's adapter switches reset the trainable flags, so the policy's are restored on exit:
        run the reference pass BEFORE the policy's own forward.
        """
        if self.ref_model is not None:
            yield self.ref_model
            return
        try:
            if self.kind == "sft-adapter-copy":
                policy.base_model.set_adapter(REF, inference_mode=True)
                yield policy
            else:
                with policy.disable_adapter():
                    yield policy
        finally:
            if self.kind == "sft-adapter-copy":
                policy.base_model.set_adapter(POLICY, inference_mode=True)
            for param in self.trainable:
                param.requires_grad_(True)


def build_policy(policy_cfg: ModelConfig) -> tuple[nn.Module, Reference, ModelInfo]:
    """(policy, its reference, how they were built), on the default device, dropout off."""
    path = modeling.resolve_model_path(policy_cfg.name_or_path)
    modeling.check_trainable_init(path, "policy.name_or_path")
    device = modeling.resolve_device()
    ref_model = None
    adapters = policy_cfg.adapter_method is not None  # lora or another peft method: one shared base
    if adapters and modeling.is_adapter_dir(path):
        from peft import PeftModel

        # SFT = B + adapter: B once; the SFT adapter twice, POLICY trainable and REF frozen.
        base_path = modeling.adapter_base(path)
        base = modeling.load_causal_lm(policy_cfg.model_copy(update={"name_or_path": base_path}), device=device)
        modeling.configure_activations(base, policy_cfg)  # apply_tuning is not called on this path
        model = PeftModel.from_pretrained(base, path, adapter_name=POLICY, is_trainable=True)
        model.load_adapter(path, adapter_name=REF, is_trainable=False)
        info = ModelInfo("lora-shared-base", "sft-adapter-copy", base_path)
    elif adapters:
        # SFT = a full model B: the policy is a new adapter; B itself (adapters disabled) is the reference.
        model = modeling.apply_tuning(modeling.load_causal_lm(policy_cfg, device=device), policy_cfg)
        info = ModelInfo("lora-shared-base", "adapters-disabled", path)
    else:
        model = modeling.apply_tuning(modeling.load_causal_lm(policy_cfg, merge=True, device=device), policy_cfg)
        ref_model = modeling.load_causal_lm(policy_cfg, merge=True, device=device).requires_grad_(False).eval()
        info = ModelInfo("separate-models", "frozen-copy", path)
    trainable = [p for name, p in model.named_parameters() if p.requires_grad and not modeling.in_adapter(name, REF)]
    model.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)
    # Dropout off for good (TRL's DPO does the same, `disable_dropout`): at the start the policy
    # equals the reference, every log-ratio is exactly 0, and the two passes see one function.
    for module in [*model.modules(), *(ref_model.modules() if ref_model is not None else [])]:
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model, Reference(info.reference, trainable, ref_model), info


def policy_only(model: nn.Module, reference: Reference) -> nn.Module:
    """The model to save: the reference adapter deleted, so the checkpoint is a plain adapter over B."""
    if reference.kind == "sft-adapter-copy":
        model.delete_adapter(REF)
    return model


def decoder(model: nn.Module) -> nn.Module:
    """The transformer under a causal LM's head (peft-wrapped or not): the shared-prompt pass needs
    only its key/value cache, so the LM head is not run on prompt tokens."""
    return model.get_decoder()
