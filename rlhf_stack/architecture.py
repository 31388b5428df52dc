"""Where things are inside a Hugging Face model: its decoder blocks, their linear layers, adapter parameters.

Torch only (peft where it is asked about), so `modeling`, `peft_methods` and `bottleneck` can all
use it without importing each other.
"""

from __future__ import annotations

import torch


def in_adapter(param_name: str, adapter: str) -> bool:
    """Whether a peft-wrapped model's parameter belongs to `adapter`: the adapter name is a component
    of its path, in the middle (`lora_A.value.weight`) or last (`ia3_l.value`, `hada_w1_a.value`)."""
    return f".{adapter}." in f"{param_name}."


def linear_module_names(model) -> list[str]:
    """Leaf names of the linear layers inside the transformer blocks (q_proj, up_proj, ...)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names, inside = set(), ()
    for name, module in transformer_blocks(model).named_modules():
        if inside and name.startswith(inside):
            continue  # the layers inside an adapter-wrapped module (base_layer, lora_A, ...)
        if isinstance(module, BaseTunerLayer):
            inside = tuple(p + "." for p in (*inside, name))
        if isinstance(module, torch.nn.Linear | BaseTunerLayer):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The list of decoder blocks of a HF model (Llama/Qwen/Mistral/GPT-2 layouts), under a peft
    wrapper too."""
    if hasattr(model, "get_base_model"):  # a PeftModel: its `base_model` is the tuner, not the backbone
        model = model.get_base_model()
    backbone = getattr(model, "base_model", model)
    for attr in ("layers", "h", "blocks"):
        for owner in (backbone, getattr(backbone, "model", None), getattr(backbone, "transformer", None)):
            if owner is not None and isinstance(getattr(owner, attr, None), torch.nn.ModuleList):
                return getattr(owner, attr)
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")
