"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), method `bottleneck`.

A bottleneck adapter is a small residual MLP, `h -> h + W_up act(W_down h)`, inserted after a
sublayer's output projection, before the residual addition. Houlsby places one after the
attention output (`o_proj`) and one after the MLP output (`down_proj`) of every block; Pfeiffer
only after the MLP. `W_up` starts at zero, so the adapted model starts as the base model. Only
the adapters (and a reward model's score head) train.

Why our own: the installed peft (0.21) has no Houlsby/Pfeiffer adapter (its methods change or
rotate weights, or add virtual tokens), and the `adapters` library, which has them, requires
transformers 4.57 (this project is on transformers 5). So they are ~150 lines here, saved as
plain files beside the tokenizer:

    bottleneck_config.json          base model, placement, size, activation, the adapted modules
    bottleneck_adapter.safetensors  the adapter weights (+ the score head of a reward model)

`load_adapters(model, path)` puts them back on a freshly loaded base (`modeling` opens such a
checkpoint on its own). They are not mergeable (non-linear) and not peft adapters, so the stages
that hold policy and reference as peft adapters on one base (PPO, DPO) refuse them
(`peft_methods.METHODS`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
PLACEMENTS = {"houlsby": ("o_proj", "down_proj"), "pfeiffer": ("down_proj",)}


@dataclass
class BottleneckConfig:
    """The options of method `bottleneck` (`peft.options`)."""

    placement: str = "houlsby"  # houlsby: after attention and MLP outputs; pfeiffer: after the MLP only
    reduction_factor: int = 16  # bottleneck width = hidden size / reduction_factor (Pfeiffer's default 16)
    activation: str = "relu"  # a transformers activation name (ACT2FN)
    dropout: float = 0.0  # on the bottleneck activations

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)} (got {self.placement!r})")
        if not isinstance(self.reduction_factor, int) or self.reduction_factor < 1:
            raise ValueError(f"reduction_factor must be an integer >= 1 (got {self.reduction_factor!r})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout!r})")
        from transformers.activations import ACT2FN

        if self.activation not in ACT2FN:
            raise ValueError(f"activation must be a transformers activation (e.g. relu, gelu, silu), "
                             f"got {self.activation!r}")


class BottleneckAdapter(nn.Module):
    """`(..., H) -> (..., H)`: h + up(act(down(h))), the identity at initialisation."""

    def __init__(self, hidden_size: int, size: int, activation: str, dropout: float) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        self.adapter_down = nn.Linear(hidden_size, size)
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        self.adapter_up = nn.Linear(size, hidden_size)
        nn.init.zeros_(self.adapter_up.weight)  # Houlsby et al. 2019, §2.1: near-identity start
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.adapter_up(self.dropout(self.act(self.adapter_down(hidden))))


class AdaptedOutput(nn.Module):
    """A sublayer's output projection followed by its bottleneck adapter."""

    def __init__(self, base_layer: nn.Linear, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_layer(x))


def is_bottleneck_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def has_adapters(model) -> bool:
    """Whether `model` carries bottleneck adapters (inserted by add_adapters / load_adapters)."""
    return getattr(model, "rlhf_bottleneck", None) is not None


def read_config(path: str | Path) -> dict:
    return json.loads((Path(path) / CONFIG_FILE).read_text())


def add_adapters(model: nn.Module, settings, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Insert fresh adapters per `settings` (a PeftSettings of method bottleneck); freeze the rest."""
    from rlhf_stack.architecture import transformer_blocks
    from rlhf_stack.errors import ConfigError

    config = BottleneckConfig(**settings.options)
    names = settings.target_modules or list(PLACEMENTS[config.placement])
    names = [names] if isinstance(names, str) else names
    blocks = transformer_blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is blocks)
    first = max(0, len(blocks) - settings.last_n_layers) if settings.last_n_layers else 0
    modules = [f"{prefix}.{i}.{name}" for i in range(first, len(blocks))
               for name, module in blocks[i].named_modules() if name.rsplit(".", 1)[-1] in names
               and isinstance(module, nn.Linear)]
    if not modules:
        raise ConfigError(f"peft.target_modules: no linear layer named {', '.join(names)} in the blocks of "
                          f"{type(model).__name__}; name its attention / MLP output projections")
    hidden = model.config.hidden_size
    record = {"base_model_name_or_path": getattr(model, "name_or_path", None), "task_type": task_type,
              **asdict(config), "size": max(1, hidden // config.reduction_factor), "modules": modules}
    model.requires_grad_(False)
    _insert(model, record)
    if task_type == "SEQ_CLS":
        model.score.requires_grad_(True)
    return model


def _insert(model: nn.Module, record: dict) -> None:
    param = next(model.parameters())
    for name in record["modules"]:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, leaf)
        adapter = BottleneckAdapter(base.out_features, record["size"], record["activation"], record["dropout"])
        setattr(parent, leaf, AdaptedOutput(base, adapter.to(device=param.device, dtype=param.dtype)))
    model.rlhf_bottleneck = record


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint keeps: every adapter's, and a reward model's score head."""
    head = model.rlhf_bottleneck["task_type"] == "SEQ_CLS"
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if ".adapter." in name or (head and name.startswith("score."))}


def save_adapters(model: nn.Module, out_dir: str | Path) -> None:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    save_file(adapter_state(model), str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(model.rlhf_bottleneck, indent=2))


def load_adapters(model: nn.Module, path: str | Path, trainable: bool = False) -> nn.Module:
    """Put the adapters saved in `path` on `model` (its base, freshly loaded); frozen unless `trainable`."""
    from safetensors.torch import load_file

    record = read_config(path)
    _insert(model, record)
    state = load_file(str(Path(path) / WEIGHTS_FILE))
    missing = set(adapter_state(model)) - set(state)
    if missing:
        raise ValueError(f"{path}: {WEIGHTS_FILE} lacks {sorted(missing)[:3]}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    model.requires_grad_(False)
    if trainable:
        for name, param in model.named_parameters():
            if name in state:
                param.requires_grad_(True)
    return model
