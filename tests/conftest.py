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


def stage3_passes(model, pad: int, packed: bool):
    """Stage 3's passes over a fixed batch (rows sharing a 2-token start, prompts of 4, 3 and 6
    tokens, responses of 3, 4 and 1) and a PPO-ptx corpus batch, with `model.packed_passes` set to
    `packed` (and the model's trunk as it is): the rollout's outputs (log-probs, entropy, reference
    log-probs, values), the training pass's (log-probs, values, ptx loss), and the gradients of a
    loss over the latter ({parameter name: gradient})."""
    import torch

    from rlhf_stack.ppo.rollout import left_pad, score_with_models

    model.packed_passes = packed
    assert model.packs == packed
    query_ids, query_mask = left_pad([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 8, 10, 11]], pad, torch.device("cpu"))
    response_ids = torch.tensor([[11, 12, 13, pad], [14, 15, 16, 17], [18, pad, pad, pad]])
    response_mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    input_ids = torch.cat([query_ids, response_ids], 1)
    mask = torch.cat([query_mask, response_mask.long()], 1)
    ptx_ids = torch.tensor([[20, 21, 22, 23, 2], [24, 25, 2, pad, pad]])
    ptx_mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    ptx_labels = ptx_ids.masked_fill(ptx_mask == 0, -100)
    assert (model.packing(input_ids, mask, response_ids.shape[1]) is not None) == packed  # this batch packs
    scored = score_with_models(model, query_ids, query_mask, response_ids, response_mask,
                               temperature=0.7, micro_batch_size=3)
    assert (scored[4] is not None) == (model.trunk is not None)
    ptx_hidden = model.trunk.hidden(ptx_ids, ptx_mask) if model.trunk is not None else None
    logprobs, values, ptx_loss = model(input_ids, mask, response_ids, (ptx_ids, ptx_mask, ptx_labels, ptx_hidden),
                                       hidden=model.trunk_hidden(input_ids, mask), temperature=0.7)
    logprobs, values = logprobs * response_mask, values * response_mask
    model.zero_grad()
    ((logprobs * torch.arange(1.0, 5.0)).sum() + values.sum() + ptx_loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return [*scored[:4], logprobs.detach(), values.detach(), ptx_loss.detach()], grads


def assert_same_passes(got, expected, tol: float = 1e-4):
    """Two `stage3_passes` results agree: outputs to `tol`, each gradient to `tol` of its largest
    entry (a full model's gradients reach ~100 here, summed in another order by the two layouts)."""
    import torch

    (outputs, grads), (expected_outputs, expected_grads) = got, expected
    for a, b in zip(outputs, expected_outputs, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    assert grads and grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        scale = max(float(expected_grads[name].abs().max()), 1.0)
        torch.testing.assert_close(grad, expected_grads[name], atol=tol * scale, rtol=tol)


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
