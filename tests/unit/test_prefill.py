"""The planned prompt pass (ppo/prefill.py): the shared start once, each distinct prompt's rest
unpadded, the same cache, samples and log pi as one padded pass."""

from types import SimpleNamespace

import pytest
import torch

from rlhf_stack.ppo.prefill import PromptPlan, _passes, assemble, plan_prompts, prefill
from rlhf_stack.ppo.rollout import left_pad, truncate_at_eos
from rlhf_stack.ppo.trunk import position_ids_from_mask


def test_passes_trade_padding_against_the_cost_of_a_pass():
    # rests of 1, 2 and 30 tokens at 16 rows a pass: one pass costs 16 + 3 x 30 = 106, each alone
    # 16 + 1 + 16 + 2 + 16 + 30 = 81, the two short together 16 + 2 x 2 + 16 + 30 = 66 (the least)
    assert _passes([[1] * 30, [1], [1, 1]], pass_cost=16) == [[1, 2], [0]]
    # passes cost nothing: each length alone; cost dominates: one pass; empty rests run in none
    assert _passes([[1] * 3, [1], [1, 1], []], pass_cost=0) == [[1], [2], [0]]
    assert _passes([[1] * 3, [1], [1, 1], []], pass_cost=1000) == [[1, 2, 0]]


def test_plan_finds_the_shared_start_and_each_distinct_prompt():
    model = SimpleNamespace(config=_tiny_config())
    ids, mask = left_pad([[3, 4, 5, 6], [3, 4, 5, 6], [3, 4, 9], [3, 4, 9]], 0, torch.device("cpu"))
    plan = plan_prompts(model, ids, mask, group=2)
    # the last token of each prompt is generate()'s; [3, 4] starts both; the cache spans width 3
    assert (plan.width, plan.prefix, plan.rests, plan.n_chunks) == (3, [3, 4], [[5], []], 2)
    assert plan_prompts(model, ids[:, -1:], mask[:, -1:], group=2) is None  # one-token prompts
    # no shared start: no prefix pass
    assert plan_prompts(model, *left_pad([[3, 4], [5, 6]], 0, torch.device("cpu"))).prefix == []


def test_plan_refuses_caches_it_cannot_lay_out():
    from transformers import MistralConfig

    sliding = MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, sliding_window=4)
    ids, mask = left_pad([[3, 4, 5], [3, 4]], 0, torch.device("cpu"))
    assert plan_prompts(SimpleNamespace(config=sliding), ids, mask) is None


def test_assemble_left_pads_prefix_and_rests():
    plan = PromptPlan(width=5, group=1, prefix=[1, 2], rests=[[7, 8, 9], [7]], passes=[[1, 0]])
    prefix = torch.tensor([[10.0, 20.0]])  # (1, p)
    one_pass = torch.tensor([[0.0, 0.0, 71.0], [70.0, 80.0, 90.0]])  # rows in pass order, rests right-aligned
    out = assemble(plan, [prefix, one_pass], dim=1)
    assert out.tolist() == [[10, 20, 70, 80, 90], [0, 0, 10, 20, 71]]


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("start", ["", "Question: "])
def test_planned_prefill_equals_the_padded_pass(tiny_model_dir, tiny_causal_lm, lora, start):
    """The cache on every unpadded column and the next-token logits equal those of one padded
    pass over the batch, with and without a shared start, on a plain and a LoRA model."""
    from transformers import AutoTokenizer, DynamicCache

    model, tok = tiny_causal_lm(lora), AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tok.encode(start + t) for t in ("hello there you fine people", "hi", "what now then", "hi")]
    ids, mask = left_pad(prompts, tok.pad_token_id, torch.device("cpu"))
    plan = plan_prompts(model, ids, mask)
    assert plan is not None and (len(plan.prefix) > 2) == bool(start)
    with torch.no_grad():
        padded = DynamicCache(config=model.config)
        full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), cache=padded,
                     use_cache=True).logits[:, -1]
        cache = prefill(model, plan, ids.device)
        last = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=position_ids_from_mask(mask)[:, -1:],
                     cache=cache, use_cache=True).logits[:, -1]
    keep = mask[:, :-1].bool()
    for got, want in zip(cache.layers, padded.layers, strict=True):
        width = got.keys.shape[2] - 1  # the cache now holds the last token too
        torch.testing.assert_close(got.keys[:, :, :width].transpose(1, 2)[keep],
                                   want.keys[:, :, :width].transpose(1, 2)[keep], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values[:, :, :width].transpose(1, 2)[keep],
                                   want.values[:, :, :width].transpose(1, 2)[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group", [1, 3])
def test_generate_samples_what_the_padded_pass_samples(tiny_model_dir, tiny_causal_lm, group, monkeypatch):
    """generate() with the planned prompt pass draws the same tokens and records the same log pi
    as with one padded pass (each prompt once, `prefill_groups`), with the same draws."""
    from transformers import AutoTokenizer, GenerationConfig

    from rlhf_stack.ppo import rollout
    from rlhf_stack.ppo.sampling import RolloutSampler

    model, tok = tiny_causal_lm(lora=True), AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tok.encode("Say: " + t) for t in ("hello there you fine people", "hi", "what now then")]
    ids, mask = left_pad([p for p in prompts for _ in range(group)], tok.pad_token_id, torch.device("cpu"))
    gen = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = {}
    for planned in (True, False):
        if not planned:
            monkeypatch.setattr(rollout, "plan_prompts", lambda *args: None)
        sampler = RolloutSampler(record=True, seed=11, rows=(0, len(ids)))
        raw = rollout.generate(model, ids, mask, gen, sampler=sampler, group=group)
        response, response_mask, _ = truncate_at_eos(raw, tok.eos_token_id, tok.pad_token_id)
        out[planned] = response, sampler.result(response)[0] * response_mask
    assert torch.equal(out[True][0], out[False][0]) and out[True][0].shape[1] > 1
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-5)


def _tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1)


def test_common_prefix_length():
    from rlhf_stack.ppo.prefill import common_prefix_length

    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1, 2], [1, 2]]) == 2  # one sequence may be the whole shared start
    assert common_prefix_length([[5, 1], [1, 5]]) == 0
    assert common_prefix_length([[1, 2, 3]]) == 3 and common_prefix_length([]) == 0
