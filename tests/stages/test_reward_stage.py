"""Stage 2 on the tiny model: every tuning method trains, reloads with plain transformers/peft,
bad rankings fail with path:line, resume, LoRA init from an SFT adapter, micro-batching."""

import json
import math

import pytest
import torch

from rlhf_stack.config import load_config
from rlhf_stack.data import prompt_messages
from rlhf_stack.errors import ConfigError, DataError
from rlhf_stack.reward.batching import RankingCollator, encode_conversation
from rlhf_stack.reward.scorer import RewardScorer
from rlhf_stack.reward.stage import RewardConfig, load_reward_model, make_objective, train_reward
from rlhf_stack.reward.trainer import RankingTrainer
from tests.conftest import write_jsonl

COMPLETIONS = ["Apple.", "Banana is a fruit.", "no no no no", "I do not know."]
PROMPTS = [f"Question {i}: name a fruit." for i in range(6)]


def ranking_rows(n: int, start: int = 0) -> list[dict]:
    return [{"prompt": f"Question {i}: name a fruit.", "completions": COMPLETIONS, "ranks": [1, 2, 4, 3]}
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_data")
    tied = [{"prompt": "All equal?", "completions": ["yes", "no"], "ranks": [1, 1]},
            {"prompt": "Also equal?", "completions": ["a", "b", "c"], "ranks": [1, 1, 1]}]
    pairwise = [{"prompt": "Pick one.", "chosen": "Apple.", "rejected": "no no no no"}]  # TRL row = K=2
    train = write_jsonl(root / "train.jsonl", ranking_rows(9) + tied + pairwise)
    held = write_jsonl(root / "eval.jsonl", ranking_rows(4, start=100))
    demos = write_jsonl(root / "demos.jsonl", [{"prompt": f"Say fruit {i}.", "response": "Apple."} for i in range(5)])
    return {"train": train, "eval": held, "demos": demos, "root": root}


def make_cfg(data, tiny_model_dir, out, tuning, **extra) -> RewardConfig:
    train = {"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "warmup_ratio": 0.0,
             **extra.pop("train", {})}
    model = {"name_or_path": str(tiny_model_dir), "tuning": tuning, "freeze_trainable_layers": 1,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, **extra.pop("model", {})}
    return load_config(RewardConfig, {"model": model, "data": {"path": str(data["train"]), "eval_path": str(data["eval"])},
                                      "train": train, "output_dir": str(out), "max_length": 64, **extra})


def initial_state(cfg: RewardConfig) -> dict[str, torch.Tensor]:
    """The model the stage starts from (same seed -> same random score head), by plain parameter name."""
    from transformers import set_seed

    from rlhf_stack import modeling

    set_seed(cfg.train.seed)
    model = load_reward_model(cfg, modeling.load_tokenizer(cfg.model.name_or_path))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def plain_reload(checkpoint, tiny_model_dir):
    """The checkpoint opened with transformers (+ peft for an adapter) only, as any HF user would."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if (checkpoint / "adapter_config.json").is_file():
        from peft import PeftModel

        base_path = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
        model = PeftModel.from_pretrained(base, checkpoint)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def plain_scores(model, tokenizer, prompts, responses) -> list[float]:
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        ids = tokenizer.apply_chat_template(prompt_messages(prompt, response), tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return out


@pytest.fixture(scope="module")
def runs(data, tiny_model_dir, tmp_path_factory):
    """One short training per tuning method (shared by the tests below)."""
    root = tmp_path_factory.mktemp("reward_runs")
    cfgs = {
        "lora": make_cfg(data, tiny_model_dir, root / "lora", "lora", normalize_with=str(data["demos"]),
                         center_coef=0.01, margin=0.1),
        "full": make_cfg(data, tiny_model_dir, root / "full", "full", train={"learning_rate": 1e-3},
                         normalize_with=str(data["demos"])),
        "freeze": make_cfg(data, tiny_model_dir, root / "freeze", "freeze", loss="listwise",
                           micro_batch_completions=5),
    }
    out = {}
    for name, cfg in cfgs.items():
        before = initial_state(cfg)
        out[name] = (cfg, train_reward(cfg), before)
    return out


@pytest.mark.parametrize("method", ["lora", "full", "freeze"])
def test_smoke_each_tuning_method(runs, method):
    cfg, result, _ = runs[method]
    m = result.metrics
    assert math.isfinite(m["train_loss"]) and m["train_loss"] > 0
    assert m["steps"] == 3 and m["n_train"] == 10 and m["n_eval"] == 4
    assert m["n_all_tied_skipped"] == 2  # kept out of training, counted
    for key in ("eval_pairwise_accuracy", "eval_top1_accuracy", "eval_kendall_tau", "eval_f1", "eval_ece"):
        assert key in m and (math.isnan(m[key]) or -1.0 <= m[key] <= 1.0), key
    info = json.loads((result.checkpoint / "stage.json").read_text())
    assert info["stage"] == "reward" and info["tuning"] == method
    assert info["reward_bias"] == m["bias"] and info["metrics"]["n_all_tied_skipped"] == 2
    log = (result.checkpoint / "logs" / "train_log.jsonl").read_text()
    assert "train_pairwise_accuracy" in log


def test_lora_trains_adapter_and_head_only(runs, tiny_model_dir):
    cfg, result, before = runs["lora"]
    model, _ = plain_reload(result.checkpoint, tiny_model_dir)
    after = model.state_dict()
    lora_b = [k for k in after if "lora_B" in k]
    assert lora_b and all(after[k].abs().sum() > 0 for k in lora_b)  # lora_B starts at zero
    head = next(k for k in after if k.endswith("score.modules_to_save.default.weight"))
    assert not torch.allclose(after[head], before[head])
    frozen = next(k for k in after if k.endswith("layers.0.mlp.up_proj.base_layer.weight"))
    assert torch.equal(after[frozen], before[frozen])


def test_full_trains_everything(runs):
    cfg, result, before = runs["full"]
    model, _ = plain_reload(result.checkpoint, None)
    after = model.state_dict()
    for key in ("score.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert not torch.allclose(after[key], before[key]), key


def test_freeze_trains_last_block_and_head_only(runs):
    cfg, result, before = runs["freeze"]
    model, _ = plain_reload(result.checkpoint, None)
    after = model.state_dict()
    for key in ("score.weight", "model.layers.1.mlp.up_proj.weight", "model.norm.weight"):
        assert not torch.allclose(after[key], before[key]), key
    for key in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"):
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("method", ["lora", "full"])
def test_checkpoint_reloads_with_plain_hf_and_matches_scorer(runs, tiny_model_dir, data, method):
    _, result, _ = runs[method]
    prompts = PROMPTS[:3] + [[{"role": "user", "content": "Name a fruit, please."}]]
    responses = ["Apple.", "no no no no", "Banana is a fruit, a long yellow one.", "Pear."]
    model, tokenizer = plain_reload(result.checkpoint, tiny_model_dir)
    expected = plain_scores(model, tokenizer, prompts, responses)
    raw = RewardScorer(result.checkpoint, device="cpu", batch_size=3, apply_bias=False).score(prompts, responses)
    assert raw == pytest.approx(expected, abs=1e-5)
    # the normalisation bias: demonstrations score mean 0 once it is added
    scorer = RewardScorer(result.checkpoint, device="cpu")
    assert scorer.bias == result.metrics["bias"] != 0.0
    assert scorer.score(prompts, responses) == pytest.approx([e + scorer.bias for e in expected], abs=1e-5)
    demos = [json.loads(line) for line in data["demos"].read_text().splitlines()]
    demo_scores = scorer.score_tensor([d["prompt"] for d in demos], [d["response"] for d in demos])
    assert abs(float(demo_scores.mean())) < 1e-5


@pytest.mark.parametrize("method", ["lora", "full"])
def test_responses_to_one_prompt_run_the_prompt_once_and_score_the_same(runs, tiny_model_dir, method, monkeypatch):
    """Repeated prompts (not adjacent, some alone) go through the prompt-sharing pass; the scores
    equal the plain per-sequence ones."""
    from rlhf_stack.reward import scorer as scorer_module

    _, result, _ = runs[method]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[1]]
    responses = ["Apple.", "Yes.", "A much longer answer about apples, pears and plums.", "Fine.", "", "No, not at all."]
    model, tokenizer = plain_reload(result.checkpoint, tiny_model_dir)
    expected = plain_scores(model, tokenizer, prompts, responses)
    shared_rows = []
    real = scorer_module.forward_scores_shared
    monkeypatch.setattr(scorer_module, "forward_scores_shared",
                        lambda *a, **k: shared_rows.append(len(a[4])) or real(*a, **k))
    scorer = RewardScorer(result.checkpoint, device="cpu", batch_size=2, apply_bias=False)
    assert scorer.score(prompts, responses) == pytest.approx(expected, abs=1e-5)
    assert sum(shared_rows) == 5  # PROMPTS[0] x 3 and PROMPTS[1] x 2 shared; PROMPTS[2] alone


def test_resume_from_a_checkpoint(data, tiny_model_dir, tmp_path):
    cfg = make_cfg(data, tiny_model_dir, tmp_path / "rm", "lora", keep_checkpoints=True,
                   train={"max_steps": 2, "eval_every_steps": 1, "early_stopping_patience": None})
    first = train_reward(cfg)
    assert first.metrics["resumed_from"] is None
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 4})})
    second = train_reward(longer)
    assert second.metrics["resumed_from"].endswith("checkpoint-2")
    assert second.metrics["steps"] == 4


def test_init_from_lora_sft_adapter_continues_it_on_the_original_base(data, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from rlhf_stack import modeling
    from rlhf_stack.config import ModelConfig

    sft_cfg = ModelConfig(name_or_path=str(tiny_model_dir), tuning="lora", lora={"r": 4, "alpha": 8})
    sft = modeling.apply_tuning(modeling.load_causal_lm(sft_cfg), sft_cfg, "CAUSAL_LM")
    torch.manual_seed(1)
    for name, param in sft.named_parameters():
        if "lora_B" in name:  # an adapter that has "learned" something
            param.data.normal_(0, 0.1)
    sft_dir = tmp_path / "sft"
    sft.save_pretrained(sft_dir)
    modeling.load_tokenizer(str(tiny_model_dir)).save_pretrained(sft_dir)
    sft_weights = {k: v.clone() for k, v in sft.state_dict().items() if "lora_" in k}

    cfg = make_cfg(data, tiny_model_dir, tmp_path / "rm", "lora", init_from=str(sft_dir),
                   model={"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "last_n_layers": 1}})
    result = train_reward(cfg)
    adapter = json.loads((result.checkpoint / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    base = AutoModelForSequenceClassification.from_pretrained(adapter["base_model_name_or_path"], num_labels=1)
    rm = PeftModel.from_pretrained(base, result.checkpoint).state_dict()
    for key, value in sft_weights.items():  # same parameter names: CausalLM and SeqCls both hold `.model`
        if ".layers.0." in key:  # below last_n_layers: kept exactly as the SFT adapter left it
            assert torch.equal(rm[key], value), key
    changed = [k for k in sft_weights if ".layers.1." in k and not torch.equal(rm[k], sft_weights[k])]
    assert changed  # the top block's adapter kept training
    assert result.metrics["steps"] == 3 and RewardScorer(result.checkpoint, device="cpu").score(["q"], ["a"])


def step_trainer(cfg: RewardConfig, tokenizer, tmp_path, head_std: float | None = None):
    """(model, RankingTrainer) on a freshly seeded model, for training_step on hand-made batches.
    head_std: redraw the score head that wide (scores far apart)."""
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = load_reward_model(cfg, tokenizer)
    if head_std is not None:
        with torch.no_grad():
            model.score.weight.normal_(0.0, head_std)
    trainer = RankingTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True,
                                                                 report_to="none"),
                             objective=make_objective(cfg), micro_batch_completions=None)
    trainer.current_gradient_accumulation_steps = 1
    return model, trainer


def loss_and_gradients(model, trainer, batch: dict, micro: int | None) -> tuple[float, dict]:
    """One training_step on `batch` (completions `micro` at a time): its loss and every gradient."""
    model.zero_grad()
    trainer.micro_batch_completions = micro
    value = trainer.training_step(model, dict(batch)).item()
    return value, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_prompt_sharing_and_micro_batching_give_the_same_loss_and_gradients(tiny_model_dir, tmp_path, data):
    from rlhf_stack import modeling
    from rlhf_stack.reward.batching import shared_prefix_length

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    rows = ranking_rows(2) + [{"prompt": "Short?", "completions": ["a b", "c"], "ranks": [2, 1]}]
    items = []
    for r in rows:
        seqs = [encode_conversation(tokenizer, r["prompt"], c, 64)[0] for c in r["completions"]]
        items.append({"input_ids": seqs, "ranks": r["ranks"],
                      "prefix_length": shared_prefix_length(seqs, tokenizer.pad_token_id)})
    assert all(item["prefix_length"] > 5 for item in items)  # system-less ChatML: the user turn is shared
    for loss in ("pairwise", "listwise"):
        model, trainer = step_trainer(make_cfg(data, tiny_model_dir, tmp_path / loss, "full", loss=loss), tokenizer,
                                      tmp_path)
        results = {}
        for share in (False, True):
            batch = RankingCollator(tokenizer.pad_token_id, share_prompt=share)(items)  # 4 + 4 + 2 completions
            assert ("owner" in batch) == share
            for micro in (None, 3):
                results[share, micro] = loss_and_gradients(model, trainer, batch, micro)
        base_value, base_grads = results[False, None]
        for key, (value, grads) in results.items():
            assert value == pytest.approx(base_value, abs=1e-6), key
            for name, grad in grads.items():
                assert torch.allclose(grad, base_grads[name], atol=1e-6, rtol=1e-4), (loss, key, name)


def test_labelers_of_one_completion_set_share_its_pass_with_the_same_loss_and_gradients(data, tiny_model_dir, tmp_path):
    """group_labelers: two rankings of the same prompt and completions score those completions once;
    loss and gradients equal those of the rankings as separate examples (with and without prompt
    sharing and gradient caching). The same completions in another order are another set."""
    from rlhf_stack import modeling
    from rlhf_stack.reward.batching import encode_rankings, rankings_of

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    rows = [{"prompt": "Q1: name a fruit.", "completions": COMPLETIONS, "ranks": [1, 2, 4, 3]},
            {"prompt": "Q2?", "completions": ["a b", "c"], "ranks": [2, 1]},
            {"prompt": "Q1: name a fruit.", "completions": COMPLETIONS, "ranks": [2, 1, 3, 3]},
            {"prompt": "Q1: name a fruit.", "completions": COMPLETIONS[::-1], "ranks": [1, 2, 3, 4]}]
    grouped, _ = encode_rankings(rows, tokenizer, 64, group_labelers=True)
    separate, _ = encode_rankings(rows, tokenizer, 64)
    assert [rankings_of(item) for item in grouped] == [[[1, 2, 4, 3], [2, 1, 3, 3]], [[2, 1]], [[1, 2, 3, 4]]]
    assert grouped[0]["n_pairs"] == 6 + 5 and len(separate) == 4
    for loss in ("pairwise", "listwise"):
        cfg = make_cfg(data, tiny_model_dir, tmp_path / loss, "full", loss=loss, center_coef=0.1)
        # scores far apart: a ranking paired with the wrong scores would show
        model, trainer = step_trainer(cfg, tokenizer, tmp_path, head_std=3.0)
        results = {}
        for items in (separate, grouped):
            for share in (False, True):
                batch = RankingCollator(tokenizer.pad_token_id, share_prompt=share)(items)
                assert batch["input_ids"].shape[0] == (14 if items is separate else 10)
                assert batch["ranks"].shape == (4, 4)
                for micro in (None, 3):
                    results[items is grouped, share, micro] = loss_and_gradients(model, trainer, batch, micro)
        base_value, base_grads = results[False, False, None]
        for key, (value, grads) in results.items():
            assert value == pytest.approx(base_value, rel=1e-5), (loss, key)
            for name, grad in grads.items():
                assert torch.allclose(grad, base_grads[name], atol=1e-5, rtol=1e-4), (loss, key, name)


def test_group_labelers_trains_on_completion_sets(data, tiny_model_dir, tmp_path):
    twice = ranking_rows(4) + [{**row, "ranks": [2, 1, 3, 4], "annotator": "b"} for row in ranking_rows(4)]
    grouped_data = {**data, "train": write_jsonl(tmp_path / "train.jsonl", twice)}
    cfg = make_cfg(grouped_data, tiny_model_dir, tmp_path / "rm", "lora", group_labelers=True,
                   train={"max_steps": 2, "batch_size": 2})
    metrics = train_reward(cfg).metrics
    assert (metrics["n_train"], metrics["n_train_sets"], metrics["n_eval"], metrics["n_eval_sets"]) == (8, 4, 4, 4)
    assert metrics["n_train_pairs"] == 8 * 6 and math.isfinite(metrics["train_loss"])


def test_off_prompt_negatives_join_the_training_rankings_only(data, tiny_model_dir, tmp_path):
    rows = [{"prompt": f"Question {i}: name a fruit.", "completions": [f"Apple {i}.", f"Pear {i}.", f"Rock {i}."],
             "ranks": [1, 2, 3]} for i in range(6)]
    rows += [{**row, "ranks": [2, 1, 3], "annotator": "b"} for row in rows]
    negatives_data = {**data, "train": write_jsonl(tmp_path / "train.jsonl", rows)}
    cfg = make_cfg(negatives_data, tiny_model_dir, tmp_path / "rm", "lora", group_labelers=True, off_prompt_negatives=2,
                   train={"max_steps": 2, "batch_size": 2})
    metrics = train_reward(cfg).metrics
    # 6 completion sets of K = 3 + 2; each of the 12 rankings: 3 own pairs + 3 x 2 against the negatives
    assert (metrics["n_train"], metrics["n_train_sets"], metrics["mean_k"]) == (12, 6, 5)
    assert metrics["n_train_pairs"] == 12 * (3 + 6) and metrics["off_prompt_negatives"] == 2
    assert metrics["n_eval"] == 4 and 0 <= metrics["eval_off_prompt_accuracy"] <= 1
    one_prompt = {**data, "train": write_jsonl(tmp_path / "one.jsonl", rows[:1])}
    with pytest.raises(ConfigError, match="off_prompt_negatives: .*at least 2 different prompts"):
        train_reward(make_cfg(one_prompt, tiny_model_dir, tmp_path / "rm1", "lora", off_prompt_negatives=1))


def test_a_batch_shares_the_prompt_only_when_every_ranking_shares_one():
    # The second ranking's sequences start differently (a prompt cut by max_length): sharing would
    # strip the first ranking's prompt with nowhere to put it, so every completion goes in whole.
    items = [{"input_ids": [[5, 6, 7, 8], [5, 6, 9]], "ranks": [1, 2], "prefix_length": 2},
             {"input_ids": [[10, 11], [12, 13]], "ranks": [1, 2], "prefix_length": 0}]
    batch = RankingCollator(pad_token_id=3, share_prompt=True)(items)
    assert "owner" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 9, 3], [10, 11, 3, 3], [12, 13, 3, 3]]
    shared = RankingCollator(pad_token_id=3, share_prompt=True)(items[:1])
    assert shared["prefix_ids"].tolist() == [[5, 6]] and shared["input_ids"].tolist() == [[7, 8], [9, 3]]


def test_gradient_checkpointing_trains_with_the_prompt_encoded_in_full(data, tiny_model_dir, tmp_path):
    # transformers drops the key/value cache under gradient checkpointing while training, so the
    # shared-prompt pass has no cache to reuse: the stage then encodes every sequence whole.
    cfg = make_cfg(data, tiny_model_dir, tmp_path / "rm", "full", train={"max_steps": 1},
                   model={"gradient_checkpointing": True})
    assert cfg.share_prompt and not cfg.shares_prompt
    result = train_reward(cfg)
    assert math.isfinite(result.metrics["train_loss"]) and result.metrics["steps"] == 1


# ---- bad input: every validation rule names path:line ----------------------------------------------

GOOD = {"prompt": "Name a fruit.", "completions": ["Apple.", "Rock."], "ranks": [1, 2]}


@pytest.mark.parametrize("bad_row, message", [
    ({"prompt": "p", "completions": ["only one"], "ranks": [1]}, "at least 2 completions"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 3]}, "not dense from 1"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]}, "not dense from 1"),
    ({"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 2]}, "3 completions but 2 ranks"),
    ({"prompt": "p", "completions": ["a", "   "], "ranks": [1, 2]}, "completion 1 is empty"),
    ({"prompt": "p", "completions": ["same", "same"], "ranks": [1, 2]}, "duplicate completions"),
    (GOOD, "duplicate of line 1"),
    ({"prompt": "", "completions": ["a", "b"], "ranks": [1, 2]}, "'prompt' is empty"),
    ({"prompt": "p", "chosen": "a"}, "'rejected'"),
])
def test_bad_rankings_fail_with_path_and_line(bad_row, message, tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "prompt": "Other."}, bad_row])
    cfg = load_config(RewardConfig, {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"path": str(path)},
                                     "output_dir": str(tmp_path / "out")})
    with pytest.raises(DataError) as err:
        train_reward(cfg)
    assert f"{path}:3: " in str(err.value) and message in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written before the data is known to be good


def test_only_tied_rankings_is_an_error(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "tied.jsonl", [{"prompt": f"p{i}", "completions": ["a", "b"], "ranks": [1, 1]}
                                                 for i in range(3)])
    cfg = load_config(RewardConfig, {"model": {"name_or_path": str(tiny_model_dir)},
                                     "data": {"path": str(path), "eval_fraction": 0}, "output_dir": str(tmp_path / "o")})
    with pytest.raises(DataError, match="no training ranking states a preference"):
        train_reward(cfg)


def test_config_errors(tmp_path, tiny_model_dir, rankings_file):
    base = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"path": str(rankings_file)},
            "output_dir": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match="unknown key 'losses'"):
        load_config(RewardConfig, {**base, "losses": "pairwise"})
    with pytest.raises(ConfigError, match="margin: .*margin applies to the pairwise loss only"):
        load_config(RewardConfig, {**base, "loss": "listwise", "margin": 0.5})
    for key, value in [("margin", -1), ("center_coef", -0.1), ("micro_batch_completions", 0), ("max_length", 0),
                       ("off_prompt_negatives", -1)]:
        with pytest.raises(ConfigError, match=f"{key}: .*must be >="):
            load_config(RewardConfig, {**base, key: value})
    with pytest.raises(ConfigError, match="init_from"):
        train_reward(load_config(RewardConfig, {**base, "init_from": str(tmp_path / "missing")}))
