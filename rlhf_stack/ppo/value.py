"""The value function's parts: its head, where it starts (`value_init`) and, when it has a decoder
of its own, that model. `assembly.build_actor_critic` assembles them with the policy.

The value starts as the reward model when `value_init` names one whose tokenizer is the policy's
(InstructGPT: "we initialize the value function from the RM"), else from the policy's base with
a zero head. Under a LoRA policy (one shared base) the value is:
  - the adapter VALUE on the shared base, loaded with the RM's LoRA weights and head, when the RM
    is a LoRA adapter over that same base (`shared_value`); else a fresh adapter;
  - a model of its own otherwise (`lora_value_model`): a copy of the RM (full weights, or another
    base) with LoRA layers of the policy's shape, of which only the adapters and the head train.
    The RM it was copied from stays reachable (`ValueOrigin`): with the value's adapters
    disabled it is that RM, which then also scores as a reward source (`shared_reward.py`).
Under full tuning the value model is a full copy of the RM (or of the policy's base), trained whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlhf_stack import modeling
from rlhf_stack.config import ModelConfig
from rlhf_stack.ppo.shared_reward import RewardAdapter, read_reward_adapter

VALUE = "value"  # the value adapter's name on the shared base


class ValueHead(nn.Module):
    """Scalar value V(s_t) from the last hidden state; `(b, t, H) -> (b, t)`."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        # Zero init: V = 0 everywhere at the start, so early advantages are the rewards themselves.
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden).squeeze(-1)


def head_from_classifier(rm: nn.Module) -> ValueHead:
    """A value head equal to the sequence classifier `rm`'s score head (its first output)."""
    head = ValueHead(rm.config.hidden_size)
    head.summary.weight.data.copy_(rm.score.weight.data[:1])
    if getattr(rm.score, "bias", None) is not None:
        head.summary.bias.data.copy_(rm.score.bias.data[:1])
    return head


@dataclass(frozen=True)
class ValueOrigin:
    """The reward model a LoRA value model was copied from: its checkpoint path and the whole sequence
    classifier (its decoder now carries the value's LoRA layers; its score head is the RM's own,
    frozen). With the value's adapters disabled it is that RM exactly."""

    path: str
    classifier: nn.Module


def usable_value_init(value_init: str | None, tokenizer) -> str | None:
    """The RM path when its tokenizer equals the policy's (values are per policy token), else None."""
    if not value_init:
        return None
    path = modeling.resolve_model_path(value_init)
    if modeling.load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        print(f"[ppo] value_init {value_init}: its tokenizer differs from the policy's; "
              "the value function starts from the policy base instead")
        return None
    return path


def value_init_adapter(value_source: str | None, base_path: str, peft_model) -> RewardAdapter | None:
    """The RM to start the value adapter from, when it is a LoRA adapter over the same base and the
    policy's adapters are LoRA too (one PeftModel holds one kind); any other RM becomes a value
    model of its own (`lora_value_model`)."""
    if value_source is None or str(peft_model.peft_type.value) != "LORA":
        return None
    return read_reward_adapter(value_source, base_path)


def shared_value(model_cfg: ModelConfig, peft_model, value_source: str | None, base_path: str) -> tuple[ValueHead, str]:
    """Add the adapter VALUE to the shared base, from the RM's LoRA weights when it is an adapter
    over the same base; return (value head, value_init)."""
    rm = value_init_adapter(value_source, base_path, peft_model)
    peft_model.add_adapter(VALUE, rm.lora_config if rm else _adapter_config(model_cfg, peft_model.get_base_model()))
    head = ValueHead(peft_model.get_base_model().config.hidden_size)
    if rm is None:
        return head, "policy-base"
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(peft_model, rm.lora_state, adapter_name=VALUE)
    head.summary.weight.data.copy_(rm.head_weight)
    return head, "reward-model"


def lora_value_model(model_cfg: ModelConfig, value_source: str, device) -> tuple[nn.Module, ValueHead, ValueOrigin]:
    """(decoder of the RM with fresh LoRA adapters of the policy's settings `model_cfg`, value head =
    a copy of the RM's score head, the RM itself: `ValueOrigin`)."""
    from peft import get_peft_model

    rm_cfg = model_cfg.model_copy(update={"name_or_path": value_source})
    rm = modeling.load_sequence_classifier(rm_cfg, merge=True, device=device)
    rm.score.requires_grad_(False)  # the RM's own head: it scores rewards, the value head is a copy
    head = head_from_classifier(rm)
    modeling.configure_activations(rm, model_cfg)
    backbone = get_peft_model(rm.base_model, _adapter_config(model_cfg, rm.base_model, task_type=None))
    print(f"[ppo] value_init {value_source}: not a LoRA adapter over the policy's base; the value model is a "
          "copy of it with LoRA (adapters and head train): one more base copy")
    return backbone, head, ValueOrigin(value_source, rm)


def _adapter_config(model_cfg: ModelConfig, base_model: nn.Module, task_type: str | None = "CAUSAL_LM"):
    """The peft config of a fresh value adapter: the policy's method and settings."""
    from rlhf_stack.peft_methods import adapter_config

    return adapter_config(model_cfg.peft_settings, base_model, task_type)
