"""The reward model as one more adapter on PPO's shared base: one copy of the base weights in all.

With a LoRA policy, one base already serves policy, reference and value (`assembly.py`). When the
reward model is itself a LoRA adapter (+ score head) over that same base, as the quickstart's
is, loading it on its own would add a second full copy of the base: instead its adapter joins
the others as "reward" and its score head becomes a small Linear. It scores with its own
tokenizer and chat template exactly as `reward.scorer.RewardScorer` does (same pooling at the last
non-pad token, same bias), so the scores are the same up to float rounding (tests check 1e-5).
Any other reward model (full weights, another base, extra trained modules) loads separately,
unless the value model is a LoRA copy of it (`value_init`, `value.ValueOrigin`): then it scores on
that copy with the value's adapters disabled (`reward_on_value_model`), again no second copy.
`read_reward_adapter` reads such an RM from its files; the value function's initialisation from
the RM (`assembly.py`, `value.py`) uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from rlhf_stack import modeling
from rlhf_stack.ppo.prefill import last_hidden, plan_sequences
from rlhf_stack.ppo.trunk_reward import HeldTrunk

REWARD = "reward"


@dataclass(frozen=True)
class RewardAdapter:
    """A reward model saved as a LoRA adapter + score head, read from its files (no model built)."""

    lora_state: dict  # LoRA weights, keyed as peft saves them
    head_weight: torch.Tensor  # (1, H) the score head
    head_bias: torch.Tensor | None  # (1,) when the head has a bias
    lora_config: object  # peft LoraConfig of the same shape, as a causal-LM adapter for the shared base
    only_lora_and_head: bool  # nothing else was trained (no embeddings, norms, ...)


def read_reward_adapter(path: str, base_path: str) -> RewardAdapter | None:
    """The RM at `path` when it is a LoRA adapter (with a score head) over the base at `base_path`.

    Only such an RM can live on PPO's shared base, as the value adapter's initial weights or as
    the reward adapter itself (`shared_reward.py`); None for anything else.
    """
    from peft import LoraConfig
    from safetensors.torch import load_file

    weights = Path(path) / "adapter_model.safetensors"
    if not (modeling.is_adapter_dir(path) and weights.is_file()
            and modeling.resolve_model_path(modeling.adapter_base(path)) == modeling.resolve_model_path(base_path)):
        return None
    state = load_file(str(weights))
    lora_state = {k: v for k, v in state.items() if "lora_" in k}
    head = {k.rsplit(".", 1)[1]: v for k, v in state.items() if ".score." in k and "lora_" not in k}
    if not lora_state or "weight" not in head:
        return None
    rm_config = LoraConfig.from_pretrained(path)
    config = LoraConfig(r=rm_config.r, lora_alpha=rm_config.lora_alpha, lora_dropout=0.0,
                        target_modules=rm_config.target_modules, task_type="CAUSAL_LM",
                        layers_to_transform=rm_config.layers_to_transform, use_rslora=rm_config.use_rslora,
                        use_dora=rm_config.use_dora)
    bias = head["bias"][:1] if "bias" in head else None
    return RewardAdapter(lora_state, head["weight"][:1], bias, config,
                         only_lora_and_head=len(lora_state) + len(head) == len(state))


class AdapterSequenceClassifier:
    """Called like a transformers sequence classifier with one label, runs on the shared base.

    (input_ids, attention_mask) -> `.logits` `(n, 1)`: the score head on the hidden state of the
    rightmost token that is not `pad_token_id` (transformers' pooling), computed with the
    "reward" adapter active. Not an nn.Module: it must not own (move, re-mode) the actor-critic.
    """

    def __init__(self, actor_critic, head: nn.Linear, pad_token_id: int, unpadded: bool = True) -> None:
        self.actor_critic = actor_critic
        self.head = head
        self.pad_token_id = pad_token_id
        self.unpadded = unpadded  # right-padded batches run unpadded (`prefill.py`)
        self.config = SimpleNamespace(num_labels=1, pad_token_id=pad_token_id)
        # outputs of the frozen trunk over the RM's tokens of this step's samples (`trunk_reward.py`),
        # kept by the trainer after sampling when the actor-critic has a trunk; RewardScorer reads it
        self.held = HeldTrunk(self.top_scores, pad_token_id)

    def eval(self) -> AdapterSequenceClassifier:
        return self  # scoring runs under no_grad; the trainer owns the actor-critic's mode

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, **_unused) -> SimpleNamespace:
        backbone = self.actor_critic.policy.get_base_model().base_model
        columns = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (columns * (input_ids != self.pad_token_id).int()).argmax(-1)  # (n,)
        right_padded = bool((attention_mask == (columns < attention_mask.sum(1, keepdim=True))).all())
        # Right-padded rows: only the tokens up to the pooled one matter (causal attention), so
        # they run unpadded, their shared start once (`prefill.py`), positions as in the padded pass.
        plan = (plan_sequences(backbone, [row[:n + 1].tolist() for row, n in zip(input_ids, last.tolist(), strict=True)],
                               input_ids.shape[1], 1, input_ids.device) if self.unpadded and right_padded else None)
        with self.actor_critic.adapter(REWARD):
            if plan is not None:
                pooled = last_hidden(backbone, plan, input_ids.device)
            else:
                hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
                pooled = hidden[torch.arange(len(last), device=last.device), last]
        return SimpleNamespace(logits=self.head(pooled.to(self.head.weight.dtype)))

    @torch.no_grad()
    def top_scores(self, hidden, mask, last, depth: int):
        """`(b,)` scores from the frozen trunk's output `(b, T, H)` (right-padded, `mask`): the blocks
        above it with the "reward" adapter active, the final norm and the head, read at `last`."""
        trunk = self.actor_critic.trunk
        if trunk is None or trunk.depth != depth:
            raise RuntimeError(f"held trunk outputs of {depth} blocks, but the actor-critic's trunk has "
                               f"{trunk.depth if trunk else 0}")
        device = self.head.weight.device
        with self.actor_critic.adapter(REWARD):
            out = trunk.top(hidden.to(device, self.head.weight.dtype), mask.to(device))
        return self.head(out[torch.arange(len(last), device=device), last.to(device)])[:, 0]


def host_reward_model(actor_critic, checkpoint: str, base_path: str,
                      unpadded: bool = True) -> AdapterSequenceClassifier | None:
    """Load the RM `checkpoint` as the adapter "reward" on the actor-critic's shared base (loaded
    from `base_path`) when it is a LoRA adapter over that base with nothing trained but LoRA
    weights and the score head; else None (the caller loads the RM on its own). unpadded: score
    right-padded batches without their padding (PPOConfig.unpadded_prompt_passes)."""
    if (not actor_critic.shared or REWARD in actor_critic.policy.peft_config
            or str(actor_critic.policy.peft_type.value) != "LORA"):  # peft holds one kind of adapter per model
        return None
    path = modeling.resolve_model_path(checkpoint)
    rm = read_reward_adapter(path, base_path)
    if rm is None or not rm.only_lora_and_head:  # other trained modules: not reproducible on the shared base
        return None
    actor_critic.add_frozen_adapter(REWARD, rm.lora_config, rm.lora_state)
    head = nn.Linear(rm.head_weight.shape[1], 1, bias=rm.head_bias is not None)
    head.weight.data.copy_(rm.head_weight)
    if rm.head_bias is not None:
        head.bias.data.copy_(rm.head_bias)
    head.requires_grad_(False)
    some = next(actor_critic.policy.parameters())
    model = AdapterSequenceClassifier(actor_critic, head.to(device=some.device, dtype=some.dtype),
                                      modeling.load_tokenizer(path).pad_token_id, unpadded)
    print(f"[ppo] reward model {checkpoint}: hosted as adapter '{REWARD}' on the policy's base "
          f"(one base copy for policy, reference, value and reward)")
    return model


class ValueOriginClassifier:
    """The reward model a LoRA value model was copied from, run on that copy with the value's
    adapters disabled: the RM's own decoder weights and score head, so the same function as the
    RM loaded on its own. Called like the transformers sequence classifier it wraps (it is one),
    key/value cache included, so `RewardScorer` still runs each prompt once for all its responses.
    Not an nn.Module: it must not own (move, re-mode) the actor-critic's value model."""

    shares_prompts = True  # a real classifier underneath: the prompt-sharing cache path works

    def __init__(self, classifier: nn.Module, value_backbone) -> None:
        self.classifier = classifier
        self.value_backbone = value_backbone  # the PeftModel whose adapters are switched off
        self.config = classifier.config

    def eval(self) -> ValueOriginClassifier:
        return self  # scoring runs under no_grad; the trainer owns the value model's mode

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        with self.value_backbone.disable_adapter():
            return self.classifier(*args, **kwargs)


def reward_on_value_model(actor_critic, checkpoint: str, device) -> ValueOriginClassifier | None:
    """The RM `checkpoint` as the classifier the value model was copied from, when it is that RM and
    its weights have the dtype `RewardScorer` would load it in; else None."""
    origin = actor_critic.value_origin
    if origin is None or modeling.resolve_model_path(checkpoint) != modeling.resolve_model_path(origin.path):
        return None
    dtype = next(origin.classifier.parameters()).dtype
    if dtype != modeling.resolve_dtype("auto", torch.device(device) if device is not None else None):
        return None  # the policy's dtype is not the RM's own: scores would differ, load it on its own
    print(f"[ppo] reward model {checkpoint}: scored on the value model copied from it, with the value's "
          "adapters disabled (no second copy of its weights)")
    return ValueOriginClassifier(origin.classifier, actor_critic.value_backbone)
