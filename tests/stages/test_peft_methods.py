"""Every PEFT method (`tuning: peft`) through the real stages on the tiny model.

SFT and the reward model: the trainable parameters change and the frozen ones do not; the
checkpoint reloads with plain peft (bottleneck: from its plain files) to the same outputs (1e-5);
`export_merged` merges every mergeable method to the same outputs and names the ones it cannot.
PPO runs with each method its shared base accepts; refused methods are config errors with the
key path. (LoRA itself is covered by the per-stage tests.)
"""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from rlhf_stack import modeling
from rlhf_stack.config import ModelConfig, load_config
from rlhf_stack.errors import ConfigError, RlhfStackError
from rlhf_stack.peft_methods import METHODS
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow

OPTIONS = {"dora": {"r": 4, "lora_alpha": 8}, "rslora": {"r": 4, "lora_alpha": 8}, "pissa": {"r": 4, "lora_alpha": 4},
           "olora": {"r": 4, "lora_alpha": 4}, "ia3": {}, "loha": {"r": 4}, "lokr": {"r": 4},
           "oft": {"oft_block_size": 16}, "boft": {}, "prompt_tuning": {"num_virtual_tokens": 4},
           "prefix_tuning": {"num_virtual_tokens": 4}, "bottleneck": {"reduction_factor": 8}}
SFT_METHODS = list(OPTIONS)
RM_METHODS = [m for m in OPTIONS if "reward" not in METHODS[m].refused]
PPO_METHODS = [m for m in OPTIONS if "ppo" not in METHODS[m].refused]
IDS = torch.tensor([[5, 17, 42, 99, 7, 3], [8, 23, 61, 12, 4, 19]])
MASK = torch.ones_like(IDS)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Single-threaded (conftest.one_thread)."""


def model_block(tiny_model_dir, method: str) -> dict:
    return {"name_or_path": str(tiny_model_dir), "tuning": "peft", "peft": {"method": method, "options": OPTIONS[method]}}


class Watch(TrainerCallback):
    """Parameters at the start and end of training, and the trained model's outputs on IDS."""

    def __init__(self, outputs) -> None:
        self.outputs = outputs  # model -> tensor, in eval mode without a graph

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}
        was_training = model.training
        with torch.no_grad():
            self.result = self.outputs(model.eval())
        model.train(was_training)


def assert_trained_only_trainable(watch: Watch) -> None:
    assert watch.trainable and len(watch.trainable) < len(watch.before)
    changed = {n for n in watch.before if not torch.equal(watch.before[n], watch.after[n])}
    assert changed == watch.trainable, (sorted(watch.trainable - changed)[:3], sorted(changed - watch.trainable)[:3])


def assert_reload_and_merge(ckpt, method: str, outputs, expected, auto_cls, tmp_path, **load) -> None:
    from peft import PeftModel

    base = auto_cls.from_pretrained(load.pop("base"), **load)
    if method == "bottleneck":  # plain files, opened by rlhf_stack (not a peft adapter)
        assert {"bottleneck_config.json", "bottleneck_adapter.safetensors"} <= {p.name for p in ckpt.iterdir()}
        from rlhf_stack import bottleneck

        reloaded = bottleneck.load_adapters(base, ckpt)
    else:
        reloaded = PeftModel.from_pretrained(base, ckpt)
    with torch.no_grad():
        torch.testing.assert_close(outputs(reloaded.eval()), expected, atol=1e-5, rtol=0)
    merged_dir = tmp_path / "merged"
    if METHODS[method].merge:
        with pytest.raises(RlhfStackError, match=f"cannot be merged: {method}"):
            modeling.export_merged(ckpt, merged_dir)
        return
    modeling.export_merged(ckpt, merged_dir)
    assert not (merged_dir / "adapter_config.json").exists()
    merged = auto_cls.from_pretrained(merged_dir, **({"num_labels": 1} if "num_labels" in load else {}))
    with torch.no_grad():
        torch.testing.assert_close(outputs(merged.eval()), expected, atol=1e-4, rtol=0)


def assert_model_card(ckpt, stage: str, method: str) -> None:
    card = (ckpt / "README.md").read_text()
    front = card.split("---")[1]
    info = json.loads((ckpt / "stage.json").read_text())
    assert "base_model:" in front and f"- {method}" in front and "- rlhf_stack" in front
    assert info["method"] == method and info["command"] in card
    assert all(fp in card for fp in info["data"].values())


QUICK_TRAIN = {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "logging_steps": 1}


@pytest.mark.parametrize("method", SFT_METHODS)
def test_sft_trains_saves_reloads_and_merges(method, tiny_model_dir, instructions_file, tmp_path):
    from rlhf_stack.sft import SFTConfig, train_sft

    cfg = load_config(SFTConfig, {
        "model": model_block(tiny_model_dir, method), "data": {"path": str(instructions_file), "eval_fraction": 0.0},
        "output_dir": str(tmp_path / "sft"), "max_length": 64,
        "train": QUICK_TRAIN})

    def logits(model):
        return model(input_ids=IDS, attention_mask=MASK).logits

    watch = Watch(logits)
    result = train_sft(cfg, callbacks=[watch])
    assert math.isfinite(result.metrics["train_loss"])
    assert_trained_only_trainable(watch)
    assert_reload_and_merge(result.checkpoint, method, logits, watch.result, AutoModelForCausalLM, tmp_path,
                            base=tiny_model_dir)
    assert_model_card(result.checkpoint, "sft", method)


@pytest.fixture(scope="module")
def rankings(tmp_path_factory):
    rows = [{"prompt": f"Question {i}: name a fruit.", "completions": ["Apple.", "Banana is a fruit.", "no no"],
             "ranks": [1, 2, 3]} for i in range(12)]
    return write_jsonl(tmp_path_factory.mktemp("rm") / "rankings.jsonl", rows)


@pytest.mark.parametrize("method", RM_METHODS)
def test_reward_model_trains_saves_reloads_and_merges(method, tiny_model_dir, rankings, tmp_path):
    from rlhf_stack.reward.scorer import forward_scores
    from rlhf_stack.reward.stage import RewardConfig, train_reward

    cfg = load_config(RewardConfig, {
        "model": model_block(tiny_model_dir, method), "data": {"path": str(rankings), "eval_fraction": 0.0},
        "output_dir": str(tmp_path / "rm"), "max_length": 64,
        "train": QUICK_TRAIN})

    def scores(model):
        model.config.pad_token_id = 3  # the fixture tokenizer's pad id
        return forward_scores(model, IDS, MASK)

    watch = Watch(scores)
    result = train_reward(cfg, callbacks=[watch])
    assert math.isfinite(result.metrics["train_loss"])
    assert_trained_only_trainable(watch)
    assert any(n.startswith("score") or ".score." in n for n in watch.trainable)  # the new head trains
    assert_reload_and_merge(result.checkpoint, method, scores, watch.result, AutoModelForSequenceClassification,
                            tmp_path, base=tiny_model_dir, num_labels=1)


@pytest.mark.parametrize("method", PPO_METHODS)
def test_ppo_runs_each_method_on_the_shared_base(method, tiny_model_dir, prompts_file, tmp_path):
    from rlhf_stack.ppo import PPOConfig, train_ppo

    policy = model_block(tiny_model_dir, method)
    policy["peft"]["last_n_layers"] = 1  # the top block only: the bottom one becomes PPO's frozen trunk
    cfg = load_config(PPOConfig, {
        "policy": policy, "prompts": {"path": str(prompts_file), "eval_fraction": 0.0},
        "output_dir": str(tmp_path / "ppo"), "steps": 2, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 4,
        "learning_rate": 1e-2, "progress_bar": False, "save_every_steps": None, "eval_max_prompts": 0})
    result = train_ppo(cfg, reward_fns=[lambda prompts, responses: [len(r) / 10 for r in responses]])
    assert result.metrics["models"]["layout"] == "lora-shared-base"
    assert result.metrics["models"]["reference"] == "adapters-disabled"
    assert result.metrics["models"]["trunk_blocks"] == 1
    log = [json.loads(line) for line in (tmp_path / "ppo" / "logs" / "ppo_log.jsonl").read_text().splitlines()]
    # step 1 samples before any update: the new adapter is the identity, so policy == reference
    assert abs(log[0]["kl"]) < 1e-4 and all(math.isfinite(r["value_loss"]) for r in log)
    from peft import PeftModel

    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "ppo")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(policy(input_ids=IDS).logits, base(input_ids=IDS).logits)  # the policy moved
    assert_model_card(tmp_path / "ppo", "ppo", method)


def test_refused_methods_and_bad_options_are_config_errors_with_the_key_path(tiny_model_dir, rankings):
    from rlhf_stack.dpo.stage import DPOConfig
    from rlhf_stack.ppo import PPOConfig
    from rlhf_stack.reward.stage import RewardConfig

    data = {"path": str(rankings)}
    for method in ("prompt_tuning", "prefix_tuning"):
        with pytest.raises(ConfigError, match=f"^model.peft.method: {method} is not supported by the reward stage: "
                                              "the reward model's score is read at each sequence's last"):
            load_config(RewardConfig, {"model": model_block(tiny_model_dir, method), "data": data})
    for method, why in [("prompt_tuning", "virtual tokens"), ("pissa", "PiSSA / OLoRA"), ("olora", "PiSSA / OLoRA"),
                        ("bottleneck", "not peft adapters")]:
        for cls, section in [(PPOConfig, "prompts"), (DPOConfig, "data")]:
            stage = "ppo" if cls is PPOConfig else "dpo"
            with pytest.raises(ConfigError, match=f"policy.peft.method: {method} is not supported by the {stage} "
                                                  f"stage: .*{why}"):
                load_config(cls, {"policy": model_block(tiny_model_dir, method), section: data})
    bad = [({"method": "ia3", "options": {"r": 4}}, r"model.peft.options.r: unknown option for method ia3 \(allowed: "),
           ({"method": "lora", "options": {"r": "four"}}, "model.peft.options.r: Input should be a valid integer"),
           ({"method": "dora", "options": {"use_dora": False}}, "model.peft.options.use_dora: is what method dora sets"),
           ({"method": "lora", "options": {"init_lora_weights": "pissa"}}, "options.init_lora_weights: .*pissa, olora"),
           ({"method": "prompt_tuning", "last_n_layers": 1}, "model.peft.last_n_layers: prompt_tuning adds virtual"),
           ({"method": "bottleneck", "options": {"placement": "middle"}}, "model.peft.options: bottleneck: placement"),
           ({"method": "nope"}, "model.peft.method: Input should be")]
    for peft, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_config(RewardConfig, {"model": {"name_or_path": "x", "tuning": "peft", "peft": peft}, "data": data})


def test_lora_tuning_and_peft_method_lora_build_the_same_adapter(tiny_model_dir):
    lora = ModelConfig(name_or_path=str(tiny_model_dir), tuning="lora", lora={"r": 4, "alpha": 8, "last_n_layers": 1})
    peft = ModelConfig(name_or_path=str(tiny_model_dir), tuning="peft",
                       peft={"method": "lora", "last_n_layers": 1, "options": {"r": 4, "lora_alpha": 8}})
    names = []
    for cfg in (lora, peft):
        model = modeling.apply_tuning(modeling.load_causal_lm(cfg), cfg)
        names.append(sorted(n for n, p in model.named_parameters() if p.requires_grad))
    assert names[0] == names[1] and names[0] and all(".layers.1." in n for n in names[0])


def test_dpo_runs_a_non_lora_method_with_the_reference_as_adapters_disabled(tiny_model_dir, rankings, tmp_path):
    from peft import PeftModel

    from rlhf_stack.dpo.stage import DPOConfig, train_dpo

    cfg = load_config(DPOConfig, {
        "policy": model_block(tiny_model_dir, "loha"), "data": {"path": str(rankings), "eval_fraction": 0.25},
        "output_dir": str(tmp_path / "dpo"), "max_length": 64,
        "train": QUICK_TRAIN})
    result = train_dpo(cfg)
    assert result.metrics["models"]["layout"] == "lora-shared-base"
    assert result.metrics["models"]["reference"] == "adapters-disabled"
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.checkpoint)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # the LoHa delta starts at zero; trained, the policy differs from the reference
        assert not torch.allclose(policy(input_ids=IDS).logits, base(input_ids=IDS).logits)
    assert_model_card(result.checkpoint, "dpo", "loha")


def test_checkpoints_that_cannot_start_a_stage_are_config_errors(tiny_model_dir, prompts_file, rankings, tmp_path):
    from rlhf_stack.ppo import PPOConfig, train_ppo
    from rlhf_stack.reward.stage import RewardConfig, train_reward

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    saved = {}
    for method in ("ia3", "prompt_tuning"):
        cfg = ModelConfig(name_or_path=str(tiny_model_dir), tuning="peft", peft=model_block(tiny_model_dir, method)["peft"])
        saved[method] = modeling.save_checkpoint(modeling.apply_tuning(modeling.load_causal_lm(cfg), cfg), tokenizer,
                                                 tmp_path / method, {"stage": "sft"})
    # PPO trains the IA3 SFT adapter further; a LoRA value adapter cannot join it on the same base
    ppo = load_config(PPOConfig, {"policy": {"name_or_path": str(saved["ia3"]), "tuning": "lora"},
                                  "prompts": {"path": str(prompts_file)}, "output_dir": str(tmp_path / "ppo"),
                                  "batch_size": 4, "mini_batch_size": 2, "progress_bar": False})
    with pytest.raises(ConfigError, match="^policy.peft.method: .* is a IA3 adapter, .* one of ia3$"):
        train_ppo(ppo, reward_fns=[lambda prompts, responses: [0.0] * len(responses)])
    # virtual tokens cannot be merged into a base for the reward model to start from
    rm = load_config(RewardConfig, {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"path": str(rankings)},
                                    "init_from": str(saved["prompt_tuning"]), "output_dir": str(tmp_path / "rm")})
    with pytest.raises(ConfigError, match="^init_from: .* is a prompt_tuning checkpoint, which cannot start"):
        train_reward(rm)
