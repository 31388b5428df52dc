"""DPO on the tiny model: log-probabilities equal a plain forward, held-out implicit-reward accuracy
rises, the reference stays fixed, the checkpoint reloads with plain transformers/peft to the same
log-probabilities, resume, config errors."""

import json
import math
import random

import pytest
import torch

from rlhf_stack.config import load_config
from rlhf_stack.data import prompt_messages
from rlhf_stack.dpo.batching import PreferenceCollator, encode_preferences
from rlhf_stack.dpo.stage import DPOConfig, train_dpo
from rlhf_stack.errors import ConfigError
from rlhf_stack.metrics.ranking import pairwise_accuracy
from tests.conftest import write_jsonl

WORDS = ["red", "blue", "green", "small", "big", "old", "new", "warm", "cold", "soft", "dark", "light"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (conftest.one_thread)."""


def keyword_rankings(n: int, start: int, seed: int) -> list[dict]:
    """Learnable preference: the apple beats the stones (tied), a box is worst; the words around
    them change per prompt, so held-out rankings are new sentences. Every third ranking has K=3."""
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        w = rng.sample(WORDS, 4)
        completions = [f"The {w[0]} apple.", f"The {w[1]} stone.", f"The {w[2]} stone.", f"The {w[3]} box."]
        ranks = [1, 2, 2, 3]
        if i % 3 == 0:
            completions, ranks = completions[1:], [1, 1, 2]  # K=3: two tied stones above the box
        rows.append({"prompt": f"Question {i}: what is it?", "completions": completions, "ranks": ranks})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_data")
    extra = [{"prompt": "All equal?", "completions": ["yes", "no"], "ranks": [1, 1]},  # no preference: skipped
             {"prompt": "Pick one.", "chosen": "The red apple.", "rejected": "The red box."}]  # TRL row: K=2
    train = write_jsonl(root / "train.jsonl", keyword_rankings(30, 0, seed=0) + extra)
    held = write_jsonl(root / "eval.jsonl", keyword_rankings(8, 100, seed=1))
    return {"train": train, "eval": held}


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA SFT checkpoint over the tiny model that really changes it (random lora_B; the
    reload test checks that its log-probabilities differ from the base model's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in sft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    sft.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def make_cfg(data, policy_path, out, tuning, **extra) -> DPOConfig:
    train = {"max_steps": 12, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 2, "warmup_ratio": 0.0,
             "eval_every_steps": 6, "early_stopping_patience": None, **extra.pop("train", {})}
    policy = {"name_or_path": str(policy_path), "tuning": tuning, "freeze_trainable_layers": 1,
              "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, **extra.pop("policy", {})}
    return load_config(DPOConfig, {"policy": policy, "data": {"path": str(data["train"]), "eval_path": str(data["eval"])},
                                   "train": train, "output_dir": str(out), "max_length": 64, "beta": 0.5, **extra})


# ---- plain transformers / peft: what any HF user computes --------------------------------------------


def plain_model(checkpoint, base_dir):
    from transformers import AutoModelForCausalLM

    if (checkpoint / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base_path == str(base_dir.resolve())  # a plain adapter over the SFT base
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), checkpoint).eval()
    return AutoModelForCausalLM.from_pretrained(checkpoint).eval()


@torch.no_grad()
def plain_logprob(model, tokenizer, prompt, completion, max_length: int = 10**6) -> float:
    """log pi(completion | prompt): the tokens after the templated prompt + assistant header, each
    scored by the logits one position earlier; a sequence longer than max_length loses its start."""
    head = tokenizer.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
    ids = tokenizer.apply_chat_template(prompt_messages(prompt, completion), tokenize=True,
                                        return_dict=True)["input_ids"]
    assert ids[:len(head)] == head  # ChatML: the prompt is a prefix of the conversation
    cut = max(0, len(ids) - max_length)
    ids, first = ids[cut:], max(len(head) - cut, 1)
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(first, len(ids)))


# ---- the log-probabilities the loss sees --------------------------------------------------------------


def test_completion_logprobs_equal_a_plain_forward_with_or_without_the_shared_prompt(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rlhf_stack import modeling
    from rlhf_stack.dpo.models import decoder
    from rlhf_stack.dpo.trainer import completion_logprobs

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = keyword_rankings(2, 0, seed=3) + [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
         "completions": ["Apple.", "A stone, not a fruit at all."], "ranks": [1, 2]}]
    long_prompt = {"prompt": "Describe it. " * 6, "completions": ["Apple.", "A very long stone answer."], "ranks": [1, 2]}
    max_length = 64  # the other rows are shorter (this tokenizer splits words into pieces)
    items, n_truncated = encode_preferences(rows + [long_prompt], tokenizer, max_length)
    assert n_truncated == 2  # both sequences of the long prompt lose their start
    expected = [plain_logprob(model, tokenizer, r["prompt"], c, max_length) for r in rows + [long_prompt]
                for c in r["completions"]]
    for batch_items, shares in ((items[:3], True), (items, False)):  # the cut prompt shares nothing
        n = sum(len(i["ranks"]) for i in batch_items)
        for share in (True, False):
            batch = PreferenceCollator(tokenizer.pad_token_id, share_prompt=share)(batch_items)
            assert ("owner" in batch) == (share and shares)
            with torch.no_grad():
                got = completion_logprobs(model, batch, prefix_model=decoder(model))
            assert got.tolist() == pytest.approx(expected[:n], abs=1e-4)
    assert all(max(i["prompt_lengths"]) > i["prefix_length"] > 5 for i in items[:3])


# ---- three layouts of policy and reference, trained by the stage ------------------------------------


@pytest.fixture(scope="module")
def runs(data, tiny_model_dir, sft_adapter, tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_runs")
    cfgs = {
        "lora": make_cfg(data, tiny_model_dir, root / "lora", "lora"),
        "sft-adapter": make_cfg(data, sft_adapter, root / "sft", "lora", loss="plackett_luce",
                                train={"learning_rate": 1e-2}),
        "full": make_cfg(data, tiny_model_dir, root / "full", "full", loss="ipo", train={"learning_rate": 1e-3}),
    }
    return {name: (cfg, train_dpo(cfg)) for name, cfg in cfgs.items()}


@pytest.mark.parametrize("name, layout, reference", [("lora", "lora-shared-base", "adapters-disabled"),
                                                      ("sft-adapter", "lora-shared-base", "sft-adapter-copy"),
                                                      ("full", "separate-models", "frozen-copy")])
def test_held_out_implicit_reward_accuracy_rises(runs, name, layout, reference):
    cfg, result = runs[name]
    m = result.metrics
    # At the start the policy IS the reference: every implicit reward is 0 and accuracy is 0.5
    # (score ties count one half; test_reference_stays_fixed checks the zeros).
    assert m["eval_pairwise_accuracy"] >= 0.9 and m["eval_mean_margin"] > 0
    assert m["eval_n_pairs"] == 6 * 5 + 2 * 2  # rankings 100..107: six K=4 (5 pairs each), 102 and 105 K=3 (2 each)
    assert m["models"] == {"layout": layout, "reference": reference, "base_model": m["models"]["base_model"]}
    assert m["n_train"] == 31 and m["n_all_tied_skipped"] == 1 and m["steps"] == 12
    assert math.isfinite(m["train_loss"]) and m["share_prompt"] is True
    info = json.loads((result.checkpoint / "stage.json").read_text())
    assert info["stage"] == "dpo" and info["metrics"]["models"]["reference"] == reference
    assert "train_pairwise_accuracy" in (result.checkpoint / "logs" / "train_log.jsonl").read_text()


@pytest.mark.parametrize("name", ["lora", "sft-adapter", "full"])
def test_checkpoint_reloads_with_plain_peft_to_the_same_logprobs(runs, data, tiny_model_dir, sft_adapter, name):
    from transformers import AutoTokenizer

    cfg, result = runs[name]
    sft_dir = sft_adapter if name == "sft-adapter" else tiny_model_dir
    policy = plain_model(result.checkpoint, tiny_model_dir)
    reference = plain_model(sft_dir, tiny_model_dir) if name == "sft-adapter" else plain_model(tiny_model_dir, None)
    tokenizer = AutoTokenizer.from_pretrained(result.checkpoint)
    rows = [json.loads(line) for line in data["eval"].read_text().splitlines()]
    logratios = [[plain_logprob(policy, tokenizer, r["prompt"], c) - plain_logprob(reference, tokenizer, r["prompt"], c)
                  for c in r["completions"]] for r in rows]
    rewards = [[cfg.beta * x for x in row] for row in logratios]
    ranks = [r["ranks"] for r in rows]
    assert pairwise_accuracy(rewards, ranks)["pairwise_accuracy"] == result.metrics["eval_pairwise_accuracy"]
    chosen = [sum(x for x, k in zip(row, r, strict=True) if k == min(r)) / r.count(min(r))
              for row, r in zip(logratios, ranks, strict=True)]
    assert sum(chosen) / len(chosen) == pytest.approx(result.metrics["eval_chosen_logratio"], abs=1e-4)
    if name == "sft-adapter":  # the reference is the SFT model, which is not the base
        base = plain_model(tiny_model_dir, None)
        row = rows[0]
        gaps = [plain_logprob(reference, tokenizer, row["prompt"], c) - plain_logprob(base, tokenizer, row["prompt"], c)
                for c in row["completions"]]
        assert max(abs(g) for g in gaps) > 0.1  # 1000x the tolerance above


def test_trainable_parameters_change_and_frozen_ones_do_not(runs, tiny_model_dir, sft_adapter):
    from safetensors.torch import load_file

    base = load_file(str(tiny_model_dir / "model.safetensors"))
    # LoRA from the base: lora_B starts at zero and moved; the base weights are the file's
    lora = plain_model(runs["lora"][1].checkpoint, tiny_model_dir).state_dict()
    lora_b = [k for k in lora if "lora_B" in k]
    assert lora_b and all(lora[k].abs().sum() > 0 for k in lora_b)
    frozen = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(lora[f"base_model.model.{frozen}".replace(".weight", ".base_layer.weight")], base[frozen])
    # from the SFT adapter: its copy trained, same modules and rank; the base untouched
    sft_weights = load_file(str(sft_adapter / "adapter_model.safetensors"))
    dpo_weights = load_file(str(runs["sft-adapter"][1].checkpoint / "adapter_model.safetensors"))
    assert dpo_weights.keys() == sft_weights.keys()  # a plain adapter: no reference copy saved
    assert any(not torch.equal(dpo_weights[k], sft_weights[k]) for k in sft_weights)
    # full: every block moved
    full = plain_model(runs["full"][1].checkpoint, None).state_dict()
    for key in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert not torch.equal(full[key], base[key]), key


@pytest.mark.parametrize("layout", ["lora", "sft-adapter", "full"])
def test_reference_stays_fixed_and_starts_equal_to_the_policy(data, tiny_model_dir, sft_adapter, tmp_path, layout):
    from transformers import TrainingArguments

    from rlhf_stack import modeling
    from rlhf_stack.dpo.functional import LOSSES
    from rlhf_stack.dpo.models import REF, build_policy, decoder
    from rlhf_stack.dpo.trainer import RankingDPOTrainer, completion_logprobs

    path = sft_adapter if layout == "sft-adapter" else tiny_model_dir
    cfg = make_cfg(data, path, tmp_path / "out", "full" if layout == "full" else "lora")
    tokenizer = modeling.load_tokenizer(str(path))
    items, _ = encode_preferences(keyword_rankings(8, 0, seed=0), tokenizer, 64)
    model, reference, _ = build_policy(cfg.policy)
    ref_module = reference.ref_model or model
    frozen = {n: p.detach().clone() for n, p in ref_module.named_parameters()
              if reference.ref_model is not None or f".{REF}." in n or "lora_" not in n}
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none", max_steps=3,
                             per_device_train_batch_size=4, learning_rate=5e-3, save_strategy="no",
                             label_names=["ranks"], remove_unused_columns=False)
    trainer = RankingDPOTrainer(model=model, args=args, train_dataset=items, data_collator=PreferenceCollator(3),
                                objective=partial_loss(LOSSES["sigmoid"], 0.5), reference=reference, beta=0.5)
    batch = PreferenceCollator(tokenizer.pad_token_id)(items)

    def ref_logprobs():
        with torch.no_grad(), reference.active(model) as ref:
            return completion_logprobs(ref, batch, prefix_model=decoder(ref))

    before = ref_logprobs()
    with torch.no_grad():
        _, out = trainer.compute_loss(model, batch, return_outputs=True)
    assert out["logratios"].abs().max() < 1e-6  # the policy starts as the reference
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(f".{REF}." in n for n in trainable)
    trainer.train()
    assert torch.equal(ref_logprobs(), before)
    for name, param in ref_module.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    moved = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert moved and all(p.requires_grad for n, p in model.named_parameters() if n in trainable)


def partial_loss(loss, beta):
    return lambda logratios, ranks: loss(logratios, ranks, beta)


def test_resume_from_a_checkpoint(data, sft_adapter, tmp_path):
    cfg = make_cfg(data, sft_adapter, tmp_path / "dpo", "lora", keep_checkpoints=True,
                   train={"max_steps": 2, "eval_every_steps": 1})
    first = train_dpo(cfg)
    assert first.metrics["resumed_from"] is None
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 4})})
    second = train_dpo(longer)
    assert second.metrics["resumed_from"].endswith("checkpoint-2") and second.metrics["steps"] == 4
    assert second.metrics["models"]["reference"] == "sft-adapter-copy"


def test_gradient_checkpointing_turns_prompt_sharing_off(data, tiny_model_dir, tmp_path):
    cfg = make_cfg(data, tiny_model_dir, tmp_path / "dpo", "lora", policy={"gradient_checkpointing": True},
                   train={"max_steps": 1, "eval_every_steps": None})
    assert cfg.share_prompt and not cfg.shares_prompt
    result = train_dpo(cfg)
    assert result.metrics["share_prompt"] is False and math.isfinite(result.metrics["train_loss"])


def test_config_errors_name_the_key(data, tiny_model_dir, tmp_path):
    base = {"policy": {"name_or_path": str(tiny_model_dir)}, "data": {"path": str(data["train"])},
            "output_dir": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match="unknown key 'betas'"):
        load_config(DPOConfig, {**base, "betas": 0.1})
    with pytest.raises(ConfigError, match="beta: Input should be greater than 0"):
        load_config(DPOConfig, {**base, "beta": 0})
    with pytest.raises(ConfigError, match="loss: Input should be 'sigmoid', 'ipo' or 'plackett_luce'"):
        load_config(DPOConfig, {**base, "loss": "hinge"})
    with pytest.raises(ConfigError, match="max_length: Input should be greater than or equal to 1"):
        load_config(DPOConfig, {**base, "max_length": 0})
    with pytest.raises(ConfigError, match="missing required key 'policy'"):
        load_config(DPOConfig, {k: v for k, v in base.items() if k != "policy"})
    missing = load_config(DPOConfig, {**base, "policy": {"name_or_path": str(tmp_path / "no-sft")}})
    with pytest.raises(ConfigError, match="policy.name_or_path: .*run the SFT stage first"):
        train_dpo(missing)
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are known to be good


def test_labelers_of_one_completion_set_share_its_pass_with_the_same_loss_and_gradients(data, tiny_model_dir,
                                                                                          tmp_path):
    """group_labelers: two rankings of the same prompt and completions get one log-probability per
    completion under the policy and the reference; the loss and gradients equal those of the
    rankings as separate examples, with and without prompt sharing, for a pairwise and the
    listwise loss. The same completions in another order are another set."""
    from transformers import TrainingArguments

    from rlhf_stack import modeling
    from rlhf_stack.dpo.functional import LOSSES
    from rlhf_stack.dpo.models import build_policy
    from rlhf_stack.dpo.trainer import RankingDPOTrainer
    from rlhf_stack.reward.batching import rankings_of

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    completions = ["The red apple.", "A grey stone, heavy.", "The box.", "Nothing at all here."]
    rows = [{"prompt": "Q1: name a fruit.", "completions": completions, "ranks": [1, 2, 4, 3]},
            {"prompt": "Q2?", "completions": ["a b", "c"], "ranks": [2, 1]},
            {"prompt": "Q1: name a fruit.", "completions": completions, "ranks": [2, 1, 3, 3]},
            {"prompt": "Q1: name a fruit.", "completions": completions[::-1], "ranks": [1, 2, 3, 4]}]
    grouped, _ = encode_preferences(rows, tokenizer, 64, group_labelers=True)
    separate, _ = encode_preferences(rows, tokenizer, 64)
    assert [rankings_of(item) for item in grouped] == [[[1, 2, 4, 3], [2, 1, 3, 3]], [[2, 1]], [[1, 2, 3, 4]]]
    assert [item["prompt_lengths"] for item in grouped] == [separate[n]["prompt_lengths"] for n in (0, 1, 3)]
    model, reference, _ = build_policy(make_cfg(data, tiny_model_dir, tmp_path / "out", "lora").policy)
    with torch.no_grad():  # move the policy off its reference: a ranking paired with wrong log-ratios would show
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none", label_names=["ranks"],
                             remove_unused_columns=False)
    for loss in ("sigmoid", "plackett_luce"):
        trainer = RankingDPOTrainer(model=model, args=args, train_dataset=separate, data_collator=PreferenceCollator(3),
                                    objective=partial_loss(LOSSES[loss], 0.5), reference=reference, beta=0.5)
        results = {}
        for items in (separate, grouped):
            for share in (False, True):
                batch = PreferenceCollator(tokenizer.pad_token_id, share_prompt=share)(items)
                assert batch["input_ids"].shape[0] == (14 if items is separate else 10)
                model.zero_grad()
                value = trainer.compute_loss(model, batch)
                value.backward()
                results[items is grouped, share] = (float(value), {n: p.grad.clone() for n, p in model.named_parameters()
                                                                    if p.grad is not None})
        base_value, base_grads = results[False, False]
        assert base_grads
        for key, (value, grads) in results.items():
            assert value == pytest.approx(base_value, rel=1e-5), (loss, key)
            for name, grad in grads.items():
                assert torch.allclose(grad, base_grads[name], atol=1e-5, rtol=1e-4), (loss, key, name)


def test_group_labelers_trains_on_completion_sets(data, tiny_model_dir, tmp_path):
    twice = keyword_rankings(6, 0, seed=0)
    twice += [{**row, "ranks": list(reversed(row["ranks"])), "annotator": "b"} for row in twice]
    grouped_data = {**data, "train": write_jsonl(tmp_path / "train.jsonl", twice)}
    cfg = make_cfg(grouped_data, tiny_model_dir, tmp_path / "dpo", "lora", group_labelers=True,
                   train={"max_steps": 2, "batch_size": 2, "eval_every_steps": None})
    metrics = train_dpo(cfg).metrics
    assert (metrics["n_train"], metrics["n_train_sets"], metrics["n_eval"], metrics["n_eval_sets"]) == (12, 6, 8, 8)
    assert math.isfinite(metrics["train_loss"])
