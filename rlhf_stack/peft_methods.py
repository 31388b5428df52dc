"""Parameter-efficient methods by name (`tuning: peft`): peft's own config classes, plus bottleneck adapters.

`METHODS` is the one table of what each method is: the peft config class it is built from, the
settings that make it that method (DoRA = LoRA with `use_dora`), our defaults for its options,
whether it merges into the base, and why a stage refuses it. Everything else reads the table:

- `check_settings`: the `peft:` block's own rules (unknown option names, options peft rejects);
- `check_stage`: the per-stage refusals, as config errors naming the key path and the reason;
- `apply_adapters`: wrap a model with the method (`modeling.apply_tuning` calls it);
- `adapter_config`: a fresh peft config of the method (PPO's value adapter uses it too);
- `save_converted`: PiSSA / OLoRA adapters saved as the plain LoRA they amount to on the ORIGINAL
  base (they train on a base with their initial directions subtracted; Meng et al. 2024, §3).

Option names are checked against the installed peft's config dataclass, so what peft accepts is
what a recipe accepts. Importing this module is cheap: peft is imported where it is used.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from rlhf_stack.errors import KeyPathError

LORA_DEFAULTS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
VIRTUAL_TOKENS = ("prompt_tuning", "prefix_tuning")
# peft fields a recipe may not set: rlhf_stack derives them (targets, layers, task, saved heads).
DERIVED = {"target_modules", "layers_to_transform", "layers_pattern", "task_type", "modules_to_save",
           "peft_type", "base_model_name_or_path", "inference_mode", "revision", "auto_mapping", "peft_version"}

NOT_ON_SHARED_BASE = {
    "pissa": "PiSSA / OLoRA subtract the adapter's initial directions from the base weights, so the base "
             "with adapters disabled is no longer the reference policy; train SFT with it (its checkpoint is "
             "saved as plain LoRA) and start this stage from that checkpoint with method lora",
    "bottleneck": "bottleneck adapters are rlhf_stack's own modules, not peft adapters, and this stage holds "
                  "policy and reference (and PPO's value) as peft adapters switched on one base",
    "prompt_tuning": "virtual tokens are inputs that only PeftModel.forward prepends, while this stage runs the "
                     "decoder directly for the reference, the value and the prompt's shared key/value cache",
}
NOT_FOR_REWARD = (
    "the reward model's score is read at each sequence's last non-pad token, which transformers finds "
    "from input_ids, and virtual-token methods feed inputs_embeds; the prompt's key/value cache is also "
    "shared across a ranking's completions")


@dataclass(frozen=True)
class Method:
    """One row of `METHODS`."""

    peft_class: str  # peft config class ("" for bottleneck, rlhf_stack's own)
    fixed: dict[str, Any] = field(default_factory=dict)  # what makes it this method (use_dora=True, ...)
    defaults: dict[str, Any] = field(default_factory=dict)  # our defaults; the recipe's options override
    targets: str | None = "all-linear"  # default target modules; None: peft's default for the architecture
    merge: str = ""  # "" when it merges into the base weights; else why it cannot
    refused: dict[str, str] = field(default_factory=dict)  # stage -> why that stage refuses it


_SHARED = ("ppo", "dpo")
METHODS: dict[str, Method] = {
    "lora": Method("LoraConfig", defaults=LORA_DEFAULTS),
    "dora": Method("LoraConfig", {"use_dora": True}, LORA_DEFAULTS),
    "rslora": Method("LoraConfig", {"use_rslora": True}, LORA_DEFAULTS),
    "pissa": Method("LoraConfig", {"init_lora_weights": "pissa"}, {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0},
                    refused=dict.fromkeys(_SHARED, NOT_ON_SHARED_BASE["pissa"])),
    "olora": Method("LoraConfig", {"init_lora_weights": "olora"}, {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0},
                    refused=dict.fromkeys(_SHARED, NOT_ON_SHARED_BASE["pissa"])),
    "ia3": Method("IA3Config", targets=None),
    "loha": Method("LoHaConfig", defaults={"r": 8, "alpha": 8}),
    "lokr": Method("LoKrConfig", defaults={"r": 8, "alpha": 8}),
    "oft": Method("OFTConfig"),
    "boft": Method("BOFTConfig"),
    "prompt_tuning": Method("PromptTuningConfig", defaults={"num_virtual_tokens": 16}, targets=None,
                            merge="its virtual tokens are inputs, not weights",
                            refused={"reward": NOT_FOR_REWARD, **dict.fromkeys(_SHARED, NOT_ON_SHARED_BASE["prompt_tuning"])}),
    "prefix_tuning": Method("PrefixTuningConfig", defaults={"num_virtual_tokens": 16}, targets=None,
                            merge="its virtual tokens are key/value inputs, not weights",
                            refused={"reward": NOT_FOR_REWARD, **dict.fromkeys(_SHARED, NOT_ON_SHARED_BASE["prompt_tuning"])}),
    "bottleneck": Method("", targets=None, merge="a bottleneck adapter is a non-linear residual MLP, not a weight delta",
                         refused=dict.fromkeys(_SHARED, NOT_ON_SHARED_BASE["bottleneck"])),
}
PEFT_TYPES = {"LoraConfig": "LORA", "IA3Config": "IA3", "LoHaConfig": "LOHA", "LoKrConfig": "LOKR",
              "OFTConfig": "OFT", "BOFTConfig": "BOFT", "PromptTuningConfig": "PROMPT_TUNING",
              "PrefixTuningConfig": "PREFIX_TUNING"}


# ---- validation ---------------------------------------------------------------------------------


def check_settings(settings) -> None:
    """The `peft:` block's own rules (a PeftSettings); KeyPathError names the key below `peft`."""
    spec = METHODS[settings.method]
    for key in ("target_modules", "last_n_layers") if settings.method in VIRTUAL_TOKENS else ():
        if getattr(settings, key) is not None:
            raise KeyPathError(key, f"{settings.method} adds virtual tokens, not layers: remove {key}")
    if not settings.options:
        return
    allowed = option_names(settings.method)
    for name in settings.options:
        if name in spec.fixed:
            raise KeyPathError(f"options.{name}", f"is what method {settings.method} sets "
                                                  f"({name}={spec.fixed[name]!r}); remove it")
        if name not in allowed:
            raise KeyPathError(f"options.{name}", f"unknown option for method {settings.method} "
                                                  f"(allowed: {', '.join(sorted(allowed))})")
        if name == "init_lora_weights" and settings.options[name] not in (True, False, "gaussian"):
            raise KeyPathError(f"options.{name}", "initialisations that rewrite the base weights are methods "
                                                  "of their own here (pissa, olora): they are saved converted")
    for name, value in settings.options.items():
        problem = _type_problem(settings.method, name, value)
        if problem:
            raise KeyPathError(f"options.{name}", f"{problem} (got {value!r})")
    try:  # let the config class check the values, as it will when the model is built
        _config_kwargs_check(settings)
    except (TypeError, ValueError) as exc:
        raise KeyPathError("options", f"{settings.method}: {exc}") from None


def option_names(method: str) -> set[str]:
    """The option names a method takes: its config class's fields, less what rlhf_stack derives."""
    return {f.name for f in dataclasses.fields(_config_class(method)) if f.init} - DERIVED


def _config_class(method: str) -> type:
    spec = METHODS[method]
    if not spec.peft_class:
        from rlhf_stack.bottleneck import BottleneckConfig

        return BottleneckConfig
    import peft

    return getattr(peft, spec.peft_class)


def _type_problem(method: str, name: str, value: Any) -> str | None:
    """pydantic's verdict on `value` against the option's annotation in the config class (peft's
    dataclasses do not check types themselves); None when it fits or the type cannot be checked."""
    import typing

    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = TypeAdapter(typing.get_type_hints(_config_class(method))[name])
    except Exception:  # noqa: BLE001 - an annotation pydantic cannot build a validator for: not checked
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return exc.errors()[0]["msg"]
    return None


def _config_kwargs_check(settings) -> None:
    spec = METHODS[settings.method]
    fixed = {**spec.fixed, **({} if settings.method in VIRTUAL_TOKENS or not spec.peft_class
                              else {"target_modules": ["q_proj"]})}
    _config_class(settings.method)(**{**spec.defaults, **settings.options, **fixed})


def check_stage(model_cfg, stage: str) -> None:
    """Refuse a method the stage cannot run (KeyPathError at `peft.method`, with the reason)."""
    method = model_cfg.adapter_method
    why = METHODS[method].refused.get(stage) if method else None
    if why:
        raise KeyPathError("peft.method", f"{method} is not supported by the {stage} stage: {why}")
    if method == "prefix_tuning" and model_cfg.gradient_checkpointing:
        raise KeyPathError("gradient_checkpointing", "peft's prefix tuning does not work with gradient checkpointing")


def check_same_kind(model_cfg, loaded_type: str, path: str) -> None:
    """ConfigError unless the policy's method is of peft type `loaded_type` (the SFT adapter's): PPO
    trains that adapter further and adds a value adapter of the policy's method beside it on the
    same base, and peft holds one kind of adapter per model."""
    from rlhf_stack.errors import ConfigError

    method = model_cfg.peft_settings.method
    if PEFT_TYPES.get(METHODS[method].peft_class) != loaded_type:
        same = [m for m, spec in METHODS.items() if PEFT_TYPES.get(spec.peft_class) == loaded_type]
        raise ConfigError(f"policy.peft.method: {path} is a {loaded_type} adapter, trained further here as the "
                          f"policy; the value adapter joins it on the same base and must be of the same kind, not "
                          f"{method}: set policy.tuning: peft with policy.peft.method one of {', '.join(same)}")


# ---- building -----------------------------------------------------------------------------------


def adapter_config(settings, model, task_type: str | None = "CAUSAL_LM"):
    """A fresh peft config of `settings.method` for `model` (which may already hold adapters)."""
    import peft

    spec = METHODS[settings.method]
    kwargs = {**spec.defaults, **settings.options, **spec.fixed, "task_type": task_type}
    if settings.method not in VIRTUAL_TOKENS:
        kwargs["target_modules"] = target_modules(model, settings.target_modules or spec.targets,
                                                  settings.last_n_layers, settings.method)
        if task_type == "SEQ_CLS":
            kwargs["modules_to_save"] = ["score"]
    return getattr(peft, spec.peft_class)(**kwargs)


def target_modules(model, targets: str | list[str] | None, last_n_layers: int | None, method: str):
    """peft's `target_modules`: the names as given (None: peft's default, `all-linear`: every linear
    layer of the blocks); with last_n_layers, a regex over the last N blocks' modules of those names."""
    from rlhf_stack.architecture import linear_module_names, transformer_blocks

    if targets == "all-linear":
        targets = linear_module_names(model)
    if not last_n_layers:
        return targets
    if targets is None:
        targets = _peft_default_targets(model, method)
    names = [targets] if isinstance(targets, str) else list(targets)
    blocks = transformer_blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is blocks)
    keep = range(max(0, len(blocks) - last_n_layers), len(blocks))
    return (rf"{re.escape(prefix)}\.({'|'.join(map(str, keep))})\.(.*\.)?"
            rf"({'|'.join(re.escape(n) for n in names)})")


def _peft_default_targets(model, method: str) -> list[str]:
    from peft.utils import constants

    table = getattr(constants, f"TRANSFORMERS_MODELS_TO_{PEFT_TYPES[METHODS[method].peft_class]}_TARGET_MODULES_MAPPING")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in table:
        from rlhf_stack.errors import ConfigError

        raise ConfigError(f"peft.target_modules: peft has no default {method} targets for model type {model_type}; "
                          "name them")
    return list(table[model_type])


def apply_adapters(model, settings, task_type: str = "CAUSAL_LM"):
    """`model` wrapped with the method (a PeftModel; for bottleneck, the model with adapters inserted)."""
    if settings.method == "bottleneck":
        from rlhf_stack import bottleneck

        return bottleneck.add_adapters(model, settings, task_type)
    from peft import get_peft_model, get_peft_model_state_dict

    peft_model = get_peft_model(model, adapter_config(settings, model, task_type))
    if settings.method in ("pissa", "olora"):
        # The initial A0, B0 (already subtracted from the base): saving needs them, see save_converted.
        initial = get_peft_model_state_dict(peft_model)
        peft_model.rlhf_initial_lora = {k: v.detach().clone() for k, v in initial.items() if ".lora_" in k}
    return peft_model


def save_converted(model, out_dir) -> None:
    """Rewrite a saved PiSSA / OLoRA adapter as plain LoRA over the original base, in place.

    The base it trained on is W_res = W - s B0 A0; after training the model is W_res + s B A, so
    the same model on W is W + s (B A - B0 A0) = W + s [B | -B0] [A ; A0]: a LoRA of rank 2r with
    the same scale (peft's `subtract_mutated_init`, which drops a reward model's score head; this
    keeps every other saved tensor as it is).
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    initial = getattr(model, "rlhf_initial_lora", None)
    if not initial:
        return
    weights = Path(out_dir) / "adapter_model.safetensors"
    state = load_file(str(weights))
    for key in list(state):
        if ".lora_A." in key:
            state[key] = torch_cat([state[key], initial[key]], 0)
        elif ".lora_B." in key:
            state[key] = torch_cat([state[key], -initial[key]], 1)
    save_file(state, str(weights), metadata={"format": "pt"})
    config_file = Path(out_dir) / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["r"] *= 2
    config["lora_alpha"] *= 2 ** 0.5 if config.get("use_rslora") else 2  # keeps alpha / r (or / sqrt r)
    config["init_lora_weights"] = True
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def torch_cat(tensors, dim: int):
    import torch

    return torch.cat([t.to(tensors[0].device) for t in tensors], dim).contiguous()


def merge_problem(checkpoint) -> str | None:
    """Why the adapter in `checkpoint` cannot be merged into its base (None: it can, or it is full)."""
    import json
    from pathlib import Path

    from rlhf_stack import bottleneck

    path = Path(checkpoint)
    if bottleneck.is_bottleneck_dir(path):
        return f"bottleneck: {METHODS['bottleneck'].merge}"
    if (path / "adapter_config.json").is_file():
        peft_type = json.loads((path / "adapter_config.json").read_text()).get("peft_type")
        for name, spec in METHODS.items():
            if spec.merge and PEFT_TYPES.get(spec.peft_class) == peft_type:
                return f"{name}: {spec.merge}"
    return None


def unmergeable_methods() -> list[str]:
    return [name for name, spec in METHODS.items() if spec.merge]
