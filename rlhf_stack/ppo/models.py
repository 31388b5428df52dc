"""What PPO's actor-critic computes: the policy's, the reference's and the value's passes over a
rollout batch, the PPO-ptx LM loss, and the policy stage 3 saves.

Sequences are `[left-padded prompt | right-padded response]`. Each pass runs one of three ways:
over every block (padded), over the blocks above the frozen trunk from its output (`trunk.py`),
and either of those packed into one row (`flat.py`, `packed_passes`). How the models are put
together (one shared base under LoRA, a value model of its own, separate models under full
tuning): `assembly.py`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from rlhf_stack import modeling
from rlhf_stack.ppo import flat
from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.trunk import Trunk, position_ids_from_mask
from rlhf_stack.ppo.value import VALUE, ValueHead, ValueOrigin

POLICY, REF = "default", "ref"  # "default": peft saves it as a top-level adapter


class ActorCritic(nn.Module):
    """Holds policy, value (and reference) and runs each; `forward` is the training pass.

    `forward` runs policy and value in one call so that DDP (accelerate) sees a single forward and
    one backward per micro-batch. Sequences are `[left-padded prompt | right-padded response]`;
    every method returns tensors for the last `n_response` positions only. Each takes `hidden`,
    the frozen trunk's output for `input_ids[:, :-1]` (`trunk_hidden`), when there is a trunk:
    then only the blocks above it run, over the micro-batch packed into one row (`flat.py`) unless
    `packed_passes` is off.
    """

    def __init__(self, policy: nn.Module, value_head: ValueHead | None, *, value_backbone: nn.Module | None = None,
                 ref_model: nn.Module | None = None, ref_adapter: str | None = None,
                 value_origin: ValueOrigin | None = None) -> None:
        super().__init__()
        self.policy = policy  # causal LM, or PeftModel whose adapter POLICY is the policy
        self.value_head = value_head  # None: no value function (critic-free advantage estimators)
        self.value_backbone = value_backbone  # None: the policy's base with adapter VALUE (or no value)
        self.ref_model = ref_model  # None: the policy's base with `ref_adapter` (or adapters disabled)
        self.ref_adapter = ref_adapter
        self.shared = ref_model is None  # the reference lives on the policy's base: one base for all
        self._active = POLICY  # adapter active on the shared base
        self.policy_params: list[nn.Parameter] = []
        self.value_params: list[nn.Parameter] = []
        self._trainable_names: tuple[list[str], list[str]] = ([], [])  # the two lists, by name (`rebind`)
        self.trunk: Trunk | None = None  # set by use_trunk() once every adapter is in place
        self.packed_passes = True  # the passes above the trunk run packed (PPOConfig.packed_passes)
        # The reward model a value model of its own was copied from (`value.lora_value_model`), kept as a
        # plain object (no nn.Module attribute: its decoder is value_backbone's, already registered)
        # so that the same RM as a reward source can score on it (`shared_reward.reward_on_value_model`).
        self.value_origin = value_origin
        # accelerate's FSDP2 auto-wrap reads this: one shard unit per decoder block, as for the HF model
        base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        self._no_split_modules = list(getattr(base, "_no_split_modules", None) or [])

    def call(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` as part of this model's forward. Under FSDP2 every use of the model
        outside `forward` (sampling, the rollout passes, a hosted reward model) must run through
        here: `setup.build_run` registers it with `register_fsdp_forward_method`, so the root's
        parameters are gathered first; unsharded it is a plain call."""
        return fn(*args, **kwargs)

    def named_policy_params(self) -> dict[str, nn.Parameter]:
        """The policy's trainable parameters by their names in this model, in `policy_params` order."""
        return dict(zip(self._trainable_names[0], self.policy_params, strict=True))

    def rebind(self) -> None:
        """Point the trainable lists at the parameters now in the model: `fully_shard` replaces
        every parameter with a sharded one, and adapter switches must restore those."""
        params = dict(self.named_parameters())
        self.policy_params = [params[n] for n in self._trainable_names[0]]
        self.value_params = [params[n] for n in self._trainable_names[1]]

    def use_trunk(self, probe_ids: torch.Tensor, probe_mask: torch.Tensor) -> int:
        """Split off the blocks below every adapter (shared base only; see `trunk.py`); call after
        the last adapter was added. Returns their number (0: no trunk, full passes)."""
        if self.shared:
            with self.adapter(POLICY):
                self.trunk = Trunk.build(self.policy.get_base_model().base_model, probe_ids, probe_mask)
        return self.trunk.depth if self.trunk else 0

    def trunk_hidden(self, input_ids, attention_mask) -> torch.Tensor | None:
        """`(b, T) -> (b, T - 1, H)`: the trunk's output for every position that predicts a token
        (the last token is dropped, as in every pass below); None without a trunk."""
        if self.trunk is None:
            return None
        return self.trunk.hidden(input_ids[:, :-1], attention_mask[:, :-1])

    def _backbone(self) -> nn.Module:
        """The decoder the value runs on: its own (`value_backbone`), else the shared base."""
        return self.value_backbone if self.value_backbone is not None else self.policy.get_base_model().base_model

    def set_trainable(self, policy_params: list[nn.Parameter], value_params: list[nn.Parameter]) -> None:
        """Fix the trainable set once; adapter switches restore it (peft's set_adapter changes it)."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.policy_params, self.value_params = policy_params, value_params
        names = {id(p): n for n, p in self.named_parameters()}
        self._trainable_names = ([names[id(p)] for p in policy_params], [names[id(p)] for p in value_params])
        self._restore_trainable()

    @contextmanager
    def adapter(self, name: str):
        """Run the shared base with adapter `name` active, then restore the previous one (no-op for
        separate models). Re-entrant: the trainer keeps VALUE active across a value backward pass,
        so that gradient checkpointing recomputes the value forward with the value adapter."""
        previous = self._active
        if not self.shared or name == previous or (name == VALUE and self.value_backbone is not None):
            yield
            return
        self._switch(name)
        try:
            yield
        finally:
            self._switch(previous)

    def add_frozen_adapter(self, name: str, lora_config, state: dict) -> None:
        """One more adapter on the shared base (e.g. the reward model's), loaded from `state`, never trained."""
        from peft import set_peft_model_state_dict

        self.policy.add_adapter(name, lora_config)
        set_peft_model_state_dict(self.policy, state, adapter_name=name)
        for param_name, param in self.policy.named_parameters():
            if modeling.in_adapter(param_name, name):
                param.requires_grad_(False)
        self._switch(self._active)  # add_adapter may touch the active adapter and trainable flags

    def _switch(self, name: str) -> None:
        self.policy.base_model.set_adapter(name, inference_mode=True)
        self._restore_trainable()
        self._active = name

    def _restore_trainable(self) -> None:
        for p in self.policy_params + self.value_params:
            p.requires_grad_(True)

    def packing(self, input_ids, attention_mask, n_response: int) -> flat.Packing | None:
        """The packed layout of a micro-batch's passes (`flat.py`); None: the padded passes run."""
        if not self.packs:
            return None
        return flat.response_packing(input_ids, attention_mask, n_response, self._policy_lm().config)

    @property
    def packs(self) -> bool:
        """Whether the passes run packed: `packed_passes`, and attention that applies the packed mask."""
        return self.packed_passes and flat.supported(self._policy_lm().config)

    def _policy_lm(self) -> nn.Module:
        """The policy's causal LM (under peft, the base model its adapters are injected into)."""
        return self.policy.get_base_model() if hasattr(self.policy, "get_base_model") else self.policy

    def _last_hidden(self, decoder: nn.Module, ids, hidden, packing: flat.Packing) -> torch.Tensor:
        """`(n, H)` at the packed row's used outputs: the blocks above the trunk from its output
        `hidden` over the pass's columns, else every block of `decoder` over their tokens `ids`."""
        if hidden is not None:
            return self.trunk.top_packed(hidden, packing)
        return flat.decoder_pass(decoder, ids, packing)

    def _response_logprobs(self, lm: nn.Module, input_ids, attention_mask, response_ids, temperature: float,
                           hidden=None, packing: flat.Packing | None = None, entropy: bool = False):
        """(log pi of each response token under the causal LM `lm`, its entropy or None); `(b, t)` each.
        Packed, the LM head runs at the kept response tokens only and padding holds 0; else any value."""
        n_response = response_ids.shape[1]
        if packing is None or not flat.supported(lm.config):
            if hidden is None:
                logits = causal_lm_logits(lm, input_ids, attention_mask, n_response)
            else:
                logits = lm.get_output_embeddings()(self.trunk.top(hidden, attention_mask[:, :-1])[:, -n_response:])
            return (PF.logprobs_from_logits(logits, response_ids, temperature),
                    PF.entropy_from_logits(logits, temperature) if entropy else None)
        top = self._last_hidden(lm.base_model, input_ids[:, :-1], hidden, packing)
        logits = lm.get_output_embeddings()(top)[None]  # (1, n, V)
        offset = input_ids.shape[1] - 1 - n_response
        tokens = response_ids[packing.rows, packing.cols - offset][None]
        shape = tuple(response_ids.shape)
        logprobs = packing.scatter(PF.logprobs_from_logits(logits, tokens, temperature)[0], shape, offset)
        return logprobs, packing.scatter(PF.entropy_from_logits(logits, temperature)[0], shape, offset) if entropy else None

    def policy_logprobs(self, input_ids, attention_mask, response_ids, temperature: float, hidden=None,
                        packing: flat.Packing | None = None, entropy: bool = False):
        """(log pi of each response token, its entropy or None); `(b, t)` each (`_response_logprobs`)."""
        return self._response_logprobs(self._policy_lm(), input_ids, attention_mask, response_ids, temperature,
                                       hidden, packing, entropy)

    @torch.no_grad()
    def ref_logprobs(self, input_ids, attention_mask, response_ids, temperature: float, hidden=None,
                     packing: flat.Packing | None = None) -> torch.Tensor:
        """Reference-policy log-probs of the response tokens; `(b, t)` (as `policy_logprobs`)."""
        if self.ref_model is not None:  # a model of its own: no trunk
            return self._response_logprobs(self.ref_model, input_ids, attention_mask, response_ids, temperature,
                                           None, packing)[0]
        context = self.adapter(self.ref_adapter) if self.ref_adapter else self.policy.disable_adapter()
        with context:
            return self.policy_logprobs(input_ids, attention_mask, response_ids, temperature, hidden, packing)[0]

    def values(self, input_ids, attention_mask, n_response: int, hidden=None,
               packing: flat.Packing | None = None) -> torch.Tensor:
        """V(s_t) for each response position t (state = prompt + response[:t]); `(b, n_response)`."""
        decoder = self._backbone()
        if self.value_backbone is not None:
            hidden = None  # a value model of its own shares no trunk with the policy's base
        if packing is not None and not flat.supported(decoder.config):
            packing = None
        attention_mask = attention_mask[:, :-1]  # the last token is no state
        with self.adapter(VALUE):
            if packing is not None:
                values = self.value_head(self._last_hidden(decoder, input_ids[:, :-1], hidden, packing))
                return packing.scatter(values, (len(input_ids), n_response), attention_mask.shape[1] - n_response)
            if hidden is not None:
                top = self.trunk.top(hidden, attention_mask)
            else:
                top = decoder(input_ids=input_ids[:, :-1], attention_mask=attention_mask,
                              position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        return self.value_head(top[:, -n_response:])

    def ptx_loss(self, input_ids, attention_mask, labels, hidden=None) -> torch.Tensor:
        """The policy's LM loss on a PPO-ptx corpus batch (`data.PtxBatches`), from the rows' cached
        trunk output `hidden` when given; packed unless `packs` is False."""
        lm = self._policy_lm()
        packing = flat.corpus_packing(attention_mask, labels, lm.config) if self.packs else None
        if packing is None:
            if hidden is None:
                logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            else:
                logits = lm.get_output_embeddings()(self.trunk.top(hidden, attention_mask))
            return PF.lm_loss(logits, labels)
        logits = lm.get_output_embeddings()(self._last_hidden(lm.base_model, input_ids, hidden, packing))
        return PF.token_lm_loss(logits, labels[packing.rows, packing.cols + 1])

    def forward(self, input_ids, attention_mask, response_ids, ptx=None, part: str = "both", hidden=None,
                temperature: float = 1.0):
        """Training pass: (policy log-probs `(b, t)` | None, values `(b, t)` | None, ptx loss | None).

        ptx: a PPO-ptx corpus batch (input_ids, attention_mask, labels, trunk output or None).
        part: "both", or "policy" / "value" alone (the split the trainer uses for a shared base
        under gradient checkpointing, see `needs_split_backward`).
        """
        n_response = response_ids.shape[1]
        packing = self.packing(input_ids, attention_mask, n_response)
        logprobs = values = ptx_loss = None
        if part in ("both", "policy"):
            logprobs, _ = self.policy_logprobs(input_ids, attention_mask, response_ids, temperature, hidden, packing)
            if ptx is not None:
                ptx_loss = self.ptx_loss(*ptx)
        if part in ("both", "value"):
            values = self.values(input_ids, attention_mask, n_response, hidden, packing)
        return logprobs, values, ptx_loss

    @property
    def has_value(self) -> bool:
        """Whether a value function was built (advantage_estimator gae)."""
        return self.value_head is not None

    @property
    def needs_split_backward(self) -> bool:
        """Whether the trainer runs the value's forward and backward first, then the policy's,
        instead of one pass over both (the gradients are the same):
        - a value model with a decoder of its own (`value_backbone`) shares no activations with
          the policy, so the split costs nothing and frees the value's activations before the
          policy's are built: the update holds one model's activations at a time, not both;
        - a shared base under gradient checkpointing must run each adapter's backward while that
          adapter is active (the recomputed forward reads the active adapter)."""
        if not self.has_value:
            return False
        if self.value_backbone is not None:
            return True
        base = self.policy.get_base_model() if self.shared else self.policy
        checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers 5's name
        if checkpointing is None:
            checkpointing = getattr(base, "is_gradient_checkpointing", False)
        return self.shared and bool(checkpointing)


def causal_lm_logits(model: nn.Module, input_ids, attention_mask, n_response: int) -> torch.Tensor:
    """Logits at the positions that predict the last `n_response` tokens; `(b, T) -> (b, n_response, V)`.

    Position i predicts token i + 1, so the last token is dropped from the input (it predicts
    nothing PPO uses) and logits_to_keep skips the LM head on the prompt positions.
    """
    input_ids, attention_mask = input_ids[:, :-1], attention_mask[:, :-1]
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
                 logits_to_keep=n_response, use_cache=False).logits


class PolicySaver:
    """What finish_stage saves: only the policy (adapter POLICY at top level, or the full model).
    `sharded`: the module finish_stage gathers under FSDP2; its state dict arrives as `state_dict`."""

    def __init__(self, actor_critic: ActorCritic) -> None:
        self.actor_critic = self.sharded = actor_critic

    def save_pretrained(self, out_dir, state_dict: dict | None = None, **kwargs) -> None:
        if state_dict is not None:  # the actor-critic's: keep the policy's, named as in the policy
            kwargs["state_dict"] = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        policy = self.actor_critic.policy
        if self.actor_critic.shared:
            policy.save_pretrained(out_dir, selected_adapters=[POLICY], **kwargs)
        else:
            policy.save_pretrained(out_dir, **kwargs)
