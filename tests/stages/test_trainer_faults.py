"""`train.on_nonfinite` in the Trainer stages (SFT, reward model, DPO; `trainer_guard.NonFiniteCallback`),
with NaNs injected into the real model (a forward hook on its input embeddings, a hook on a real
parameter's gradient), never by mocking the code under test."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlhf_stack import checkpointing
from rlhf_stack.config import load_config
from rlhf_stack.errors import NonFiniteError
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (conftest.one_thread)."""


def nan_embeddings_at(model, calls: set[int]) -> None:
    """Make the input embeddings NaN in the n-th training forward pass with gradients, n in calls
    (the embeddings, not the LM head: TRL's SFT multiplies by the head's weight directly)."""
    seen = {"n": 0}

    def hook(module, inputs, output):
        if not (module.training and torch.is_grad_enabled()):
            return None
        seen["n"] += 1
        return output * math.nan if seen["n"] in calls else None

    model.get_input_embeddings().register_forward_hook(hook)


def sft_cfg(tiny_model_dir, data, out, **train):
    from rlhf_stack.sft import SFTConfig

    return load_config(SFTConfig, {
        "model": {"name_or_path": str(tiny_model_dir), "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"path": str(data), "eval_fraction": 0.0}, "output_dir": str(out), "max_length": 64,
        "train": {"max_steps": 5, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "warmup_ratio": 0.0,
                  "lr_scheduler": "linear", "eval_every_steps": 2, **train}})


def test_sft_nan_loss_stops_or_skips_the_step_as_if_never_taken(tiny_model_dir, instructions_file, tmp_path,
                                                                 monkeypatch):
    """The loss of step 3 is NaN (the input embeddings' output, through a forward hook).

    `stop`: NonFiniteError naming step 3, the loss and the last good checkpoint (checkpoint-2);
    nothing after step 2 is saved, no stage.json.

    `skip_step`: the run's final weights EQUAL those of a run in which batch 3 was never taken. In
    SFT the batches are fixed by the data seed and nothing else draws random numbers here (no
    dropout), so "never taken" means: weights, AdamW and the LR schedule after step 4 are those of
    step 2 updated by batch 4 alone, and step 5 trains on batch 5. That run is the Trainer's own
    resume from the stopped run's checkpoint-2 relabelled as step 3 (global_step 3), which skips
    the first 3 batches. The linear LR schedule makes a scheduler step on the dropped batch visible.
    """
    from rlhf_stack import sft

    real_build = sft.build_sft_trainer

    def build_with_fault(cfg):
        trainer, metrics = real_build(cfg)
        nan_embeddings_at(trainer.model, {3})
        return trainer, metrics

    monkeypatch.setattr(sft, "build_sft_trainer", build_with_fault)
    stopped = tmp_path / "stopped"
    with pytest.raises(NonFiniteError) as caught:
        sft.train_sft(sft_cfg(tiny_model_dir, instructions_file, stopped))
    checkpoints = stopped / "checkpoints"
    assert str(caught.value) == (
        f"sft step 3: non-finite loss; stopped before that update. Nothing was saved after it; last good "
        f"checkpoint: {checkpoints / 'checkpoint-2'} (a re-run resumes from it). To drop such updates instead, "
        "set train.on_nonfinite: skip_step")
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (stopped / "stage.json").exists()

    skipped = tmp_path / "skipped"
    result = sft.train_sft(sft_cfg(tiny_model_dir, instructions_file, skipped, on_nonfinite="skip_step"))
    assert result.metrics["skipped_updates"] == 1 and result.metrics["steps"] == 5
    log = [json.loads(line) for line in (skipped / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert {"skipped_updates": 1, "nonfinite": "loss", "step": 3} in log
    assert [math.isnan(e["loss"]) for e in log if "loss" in e] == [False, False, True, False, False]
    assert math.isfinite(result.metrics["train_loss"])

    # the reference: checkpoint-2 relabelled step 3, resumed without the fault
    monkeypatch.setattr(sft, "build_sft_trainer", real_build)
    third = checkpointing.start(checkpoints / "checkpoint-3")  # written as any checkpoint is (its manifest)
    shutil.copytree(checkpoints / "checkpoint-2", third, dirs_exist_ok=True)
    (third / checkpointing.MANIFEST_FILE).unlink()
    state = json.loads((third / "trainer_state.json").read_text())
    (third / "trainer_state.json").write_text(json.dumps({**state, "global_step": 3}))
    checkpointing.commit(third, checkpoints / "checkpoint-3")
    reference = sft.train_sft(sft_cfg(tiny_model_dir, instructions_file, stopped))
    assert reference.metrics["resumed_from"].endswith("checkpoint-3")
    want, got = load_file(str(stopped / "adapter_model.safetensors")), load_file(str(skipped / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert torch.isfinite(got[name]).all()
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0)


def test_reward_model_nan_gradient_is_skipped_and_counted(tiny_model_dir, rankings_file, tmp_path, monkeypatch):
    """The score head's gradient is NaN in step 2 (a hook on the real parameter): under skip_step the
    update is dropped and named by its parameter, the count reaches stage.json, the weights stay finite."""
    from rlhf_stack.reward import stage
    from rlhf_stack.reward.stage import RewardConfig, train_reward

    real_load = stage.load_reward_model

    def load_with_fault(cfg, tokenizer):
        model = real_load(cfg, tokenizer)
        head = next(p for name, p in model.named_parameters() if "score" in name and p.requires_grad)
        calls = {"n": 0}

        def poison(grad):
            calls["n"] += 1
            return grad * math.nan if calls["n"] == 2 else grad

        head.register_hook(poison)
        return model

    monkeypatch.setattr(stage, "load_reward_model", load_with_fault)
    out = tmp_path / "rm"
    cfg = load_config(RewardConfig, {
        "model": {"name_or_path": str(tiny_model_dir), "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"path": str(rankings_file), "eval_fraction": 0.0}, "output_dir": str(out), "max_length": 64,
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "warmup_ratio": 0.0,
                  "on_nonfinite": "skip_step"}})
    result = train_reward(cfg)
    info = json.loads((out / "stage.json").read_text())
    assert result.metrics["skipped_updates"] == 1 and info["metrics"]["skipped_updates"] == 1
    log = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    entry = next(e for e in log if "nonfinite" in e)
    assert entry["step"] == 2 and entry["nonfinite"].startswith("grad of param group '0' (first: ")
    assert "score" in entry["nonfinite"]
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_dpo_nan_loss_stops_before_any_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """DPO's first policy forward gives NaN: the run stops at step 1, saying that nothing
    was saved and a re-run starts over; no checkpoint directory holds anything."""
    from rlhf_stack.dpo import models
    from rlhf_stack.dpo.stage import DPOConfig, train_dpo

    real_build = models.build_policy

    def build_with_fault(policy_cfg):
        model, reference, info = real_build(policy_cfg)
        nan_embeddings_at(model, {1})
        return model, reference, info

    monkeypatch.setattr(models, "build_policy", build_with_fault)
    rows = [{"prompt": f"Question {i}?", "completions": ["The apple.", "The box."], "ranks": [1, 2]} for i in range(8)]
    out = tmp_path / "dpo"
    cfg = load_config(DPOConfig, {
        "policy": {"name_or_path": str(tiny_model_dir), "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"path": str(write_jsonl(tmp_path / "rankings.jsonl", rows)), "eval_fraction": 0.0},
        "output_dir": str(out), "max_length": 64,
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "warmup_ratio": 0.0}})
    with pytest.raises(NonFiniteError, match=r"^dpo step 1: non-finite loss; stopped before that update\. Nothing was "
                                              r"saved, and no checkpoint was written before: a re-run starts from"):
        train_dpo(cfg)
    assert not (out / "stage.json").exists()
    assert not any((out / "checkpoints").glob("checkpoint-*"))
