"""Shared fixtures: the tiny model, small data files, offline settings."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

FIXTURES = Path(__file__).parent / "fixtures"
TINY_MODEL = FIXTURES / "tiny-llama"


def loss_and_grads(model, ids):
    """One forward + backward of a loss over every logit; returns (logits, {parameter name: gradient})."""
    import torch

    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    loss = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).sum() + (logits ** 2).mean()
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return TINY_MODEL


@pytest.fixture
def tiny_causal_lm():
    """Build the tiny causal LM in eval mode, seeded; `lora=True` wraps it in a LoRA adapter on
    every linear layer with random (non-zero) weights, so the adapter changes the outputs."""
    def build(lora: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(TINY_MODEL).eval()
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
        return model

    return build


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def instructions_file(tmp_path) -> Path:
    topics = ["cats", "dogs", "the sky", "bread", "python", "the moon", "water", "plants"]
    rows = [{"prompt": f"Tell me about {t} ({i}).", "response": f"{t.capitalize()} are nice. Fact {i}."}
            for i in range(6) for t in topics]
    return write_jsonl(tmp_path / "sft.jsonl", rows)


@pytest.fixture
def rankings_file(tmp_path) -> Path:
    rows = []
    for i in range(24):
        rows.append({"prompt": f"Question {i}: name a fruit.",
                     "completions": ["Apple.", "Banana is a fruit.", "no no no no", "I do not know."],
                     "ranks": [1, 2, 4, 3], "annotator": "a"})
    return write_jsonl(tmp_path / "rankings.jsonl", rows)


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say something nice {i}."} for i in range(32)])


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", [{"text": f"The moon orbits the earth. Line {i}."} for i in range(32)])


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the tiny model gains nothing from threads, and on a busy
    2-core machine two OpenMP threads spin against each other (SFT measured 5x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
