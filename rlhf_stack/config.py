"""Typed configs shared by every stage; YAML loading with `key.path=value` overrides.

Configs are pydantic models (typed dataclasses with validation). Each field is documented by the
docstring under it; that text is also what `rlhf-stack config show` prints. Unknown keys, wrong
types and missing required fields raise `ConfigError` naming the key path (and the YAML line when
the value came from a file) plus the keys allowed there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlhf_stack.errors import ConfigError, KeyPathError

C = TypeVar("C", bound=BaseModel)

OnNonFinite = Literal["stop", "skip_step"]
"""What a NaN or inf in a step's loss, gradients (or, in PPO, scores, rewards, advantages) does;
see `rlhf_stack.nonfinite`."""


class DataFile:
    """Marks a config field whose value names a data file (or a `datasets` name): see `DataPath`."""

    def __repr__(self) -> str:
        return "DataFile()"


DataPath = Annotated[str, DataFile()]
"""The type of every config field that names data a stage reads. The runner fingerprints each
such file, so editing it re-runs the stage (`pipeline.staleness.data_files`): type a new data
field `DataPath` (or `DataPath | None`) and it takes part in the staleness check."""


def is_data_path(info) -> bool:
    """Whether a pydantic field (its FieldInfo) is typed `DataPath`, optional or not."""
    if any(isinstance(m, DataFile) for m in info.metadata):
        return True
    return any(get_origin(arg) is Annotated and any(isinstance(m, DataFile) for m in arg.__metadata__)
               for arg in get_args(info.annotation))


class Config(BaseModel):
    """Base for every config: unknown keys are errors, field docstrings are the docs."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, protected_namespaces=()
    )


class LoraSettings(Config):
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator (effective scale alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: a list of names, or `all-linear` (every linear layer but the head)."""
    last_n_layers: int | None = None
    """Put adapters only on the last N transformer blocks (None: all). On CPU this also cuts the
    backward pass short, since nothing below the lowest adapter needs gradients."""


class PeftSettings(Config):
    """A peft method by name, with peft's own settings for it (`tuning: peft`)."""

    method: Literal["lora", "dora", "rslora", "pissa", "olora", "ia3", "loha", "lokr", "oft", "boft",
                    "prompt_tuning", "prefix_tuning", "bottleneck"] = "lora"
    """`lora`, its variants `dora` (weight-decomposed), `rslora` (rank-stabilised scale), `pissa` /
    `olora` (LoRA started from the weights' principal / orthonormal directions); `ia3` (learned
    scaling vectors); `loha` / `lokr` (Hadamard / Kronecker low-rank products); `oft` / `boft`
    (orthogonal rotations); `prompt_tuning` / `prefix_tuning` (learned virtual tokens, SFT only);
    `bottleneck` (Houlsby/Pfeiffer adapters: small residual MLPs after the attention and MLP
    outputs; rlhf_stack's own, see `bottleneck.py`). Which stage takes which, and why: README "PEFT methods"."""
    target_modules: str | list[str] | None = None
    """Modules that get the method: a list of names, or `all-linear`. None: the method's default
    (`all-linear` for the LoRA family, LoHa, LoKr, OFT, BOFT; peft's per-architecture default for
    IA3; `o_proj` + `down_proj` for bottleneck houlsby, `down_proj` for pfeiffer). Not for the
    virtual-token methods."""
    last_n_layers: int | None = Field(None, ge=1)
    """Only the last N transformer blocks get the method (None: all). Not for the virtual-token methods."""
    options: dict[str, Any] = {}
    """The method's own settings, by peft's names for its config class (LoraConfig, IA3Config,
    LoHaConfig, LoKrConfig, OFTConfig, BOFTConfig, PromptTuningConfig, PrefixTuningConfig), e.g.
    `{r: 8, lora_alpha: 16}` or `{num_virtual_tokens: 16}`; for bottleneck: `placement`
    (houlsby|pfeiffer), `reduction_factor`, `activation`, `dropout` (`bottleneck.BottleneckConfig`).
    Unknown names and wrong types are errors; defaults per method in `peft_methods.METHODS`."""

    @model_validator(mode="after")
    def _check(self) -> PeftSettings:
        from rlhf_stack.peft_methods import check_settings

        check_settings(self)
        return self


class ModelConfig(Config):
    name_or_path: str
    """Hub id, local directory, checkpoint from an earlier stage, or an alias (`smollm2-135m-instruct`)."""
    tokenizer: str | None = None
    """Tokenizer to load when it differs from the model's (default: the model's own)."""
    chat_template: str | None = None
    """Jinja chat template to use instead of the tokenizer's (a default is set when it has none)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype. `auto` = float32 on CPU (bf16 matmul is very slow there), bfloat16 on CUDA."""
    tuning: Literal["full", "lora", "freeze", "peft"] = "lora"
    """`full`: train every weight; `lora`: peft LoRA adapters (settings in `lora`); `freeze`: train
    only the last N blocks + head; `peft`: any method of the `peft` block (DoRA, IA3, prompt tuning, ...)."""
    lora: LoraSettings = LoraSettings()
    """Adapter settings, used when tuning is `lora`."""
    peft: PeftSettings = PeftSettings()
    """The method and its settings, used when tuning is `peft`."""
    freeze_trainable_layers: int = 2
    """With tuning `freeze`: how many of the last transformer blocks stay trainable."""
    trust_remote_code: bool = False
    """Allow model code from the Hub repository (only for models you trust)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    fuse_gated_mlp: bool = True
    """Compute a gated MLP's `act(gate(x)) * up(x)` as one autograd step that keeps only the gate's and
    the up projection's outputs for the backward (Llama-family SiLU MLPs; `gated_mlp.py`): the same
    outputs and gradients bit for bit, one `(tokens, intermediate)` tensor per block less memory while
    a pass's activations are held. Any other MLP keeps its own forward."""
    fuse_lora: bool = True
    """Compute each LoRA linear layer `W x + s B(A x)` as one autograd step (`fused_lora.py`): the
    adapter's product is added into the base output by the same matrix call, and the scaling is applied
    to rank-wide tensors only, which saves four elementwise passes over the layer's activations per
    forward and backward. The same outputs bit for bit with a power-of-two scaling (alpha = r or 2r),
    gradients to float rounding (the input's gradient contributions are summed in another order).
    DoRA, dropout while training, merged or several active adapters run peft's own forward."""
    rebuild_activations: bool = True
    """Do not keep the tensors a decoder block's backward can rebuild from what it keeps anyway (its
    norms' outputs, the fused gated MLP's product): rebuild them in the backward with the same ops
    (`rebuild.py`). The same outputs and gradients bit for bit, ~3 activation tensors per block less
    memory, one norm or product more per rebuilt tensor in the backward. Ignored under
    `gradient_checkpointing`, which recomputes whole blocks."""

    @property
    def adapter_method(self) -> str | None:
        """The peft-style method in effect (`lora` for tuning lora), None for full / freeze."""
        return {"lora": "lora", "peft": self.peft.method}.get(self.tuning)

    @property
    def peft_settings(self) -> PeftSettings | None:
        """The PeftSettings in effect: `tuning: lora` is method lora with the `lora:` block's values."""
        if self.tuning != "lora":
            return self.peft if self.tuning == "peft" else None
        lora = self.lora
        return PeftSettings(method="lora", target_modules=lora.target_modules, last_n_layers=lora.last_n_layers,
                            options={"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout})


class DataConfig(Config):
    path: DataPath
    """A JSONL file in our format, or a `datasets` name / local dataset directory."""
    split: str = "train"
    """Split to read when `path` is a `datasets` name."""
    columns: dict[str, str] = {}
    """Rename source columns to ours, e.g. `{prompt: question, response: answer}`."""
    eval_path: DataPath | None = None
    """A separate eval file; when empty, `eval_fraction` of the rows are held out by prompt hash."""
    eval_fraction: float = 0.05
    """Share of prompts held out for evaluation when no `eval_path` is given (0 disables eval)."""
    max_rows: int | None = None
    """Read at most this many training rows (quick experiments)."""


class TrainingConfig(Config):
    """Optimisation settings common to the trainer-based stages (SFT, reward model, DPO)."""

    epochs: float = 1.0
    """Passes over the training data."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use `epochs`)."""
    learning_rate: float = 2e-4
    """Peak learning rate (LoRA usually wants ~1e-4..3e-4, full fine-tuning ~1e-5)."""
    lr_scheduler: str = "cosine"
    """transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_ratio: float = 0.03
    """Share of steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 8
    """Examples per device per micro-batch."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    logging_steps: int = 10
    """Log train metrics every N optimizer steps."""
    eval_every_steps: int | None = None
    """Evaluate (and checkpoint) every N steps; None = once per epoch."""
    early_stopping_patience: int | None = 3
    """Stop after N evaluations without improvement of the stage's metric (None: never stop early)."""
    save_total_limit: int = 2
    """Intermediate checkpoints kept in `output_dir/checkpoints` (the best is always kept)."""
    report_to: list[str] = ["none"]
    """Trackers: none, tensorboard, wandb, trackio."""
    seed: int = 42
    """Seed for data order and initialisation."""
    on_nonfinite: OnNonFinite = "stop"
    """A NaN or inf in a step's loss or gradients, found before the optimizer step: `stop` ends the
    run with an error naming the step, the quantity (loss, or the gradient of which parameter) and
    the last good checkpoint, and saves nothing after it; `skip_step` drops that update (gradients
    cleared, no optimizer or LR-scheduler change; the batch still counts as a step) and counts it
    (`skipped_updates` in logs/train_log.jsonl, stage.json and the run report)."""
    pack_frozen_weights: bool = True
    """CPU, float32: the layers that do not train (the base under LoRA, a DPO reference adapter or
    model, the LM head) run their products through copies of their weights reordered once for
    oneDNN (`ppo/packed.py`), kept for the whole of `trainer.train`; the LM head's input gradient
    through a packed copy of its transpose. One more copy of those weights meanwhile (SmolLM2-135M:
    ~540 MB, plus ~113 MB for the head's transpose). Same results up to float rounding. No effect
    on a GPU, in another dtype, or on the layers that train. The quickstart's stages on the 2-core
    AMD EPYC here (`benchmarks/frozen_packing.py`, 8 steps): SFT 1.19x, reward model 1.57x, DPO 1.69x
    faster, peak RSS +400-600 MB."""


@dataclass(frozen=True)
class StageResult:
    """What every stage returns: the checkpoint directory and its final metrics."""

    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# ---- loading ----------------------------------------------------------------------------------


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML: 3, true, [x, y], null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of `data` with each `key.path=value` applied (creating nested dicts)."""
    data = _deep_copy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[:-1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Read a YAML mapping; return it with the line number of every key path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return data, lines


def load_config(cls: type[C], source: str | Path | dict | None = None, overrides=(), *, origin: str = "") -> C:
    """Build `cls` from a YAML file or dict plus overrides; raise ConfigError on any problem."""
    lines: dict[str, int] = {}
    if source is None:
        data = {}
    elif isinstance(source, dict):
        data = source
    else:
        data, lines = read_yaml(source)
        origin = str(source)
    data = apply_overrides(data, list(overrides))
    return validate(cls, data, origin=origin, lines=lines)


def validate(cls: type[C], data: dict, *, origin: str = "", lines: dict[str, int] | None = None,
             prefix: str = "") -> C:
    """Validate a plain dict against `cls`, turning pydantic errors into one readable ConfigError.
    prefix: the key path of `data` inside its file (`stages.ppo_rloo`), put before every key named."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(cls, exc, origin, lines or {}, prefix)) from None


def format_validation_error(cls: type[BaseModel], exc: ValidationError, origin: str, lines: dict,
                            prefix: str = "") -> str:
    messages = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, KeyPathError):
            loc, err = [*loc, *error.subkey.split(".")], {**err, "msg": error.message}
        key = ".".join(([prefix] if prefix else []) + _strip_union_tags(loc))
        where = f"{origin}:{lines[key]}: " if origin and key in lines else (f"{origin}: " if origin else "")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(allowed_keys(cls, _strip_union_tags(loc)[:-1]))
            messages.append(f"{where}unknown key '{key}' (allowed here: {allowed})")
        elif err["type"] == "missing":
            messages.append(f"{where}missing required key '{key}'")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            messages.append(f"{where}{key}: {err['msg']}{got_s}")
    return "\n".join(messages)


def allowed_keys(cls: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (nested) config class found at `path` under `cls`."""
    model: Any = cls
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = _config_class(fields[part].annotation)
    return sorted(getattr(model, "model_fields", {}) or [])


def describe(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, doc) for every field, nested sections expanded: the option docs."""
    rows = []
    for name, info in cls.model_fields.items():
        key = f"{prefix}{name}"
        sub = _config_class(info.annotation)
        if sub is not None and (info.is_required() or isinstance(info.default, BaseModel | type(None))):
            rows.append((key, sub.__name__, "(required)" if info.is_required() else "", info.description or ""))
            rows.extend(describe(sub, key + "."))
            continue
        default = "(required)" if info.is_required() else repr(info.default)
        type_name = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        rows.append((key, type_name, default, info.description or ""))
    return rows


def config_to_dict(cfg: BaseModel) -> dict:
    """JSON-safe dict of a config (for stage.json and hashing)."""
    return cfg.model_dump(mode="json")


def _config_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _strip_union_tags(loc: list[str]) -> list[str]:
    # pydantic inserts the union member name ("LoraSettings", "str") into locations; drop those.
    return [p for p in loc if not (p[:1].isupper() or p in {"str", "int", "float", "list[str]", "bool"})]


def _collect_lines(node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key + ".", out)


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def load_callable(spec: str) -> Callable:
    """`package.module:function` -> the function (a reward function, a judge); ConfigError with the
    reason when it cannot be loaded."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"function {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"function {spec!r}: cannot import {module_name} ({exc})") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"function {spec!r}: {module_name} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"function {spec!r} is not callable")
    return fn
