"""Hand-checked pieces of the PPO plumbing: EOS truncation, padding, data order, score processing."""

import pytest
import torch

from rlhf_stack.config import load_config
from rlhf_stack.ppo.control import RunningMoments
from rlhf_stack.ppo.data import IndexStream
from rlhf_stack.ppo.models import position_ids_from_mask
from rlhf_stack.ppo.rewards import process_scores
from rlhf_stack.ppo.rollout import Rollout, left_pad, truncate_at_eos

EOS, PAD = 2, 0


def test_truncate_at_eos_keeps_eos_and_pads_after():
    raw = torch.tensor([[5, 6, EOS, 7, 8],  # EOS at 2: keep 3 tokens
                        [5, EOS, EOS, 9, 9],  # first EOS counts
                        [5, 6, 7, 8, 9]])  # never stopped: all 5, has_eos False
    ids, mask, has_eos = truncate_at_eos(raw, EOS, PAD)
    assert ids.tolist() == [[5, 6, EOS, PAD, PAD], [5, EOS, PAD, PAD, PAD], [5, 6, 7, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False]
    # the width shrinks to the longest kept response
    ids, mask, _ = truncate_at_eos(torch.tensor([[EOS, 4, 4], [5, EOS, 4]]), EOS, PAD)
    assert ids.shape == (2, 2) and mask.tolist() == [[1, 0], [1, 1]]


def test_left_pad_and_positions_skip_padding():
    ids, mask = left_pad([[7, 8, 9], [4]], PAD, torch.device("cpu"))
    assert ids.tolist() == [[7, 8, 9], [PAD, PAD, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # generate() numbers real tokens from 0 whatever the padding; the training forward must agree
    full_mask = torch.cat([mask, torch.tensor([[1, 0], [1, 1]])], 1)
    assert position_ids_from_mask(full_mask).tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]


def test_rollout_trimmed_and_select():
    t = torch.arange(8.0).reshape(2, 4)
    rollout = Rollout(query_ids=torch.tensor([[PAD, 1, 2], [PAD, PAD, 3]]), query_mask=torch.tensor([[0, 1, 1], [0, 0, 1]]),
                      response_ids=torch.tensor([[4, 5, PAD, PAD], [6, PAD, PAD, PAD]]),
                      response_mask=torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 0]]), has_eos=torch.tensor([True, False]),
                      logprobs=t, ref_logprobs=t, values=t, entropy=t, scores=torch.tensor([1.0, 2.0]))
    trimmed = rollout.trimmed()
    assert trimmed.query_ids.tolist() == [[1, 2], [PAD, 3]]  # a column of padding in every row is dropped
    assert trimmed.response_ids.tolist() == [[4, 5], [6, PAD]] and trimmed.values.tolist() == [[0, 1], [4, 5]]
    assert trimmed.scores.tolist() == [1.0, 2.0]  # (b,) fields untouched
    assert trimmed.input_ids.tolist() == [[1, 2, 4, 5], [PAD, 3, 6, PAD]]
    one = rollout.select(torch.tensor([1]))
    assert one.response_ids.tolist() == [[6, PAD, PAD, PAD]] and one.scores.tolist() == [2.0]
    assert one.rewards is None


def test_index_stream_is_a_function_of_position():
    stream = IndexStream(5, seed=7)
    first_epoch = stream.take(0, 5)
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]  # each epoch is a permutation
    assert stream.take(3, 4) == first_epoch[3:] + stream.take(5, 2)  # a batch may straddle epochs
    assert IndexStream(5, seed=7).take(6, 3) == stream.take(6, 3)  # no hidden state: resume-safe
    assert sorted(stream.take(5, 5)) == [0, 1, 2, 3, 4] and stream.take(5, 5) != first_epoch


def cfg(**kw):
    from rlhf_stack.ppo import PPOConfig

    return load_config(PPOConfig, {"policy": {"name_or_path": "x"}, "prompts": {"path": "p.jsonl"}, **kw})


def test_process_scores_normalise_then_clip_then_penalise():
    raw = torch.tensor([1.0, 3.0, 5.0, 7.0])
    has_eos = torch.tensor([True, True, False, True])
    # none + clip 4 + penalty 0.5: [1, 3, min(5, 4) - 0.5, 4]
    out = process_scores(raw, has_eos, raw, cfg(score_clip=4.0, missing_eos_penalty=0.5), RunningMoments())
    assert out.tolist() == [1.0, 3.0, 3.5, 4.0]
    # running: mean 4, unbiased std sqrt(20/3) = 2.582; scores (-3, -1, 1, 3) / 2.582
    moments = RunningMoments()
    out = process_scores(raw, has_eos, raw, cfg(score_norm="running"), moments)
    std = (20 / 3) ** 0.5
    torch.testing.assert_close(out, torch.tensor([-3 / std, -1 / std, 1 / std, 3 / std]))
    assert moments.count == 4 and moments.mean == pytest.approx(4.0)


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_sampler_records_what_a_forward_pass_computes(tiny_model_dir, temperature, pack):
    """log pi_old and the entropy recorded while sampling equal what a full forward pass computes
    over the finished sequences (the pass the recording saves), padding and EOS included; also when
    sampling runs through oneDNN-packed weights (`ppo/packed.py`) and the pass does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlhf_stack.ppo import functional as PF
    from rlhf_stack.ppo.rollout import generate
    from rlhf_stack.ppo.sampling import RolloutSampler

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    query_ids, query_mask = left_pad([tok.encode("hello there you"), tok.encode("hi")], tok.pad_token_id,
                                     torch.device("cpu"))
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=12,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    sampler = RolloutSampler(record=True)
    raw = generate(model, query_ids, query_mask, gen, sampler=sampler, pack_weights=pack)
    response_ids, response_mask, _ = truncate_at_eos(raw, tok.eos_token_id, tok.pad_token_id)
    logprobs, entropy = sampler.result(response_ids)
    input_ids = torch.cat([query_ids, response_ids], 1)
    attention_mask = torch.cat([query_mask, response_mask.long()], 1)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask)).logits[:, query_ids.shape[1] - 1:-1]
    torch.testing.assert_close(logprobs * response_mask,
                               PF.logprobs_from_logits(logits, response_ids, temperature) * response_mask,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy * response_mask, PF.entropy_from_logits(logits, temperature) * response_mask,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_grouped_prefill_samples_what_the_ungrouped_call_samples(tiny_model_dir, lora):
    """generate(group=k): each prompt's pass runs once for its k samples (`prefill_groups`); the
    sampled tokens and the recorded log pi equal those of the plain call with the same draws, left
    padding included, on a plain model and on a LoRA-wrapped one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlhf_stack.ppo.rollout import generate, prefill_groups
    from rlhf_stack.ppo.sampling import RolloutSampler

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    k = 3
    prompts = [tok.encode("hello there you fine people"), tok.encode("hi"), tok.encode("what now then")]
    query_ids, query_mask = left_pad([p for p in prompts for _ in range(k)], tok.pad_token_id, torch.device("cpu"))
    gen = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = {}
    for group in (1, k):
        sampler = RolloutSampler(record=True, seed=11, rows=(0, len(prompts) * k))
        raw = generate(model, query_ids, query_mask, gen, sampler=sampler, group=group)
        ids, mask, _ = truncate_at_eos(raw, tok.eos_token_id, tok.pad_token_id)
        out[group] = ids, mask, sampler.result(ids)[0] * mask
    assert torch.equal(out[1][0], out[k][0]) and torch.equal(out[1][1], out[k][1])
    torch.testing.assert_close(out[1][2], out[k][2], atol=1e-5, rtol=1e-5)
    # the cache holds each prompt but its last token, once per row
    cache = prefill_groups(model, query_ids, query_mask, k)
    assert cache.get_seq_length() == query_ids.shape[1] - 1
    assert cache.layers[0].keys.shape[0] == query_ids.shape[0]


def test_rollout_sampler_draws_from_the_distribution():
    """The first token whose CDF passes u ~ U(0, 1) is a draw from p: empirical frequencies match
    p, tokens cut to -inf (top-k / top-p) are never drawn, and the output's argmax is the draw."""
    from rlhf_stack.ppo.sampling import RolloutSampler

    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    scores = torch.log(p).expand(40000, 5).clone()  # 40k independent draws in one batch
    sampler = RolloutSampler(record=True)
    out = sampler(None, scores)
    draws = out.argmax(-1)
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    # binomial standard error at p = 0.5 and n = 40k is 0.0025: 0.01 is four of them
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)
    assert freq[4] == 0 and bool((out.isinf().sum(-1) == 4).all())  # one finite score a row
    torch.testing.assert_close(sampler.logprobs[0], torch.log(p)[draws])
    # entropy of (0.5, 0.3, 0.15, 0.05) with the cut token counted 0, not NaN
    expected = float(-(p[:4] * p[:4].log()).sum())
    torch.testing.assert_close(sampler.entropies[0][:3], torch.full((3,), expected))


def test_sampling_processors_order_and_greedy_config():
    from transformers import GenerationConfig, TemperatureLogitsWarper, TopKLogitsWarper

    from rlhf_stack.ppo.sampling import RolloutSampler, sampling_processors

    sampler = RolloutSampler()
    procs, gen = sampling_processors(GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=1.0), sampler)
    assert [type(p) for p in procs] == [TemperatureLogitsWarper, TopKLogitsWarper, RolloutSampler]
    assert procs[-1] is sampler and gen.do_sample is False  # transformers' argmax picks the drawn token
    greedy = GenerationConfig(do_sample=False)
    assert sampling_processors(greedy)[1] is greedy and len(sampling_processors(greedy)[0]) == 0
