"""The model card of a checkpoint: `README.md` in the Hugging Face format, so it can be pushed as is.

`write_model_card(out_dir, record)` is called by `modeling.save_checkpoint` for every checkpoint a
stage or `rlhf-stack export` writes. YAML front matter (base_model, library_name, pipeline_tag,
tags: rlhf_stack, the stage, the tuning method), then the stage, the tuning method, the trainable
parameters, how to load it, the data fingerprints, the stage's metrics and the command that made
it. Everything comes from the stage record (the content of stage.json) and the files saved
beside it; nothing is measured here.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import yaml

CARD_FILE = "README.md"
COMMAND_ENV = "RLHF_STACK_COMMAND"  # set by the runner for stages it launches as subprocesses
STAGES = {"sft": ("supervised fine-tuning (InstructGPT step 1)", "text-generation"),
          "reward": ("reward model trained on K-wise human rankings (InstructGPT step 2)", "text-classification"),
          "ppo": ("PPO against the reward model (InstructGPT step 3)", "text-generation"),
          "dpo": ("DPO on K-wise rankings, from the SFT policy", "text-generation")}
TAGS = {"sft": "sft", "reward": "reward-model", "ppo": "ppo", "dpo": "dpo"}


def invocation() -> str:
    """The command that started this process (the runner's own, for the stages it launches)."""
    return os.environ.get(COMMAND_ENV) or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_model_card(out_dir: str | Path, record: dict) -> Path:
    """Write `out_dir/README.md` from a stage record (stage.json's content) and the saved files."""
    out_dir = Path(out_dir)
    path = out_dir / CARD_FILE
    path.write_text(model_card(out_dir, record), encoding="utf-8")
    return path


def model_card(out_dir: Path, record: dict) -> str:
    stage = record.get("stage", "model")
    what, pipeline_tag = STAGES.get(stage, (stage, "text-generation"))
    kind, base = _saved_kind(out_dir, record)
    method = record.get("method") or record.get("tuning", "full")
    front = {"base_model": base, "library_name": {"peft": "peft", "bottleneck": "rlhf_stack"}.get(kind, "transformers"),
             "pipeline_tag": pipeline_tag,
             "tags": ["rlhf_stack", TAGS.get(stage, stage), method, *(["peft"] if kind == "peft" else [])]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {stage}: {what}", "",
             f"Made by rlhf_stack, stage `{stage}`.", "",
             "| | |", "|---|---|",
             f"| stage | `{stage}`: {what} |",
             f"| base model | `{base}` |",
             f"| tuning method | `{method}`{_method_note(kind)} |"]
    params = record.get("parameters") or {}
    if params.get("total"):
        share = 100 * params["trainable"] / params["total"]
        lines.append(f"| trainable parameters | {params['trainable']:,} of {params['total']:,} ({share:.3g}%) |")
    if record.get("saved_at"):
        lines.append(f"| saved | {record['saved_at']} |")
    lines += ["", "## How to load", "", "```python", _load_snippet(kind, stage, base), "```"]
    if stage == "reward" and record.get("reward_bias") is not None:
        lines += ["", f"Add the normalisation bias `{record['reward_bias']:.6g}` (stage.json `reward_bias`) to the "
                      "score, the logit at the last token of the chat-templated (prompt, response)."]
    lines += ["", "## Data", "", "| file | fingerprint |", "|---|---|"]
    lines += [f"| `{name}` | `{fp}` |" for name, fp in (record.get("data") or {}).items()] or ["| (none) | |"]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in _flat(record.get("metrics") or {})] or ["| (none) | |"]
    lines += ["", "## How it was made", "", "```bash", record.get("command") or "(not recorded)", "```", ""]
    versions = record.get("versions") or {}
    if versions:
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    lines += ["The full configuration is in `stage.json` beside this file.", ""]
    return "\n".join(lines)


def _saved_kind(out_dir: Path, record: dict) -> tuple[str, str]:
    """("peft" | "bottleneck" | "full", the base model the files need)."""
    for kind, name in (("peft", "adapter_config.json"), ("bottleneck", "bottleneck_config.json")):
        file = out_dir / name
        if file.is_file():
            return kind, json.loads(file.read_text()).get("base_model_name_or_path") or record.get("base_model", "")
    return "full", str(record.get("base_model", ""))


def _method_note(kind: str) -> str:
    return {"peft": " (a peft adapter over the base model)",
            "bottleneck": " (bottleneck adapters over the base model; open with rlhf_stack)"}.get(kind, " (full weights)")


def _load_snippet(kind: str, stage: str, base: str) -> str:
    auto = "AutoModelForSequenceClassification" if stage == "reward" else "AutoModelForCausalLM"
    extra = ", num_labels=1" if stage == "reward" else ""
    if kind == "peft":
        return (f"from peft import PeftModel\nfrom transformers import {auto}, AutoTokenizer\n\n"
                f"base = {auto}.from_pretrained({base!r}{extra})\n"
                "model = PeftModel.from_pretrained(base, CHECKPOINT_DIR)\n"
                "tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)")
    if kind == "bottleneck":
        loader = "load_sequence_classifier" if stage == "reward" else "load_causal_lm"
        return (f"from rlhf_stack.config import ModelConfig\nfrom rlhf_stack.modeling import {loader}, load_tokenizer\n\n"
                f"model = {loader}(ModelConfig(name_or_path=CHECKPOINT_DIR, tuning='full'))\n"
                "tokenizer = load_tokenizer(CHECKPOINT_DIR)")
    return (f"from transformers import {auto}, AutoTokenizer\n\n"
            f"model = {auto}.from_pretrained(CHECKPOINT_DIR)\ntokenizer = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)")


def _flat(metrics: dict, prefix: str = ""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        elif value is None or isinstance(value, bool | int | float | str):
            yield f"{prefix}{key}", value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")
