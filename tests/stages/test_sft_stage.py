"""SFT smoke on the tiny model, per tuning method: finite loss, the right parameters move,
the checkpoint reloads with plain transformers/peft and generates; response-only labels."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_stack.config import load_config
from rlhf_stack.errors import DataError, ModelNotFoundError
from rlhf_stack.sft import SFTConfig, build_sft_trainer, train_sft

pytestmark = pytest.mark.slow


def make_cfg(tiny_model_dir, data, out, tuning="lora", **extra):
    return load_config(SFTConfig, {
        "model": {"name_or_path": str(tiny_model_dir), "tuning": tuning, "freeze_trainable_layers": 1,
                  "lora": {"r": 4, "alpha": 8}},
        "data": {"path": str(data), "eval_fraction": 0.2},
        "output_dir": str(out), "max_length": 64,
        "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1,
                  "eval_every_steps": 2, "warmup_ratio": 0.0},
        **extra,
    })


def reload_merged(ckpt):
    if (ckpt / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(ckpt).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(ckpt)


@pytest.mark.parametrize("tuning", ["lora", "full", "freeze"])
def test_sft_tuning_methods(tiny_model_dir, instructions_file, tmp_path, tuning):
    before = load_file(tiny_model_dir / "model.safetensors")
    result = train_sft(make_cfg(tiny_model_dir, instructions_file, tmp_path / "out", tuning))
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
    assert result.metrics["eval_loss"] < result.metrics["eval_loss_before"]
    # the best model's eval loss, read from the evaluation that picked it (no second pass)
    logged = [json.loads(line) for line in (result.checkpoint / "logs" / "train_log.jsonl").read_text().splitlines()]
    evals = [e["eval_loss"] for e in logged if "eval_loss" in e]
    assert result.metrics["eval_loss"] == min(evals) and len(evals) == result.metrics["steps"] // 2

    info = json.loads((result.checkpoint / "stage.json").read_text())
    assert info["stage"] == "sft" and info["tuning"] == tuning and "eval_loss" in info["metrics"]
    model = reload_merged(result.checkpoint)
    after = {k: v for k, v in model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if tuning == "lora":  # adapters on every linear of the blocks; embeddings and norms untouched
        assert any(".q_proj." in k for k in changed) and not any("norm" in k or "embed" in k for k in changed)
    elif tuning == "freeze":  # only the last block, the final norm and the (tied) head train
        assert any(k.startswith("model.layers.1.") for k in changed)
        assert not any(k.startswith("model.layers.0.") for k in changed)
    else:
        assert any(k.startswith("model.layers.0.") for k in changed)

    tok = AutoTokenizer.from_pretrained(result.checkpoint)
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_prompt_tokens_are_masked(tiny_model_dir, instructions_file, tmp_path):
    cfg = make_cfg(tiny_model_dir, instructions_file, tmp_path / "out")
    trainer, _ = build_sft_trainer(cfg)
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    row = trainer.train_dataset[0]
    prompt_ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
    labels = batch["labels"][0]
    n_prompt = len(prompt_ids)
    assert (labels[:n_prompt] == -100).all()  # every prompt token is ignored by the loss
    assert (labels[n_prompt:] != -100).any()  # the response is trained on


def test_bad_inputs_fail_cleanly(tiny_model_dir, tmp_path):
    long_prompt = tmp_path / "long.jsonl"
    long_prompt.write_text(json.dumps({"prompt": "word " * 200, "response": "ok"}) + "\n"
                           + json.dumps({"prompt": "hi", "response": "ok"}) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"long.jsonl:1: the prompt is \d+ tokens"):
        train_sft(make_cfg(tiny_model_dir, long_prompt, out))
    assert not (out / "stage.json").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": ""}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: 'response' is empty"):
        train_sft(make_cfg(tiny_model_dir, bad, out))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        train_sft(make_cfg(tmp_path / "no-model", long_prompt, out))
    assert not (out / "stage.json").exists()


def test_resume_from_trainer_checkpoint(tiny_model_dir, instructions_file, tmp_path):
    cfg = make_cfg(tiny_model_dir, instructions_file, tmp_path / "out", keep_checkpoints=True)
    first = train_sft(cfg)
    (first.checkpoint / "stage.json").unlink()  # as if killed after the last trainer checkpoint
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 6})})
    second = train_sft(more)
    assert second.metrics["resumed_from"].endswith("checkpoint-4")
    assert second.metrics["steps"] == 6


def test_corpus_mode_trains_on_every_token(tiny_model_dir, corpus_file, tmp_path):
    cfg = make_cfg(tiny_model_dir, corpus_file, tmp_path / "out", data_kind="corpus")
    trainer, _ = build_sft_trainer(cfg)
    batch = next(iter(trainer.get_train_dataloader()))
    real = batch["attention_mask"].bool()
    assert (batch["labels"][real] != -100).all()


def test_lm_head_runs_on_labelled_positions_only_with_the_same_loss(tiny_model_dir, instructions_file, tmp_path,
                                                                     monkeypatch):
    """On a CPU, TRL's fused LM head would score every position (prompt and padding too); the stage
    makes it score only the positions with a label, as it does on CUDA. Same loss and gradients."""
    import trl.trainer.utils as trl_utils

    cfg = make_cfg(tiny_model_dir, instructions_file, tmp_path / "out")
    trainer, _ = build_sft_trainer(cfg)
    batch = {k: v for k, v in next(iter(trainer.get_train_dataloader())).items()}
    rows_scored = []
    head = trl_utils._ChunkedLogProbFunction

    class Spy(head):
        @staticmethod
        def forward(ctx, hidden, *rest):
            rows_scored.append(hidden.shape[0])
            return head.forward(ctx, hidden, *rest)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    model = trainer.model.eval()  # no dropout: the two passes must see the same network
    results = []
    for compute_loss in (type(trainer).compute_loss, type(trainer).__mro__[1].compute_loss):  # ours, TRL's own
        model.zero_grad()
        loss = compute_loss(trainer, model, dict(batch))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert rows_scored == [n_labelled, batch["labels"][:, 1:].numel()]
    assert n_labelled < batch["labels"][:, 1:].numel()
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    for ours, theirs in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
