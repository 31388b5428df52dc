"""`train.pack_frozen_weights` in the Trainer stages (SFT, reward model, DPO): while `trainer.train`
runs, the frozen linear layers (and only those) compute through packed weights, the losses equal
the unpacked run's up to float rounding, and every layer is plain again afterwards."""

import json
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from rlhf_stack.config import load_config
from rlhf_stack.dpo.stage import DPOConfig, train_dpo
from rlhf_stack.reward.stage import RewardConfig, train_reward
from rlhf_stack.sft import SFTConfig, train_sft
from tests.conftest import write_jsonl
from tests.stages.test_dpo_stage import keyword_rankings

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                                   reason="this torch build has no oneDNN: nothing to pack")]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (conftest.one_thread)."""


class PackedLayers(TrainerCallback):
    """At every step: how many linear layers of the model run packed, and whether any of them trains."""

    def __init__(self) -> None:
        self.packed: list[int] = []
        self.trainable_packed = False

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        layers = packed_layers(model)
        self.packed.append(len(layers))
        self.trainable_packed |= any(m.weight.requires_grad for m in layers)


def packed_layers(*models: nn.Module) -> list[nn.Linear]:
    return [m for model in models for m in model.modules() if type(m) is nn.Linear and "forward" in m.__dict__]


@pytest.fixture
def packing_calls(monkeypatch) -> list[dict]:
    """Each `training.frozen_weights_packed` call of a stage: its models, the layers it packed, and
    the layers still packed once it ended."""
    from rlhf_stack import training

    calls, real = [], training.frozen_weights_packed

    @contextmanager
    def spying(train, *models):
        with real(train, *models) as n:
            yield n
        present = [model for model in models if model is not None]
        calls.append({"models": len(present), "packed": n, "left_packed": len(packed_layers(*present))})

    monkeypatch.setattr(training, "frozen_weights_packed", spying)
    return calls


def losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def run(stage: str, tiny_model_dir, tmp_path, data, pack: bool, tuning: str = "lora"):
    train = {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "warmup_ratio": 0.0,
             "early_stopping_patience": None, "pack_frozen_weights": pack}
    model = {"name_or_path": str(tiny_model_dir), "tuning": tuning, "freeze_trainable_layers": 1,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    out = tmp_path / f"{stage}-{tuning}-{pack}"
    spy = PackedLayers()
    if stage == "sft":
        cfg = load_config(SFTConfig, {"model": model, "data": {"path": str(data["sft"])}, "output_dir": str(out),
                                      "max_length": 64, "train": train})
        train_sft(cfg, callbacks=[spy])
    elif stage == "reward":
        cfg = load_config(RewardConfig, {"model": model, "data": {"path": str(data["rankings"])},
                                         "output_dir": str(out), "max_length": 64, "train": train})
        train_reward(cfg, callbacks=[spy])
    else:
        cfg = load_config(DPOConfig, {"policy": model, "data": {"path": str(data["rankings"])}, "output_dir": str(out),
                                      "max_length": 64, "beta": 0.5, "train": train})
        train_dpo(cfg, callbacks=[spy])
    return spy, losses(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing_data")
    sft = [{"prompt": f"Tell me about {t} ({i}).", "response": f"{t.capitalize()} are nice. Fact {i}."}
           for i in range(4) for t in ["cats", "dogs", "bread", "water"]]
    return {"sft": write_jsonl(root / "sft.jsonl", sft),
            "rankings": write_jsonl(root / "rankings.jsonl", keyword_rankings(16, 0, seed=0))}


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_frozen_layers_train_packed_with_the_same_losses(stage, tiny_model_dir, tmp_path, data, packing_calls):
    packed_spy, packed_losses = run(stage, tiny_model_dir, tmp_path, data, pack=True)
    plain_spy, plain_losses = run(stage, tiny_model_dir, tmp_path, data, pack=False)
    assert len(packed_spy.packed) == 4 and min(packed_spy.packed) > 0
    assert not packed_spy.trainable_packed
    assert plain_spy.packed == [0, 0, 0, 0]
    assert [call["left_packed"] for call in packing_calls] == [0, 0]  # plain layers again after training
    assert len(packed_losses) == 4
    assert packed_losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-5)


def test_dpo_full_tuning_packs_its_frozen_reference_model(tiny_model_dir, tmp_path, data, packing_calls):
    """Full tuning: nothing of the policy is frozen, the reference is a model of its own, packed."""
    from transformers import AutoModelForCausalLM

    spy, packed_losses = run("dpo", tiny_model_dir, tmp_path, data, pack=True, tuning="full")
    _, plain_losses = run("dpo", tiny_model_dir, tmp_path, data, pack=False, tuning="full")
    n_linear = sum(type(m) is nn.Linear for m in AutoModelForCausalLM.from_pretrained(tiny_model_dir).modules())
    # every linear layer of the reference, none of the policy; both plain again afterwards
    assert packing_calls == [{"models": 2, "packed": n_linear, "left_packed": 0},
                             {"models": 2, "packed": 0, "left_packed": 0}]
    assert spy.packed == [0, 0, 0, 0]
    assert packed_losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-5)
