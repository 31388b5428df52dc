"""Hand-computed checks of rlhf_stack.ppo.functional and rlhf_stack.ppo.control.

Every expected value is written out with its arithmetic in a comment; the code under test is
the code the trainer runs.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.control import AdaptiveKLController, FixedKLController, RunningMoments


def close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual.float(), expected, atol=atol, rtol=1e-5)


# --- masked statistics -----------------------------------------------------------------------

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_sum_and_mean():
    # real entries 1, 2, 4: sum 7, mean 7/3; per row: sums (1+2, 4) = (3, 4), means (1.5, 4)
    close(PF.masked_sum(X, MASK), 7.0)
    close(PF.masked_mean(X, MASK), 7.0 / 3.0)
    close(PF.masked_sum(X, MASK, dim=1), [3.0, 4.0])
    close(PF.masked_mean(X, MASK, dim=1), [1.5, 4.0])
    # a bool mask means the same; a row with no real entries has mean 0, not NaN
    close(PF.masked_mean(X, MASK.bool()), 7.0 / 3.0)
    empty_row = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(PF.masked_mean(X, empty_row, dim=1), [1.0, 0.0])


def test_masked_var():
    # entries 1, 2, 4; mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9
    # biased: 42/9 / 3 = 14/9; unbiased: 42/9 / 2 = 7/3 (= torch.var([1, 2, 4]))
    close(PF.masked_var(X, MASK, unbiased=False), 14.0 / 9.0)
    close(PF.masked_var(X, MASK), 7.0 / 3.0)
    close(PF.masked_var(X, MASK), torch.tensor([1.0, 2.0, 4.0]).var())
    with pytest.raises(ValueError, match=">= 2 real entries"):
        PF.masked_var(X, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_masked_whiten_over_real_entries_only():
    # real entries 1..5: mean 3, unbiased var (4+1+0+1+4)/4 = 2.5; the 100s are padding
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    whitened = PF.masked_whiten(x, mask)
    s = math.sqrt(2.5)
    close(whitened, [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]], atol=1e-5)
    close(PF.masked_mean(whitened, mask), 0.0, atol=1e-6)
    close(PF.masked_var(whitened, mask), 1.0, atol=1e-5)
    # shift_mean=False (rewards): unit variance but the mean 3 is kept
    kept = PF.masked_whiten(x, mask, shift_mean=False)
    close(PF.masked_mean(kept, mask), 3.0, atol=1e-5)
    close(PF.masked_var(kept, mask), 1.0, atol=1e-5)
    close(kept * (1 - mask), torch.zeros_like(x))


# --- KL estimators ---------------------------------------------------------------------------


def test_kl_k1_and_k3_values():
    logprobs = torch.tensor([-1.0, -2.0])
    ref_logprobs = torch.tensor([-1.5, -1.0])
    # k1 = logprobs - ref = (-1 + 1.5, -2 + 1) = (0.5, -1)
    close(PF.kl_k1(logprobs, ref_logprobs), [0.5, -1.0])
    # log r = ref - logprobs = (-0.5, 1); k3 = (e^{log r} - 1) - log r
    #   = (e^-0.5 - 1 + 0.5, e - 1 - 1) = (0.106531, 0.718282)
    close(PF.kl_k3(logprobs, ref_logprobs), [math.exp(-0.5) - 0.5, math.e - 2.0])
    assert set(PF.KL_ESTIMATORS) == {"k1", "k3"}
    assert PF.KL_ESTIMATORS["k3"] is PF.kl_k3


def test_k3_non_negative_and_both_unbiased():
    generator = torch.Generator().manual_seed(0)
    logprobs = torch.randn(64, 16, generator=generator) * 3
    ref_logprobs = torch.randn(64, 16, generator=generator) * 3
    assert (PF.kl_k3(logprobs, ref_logprobs) >= 0).all()
    # Exact expectation over a 5-way categorical p (no sampling): sum_a p(a) k(a) must equal
    # KL(p || q) = sum_a p log(p/q) for both k1 and k3 (k3: sum q - 1 = 0 leaves the same KL).
    log_p = torch.log_softmax(torch.randn(5, generator=generator, dtype=torch.float64), 0)
    log_q = torch.log_softmax(torch.randn(5, generator=generator, dtype=torch.float64), 0)
    exact_kl = (log_p.exp() * (log_p - log_q)).sum()
    for estimator in (PF.kl_k1, PF.kl_k3):
        torch.testing.assert_close((log_p.exp() * estimator(log_p, log_q)).sum(), exact_kl)


# --- rewards ---------------------------------------------------------------------------------


def test_kl_penalized_rewards_score_on_last_real_token():
    scores = torch.tensor([10.0, 20.0])
    kl = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards = PF.kl_penalized_rewards(scores, kl, mask, kl_coef=0.1)
    # row 0 (3 real): -0.1*(1, 2, 3) = (-0.1, -0.2, -0.3), score on index 2: -0.3 + 10 = 9.7
    # row 1 (1 real): -0.1*4 + 20 = 19.6 at index 0; padding stays 0
    close(rewards, [[-0.1, -0.2, 9.7], [19.6, 0.0, 0.0]], atol=1e-5)
    with pytest.raises(ValueError, match="no real response token"):
        PF.kl_penalized_rewards(scores, kl, torch.tensor([[1, 0, 0], [0, 0, 0]]), kl_coef=0.1)


def test_missing_eos_penalty_subtracts_and_clip_scores():
    scores = torch.tensor([1.0, 2.0, 3.0])
    has_eos = torch.tensor([True, False, True])
    # only row 1 lacks EOS: 2 - 1 = 1
    close(PF.apply_missing_eos_penalty(scores, has_eos, penalty=1.0), [1.0, 1.0, 3.0])
    with pytest.raises(ValueError, match=">= 0"):
        PF.apply_missing_eos_penalty(scores, has_eos, penalty=-1.0)
    close(PF.clip_scores(torch.tensor([-5.0, 0.5, 7.0]), 2.0), [-2.0, 0.5, 2.0])


# --- GAE -------------------------------------------------------------------------------------


def test_gae_gamma1_lambda1_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = PF.gae(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    # row 0: reward-to-go (1+2+3, 2+3, 3) = (6, 5, 3); minus values -> (5.5, 4, 1.5)
    # row 1: last token is padding (its 9 and 7 ignored): to-go (3, 2) -> (2.5, 1, 0)
    close(advantages, [[5.5, 4.0, 1.5], [2.5, 1.0, 0.0]])
    close(returns, [[6.0, 5.0, 3.0], [3.0, 2.0, 0.0]])


def test_gae_gamma_half_lambda_half_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[1.0, 2.0, 3.0]])
    advantages, returns = PF.gae(rewards, values, torch.ones(1, 3), gamma=0.5, gae_lambda=0.5)
    # delta_2 = 2 + 0.5*0 - 3 = -1;          A_2 = -1
    # delta_1 = 0 + 0.5*3 - 2 = -0.5;        A_1 = -0.5 + 0.25*(-1)    = -0.75
    # delta_0 = 1 + 0.5*2 - 1 = 1;           A_0 = 1 + 0.25*(-0.75)    = 0.8125
    # returns = A + V = (1.8125, 1.25, 2)
    close(advantages, [[0.8125, -0.75, -1.0]])
    close(returns, [[1.8125, 1.25, 2.0]])


def test_gae_padding_is_zero_and_does_not_leak():
    # Garbage (50, 99) at the padded position must not bootstrap into the real tokens.
    rewards = torch.tensor([[1.0, 0.0, 50.0]])
    values = torch.tensor([[1.0, 2.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = PF.gae(rewards, values, mask, gamma=0.5, gae_lambda=0.5)
    # delta_1 = 0 + 0.5*0 - 2 = -2;  A_1 = -2
    # delta_0 = 1 + 0.5*2 - 1 = 1;   A_0 = 1 + 0.25*(-2) = 0.5;  returns (1.5, 0, 0)
    close(advantages, [[0.5, -2.0, 0.0]])
    close(returns, [[1.5, 0.0, 0.0]])


# --- losses ----------------------------------------------------------------------------------


def test_clipped_policy_loss_without_clipping():
    logprobs = torch.tensor([[-1.0, -2.0]])
    advantages = torch.tensor([[1.0, -2.0]])
    loss, stats = PF.clipped_policy_loss(logprobs, logprobs.clone(), advantages, torch.ones(1, 2), 0.2)
    # ratio 1 everywhere: loss = mean(-A) = mean(-1, 2) = 0.5; nothing clipped, no KL
    close(loss, 0.5)
    close(stats["clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)
    close(stats["ratio_mean"], 1.0)


def test_clipped_policy_loss_with_clipping():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.1, 3.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    old_logprobs = torch.full((1, 5), -1.0)
    logprobs = (old_logprobs + ratios.log()).requires_grad_()
    loss, stats = PF.clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    # token: unclipped -A*r, clipped -A*clip(r, 0.8, 1.2) -> max
    #   0: r=1.5, A=1:  -1.5 vs -1.2 -> -1.2 (clipped active)
    #   1: r=0.5, A=1:  -0.5 vs -0.8 -> -0.5
    #   2: r=0.5, A=-1:  0.5 vs  0.8 ->  0.8 (clipped active)
    #   3: r=1.1, A=2:  -2.2 vs -2.2 -> -2.2 (inside the range: not clipped)
    #   4: padding, ignored
    # loss = (-1.2 - 0.5 + 0.8 - 2.2) / 4 = -0.775; clipfrac = 2/4
    close(loss, -0.775, atol=1e-5)
    close(stats["clipfrac"], 0.5)
    close(stats["ratio_mean"], (1.5 + 0.5 + 0.5 + 1.1) / 4, atol=1e-5)
    # approx_kl = mean k3 = mean((r - 1) - log r) over the 4 real tokens
    k3 = [r - 1 - math.log(r) for r in (1.5, 0.5, 0.5, 1.1)]
    close(stats["approx_kl"], sum(k3) / 4, atol=1e-5)
    # clipped tokens get no gradient; d(-A*r)/dlogp = -A*r, over 4 tokens:
    # token 1: -1*0.5/4 = -0.125; token 3: -2*1.1/4 = -0.55
    loss.backward()
    close(logprobs.grad, [[0.0, -0.125, 0.0, -0.55, 0.0]], atol=1e-5)


# --- loss aggregation --------------------------------------------------------------------------

# row 0: 3 real tokens (1, 2, 3), row 1: 1 real token (4); the 100s are padding
LOSSES = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
LOSS_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


def test_loss_aggregations_by_hand():
    # token_mean: (1 + 2 + 3 + 4) / 4 = 2.5
    close(PF.token_mean(LOSSES, LOSS_MASK), 2.5)
    # sequence_mean: row means (1 + 2 + 3) / 3 = 2 and 4 / 1 = 4 -> (2 + 4) / 2 = 3
    close(PF.sequence_mean(LOSSES, LOSS_MASK), 3.0)
    # dr_grpo: token sum 10 / (2 responses * max_new_tokens 4) = 1.25; with max_new_tokens 10: 10 / 20 = 0.5
    close(PF.dr_grpo_mean(LOSSES, LOSS_MASK, max_new_tokens=4), 1.25)
    close(PF.dr_grpo_mean(LOSSES, LOSS_MASK, max_new_tokens=10), 0.5)
    # chosen once by name, as the trainer does
    close(PF.loss_aggregation("token_mean", 4)(LOSSES, LOSS_MASK), 2.5)
    close(PF.loss_aggregation("sequence_mean", 4)(LOSSES, LOSS_MASK), 3.0)
    close(PF.loss_aggregation("dr_grpo", 4)(LOSSES, LOSS_MASK), 1.25)


def test_loss_aggregations_weigh_tokens_differently():
    # d loss / d token (0 at padding):
    #   token_mean: 1/4 for every real token;
    #   sequence_mean: row 0 tokens 1 / (2 rows * 3 tokens) = 1/6, the lone token of row 1 1 / (2 * 1) = 1/2;
    #   dr_grpo (max_new_tokens 4): 1 / (2 * 4) = 1/8 for every real token, whatever its row's length.
    expected = {"token_mean": [[0.25, 0.25, 0.25, 0.0], [0.25, 0.0, 0.0, 0.0]],
                "sequence_mean": [[1 / 6, 1 / 6, 1 / 6, 0.0], [0.5, 0.0, 0.0, 0.0]],
                "dr_grpo": [[0.125, 0.125, 0.125, 0.0], [0.125, 0.0, 0.0, 0.0]]}
    for name, grad in expected.items():
        losses = LOSSES.clone().requires_grad_()
        PF.loss_aggregation(name, 4)(losses, LOSS_MASK).backward()
        close(losses.grad, grad)


def test_clipped_policy_loss_aggregates_with_the_given_function():
    # ratio 1 everywhere, so the per-token loss is -A: row 0 (-1, -2, -3), row 1 (-4)
    logprobs = torch.full((2, 4), -1.0)
    loss, stats = PF.clipped_policy_loss(logprobs, logprobs.clone(), LOSSES, LOSS_MASK, 0.2)
    close(loss, -2.5)  # default token_mean: -(1 + 2 + 3 + 4) / 4
    loss, stats_seq = PF.clipped_policy_loss(logprobs, logprobs.clone(), LOSSES, LOSS_MASK, 0.2, PF.sequence_mean)
    close(loss, -3.0)  # -(2 + 4) / 2
    loss, _ = PF.clipped_policy_loss(logprobs, logprobs.clone(), LOSSES, LOSS_MASK, 0.2,
                                     PF.loss_aggregation("dr_grpo", 4))
    close(loss, -1.25)  # -10 / (2 * 4)
    # the statistics stay token means whatever the loss aggregation
    assert stats.keys() == stats_seq.keys() and all(torch.equal(stats[k], stats_seq[k]) for k in stats)


def test_clipped_value_loss():
    values = torch.tensor([[1.0, 0.6, 0.0, 2.0, 40.0]])
    old_values = torch.full((1, 5), 0.5)
    returns = torch.tensor([[1.0, 2.0, -1.0, 0.0, -40.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = PF.clipped_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    # V_clip = 0.5 + clip(V - 0.5, -0.2, 0.2); losses (V-R)^2 vs (V_clip-R)^2 -> max
    #   0: V=1.0, Vc=0.7, R=1:   0    vs 0.09 -> 0.09 (clipped active)
    #   1: V=0.6, Vc=0.6, R=2:   1.96 vs 1.96 -> 1.96
    #   2: V=0.0, Vc=0.3, R=-1:  1    vs 1.69 -> 1.69 (clipped active)
    #   3: V=2.0, Vc=0.7, R=0:   4    vs 0.49 -> 4
    # loss = 0.5 * (0.09 + 1.96 + 1.69 + 4) / 4 = 0.9675; vf_clipfrac = 2/4
    close(loss, 0.9675, atol=1e-5)
    close(stats["vf_clipfrac"], 0.5)
    # values == old_values: nothing clipped, 0.5 * mean(1^2, 2^2) = 1.25
    same = torch.tensor([[1.0, 2.0]])
    loss, stats = PF.clipped_value_loss(same, same.clone(), torch.zeros(1, 2), torch.ones(1, 2), 0.2)
    close(loss, 1.25)
    close(stats["vf_clipfrac"], 0.0)


def test_lm_loss_matches_shifted_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 6), generator=generator)
    labels[0, :3] = -100  # prompt tokens ignored
    labels[1, 5] = -100  # padding ignored
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    close(PF.lm_loss(logits, labels), expected)
    # uniform logits: every kept token costs log V = log 11
    close(PF.lm_loss(torch.zeros(2, 6, 11), labels), math.log(11))
    close(PF.lm_loss(logits, torch.full((2, 6), -100)), 0.0)
    # from the used positions alone (the packed ptx pass): the same loss
    used = labels[:, 1:] != -100
    close(PF.token_lm_loss(logits[:, :-1][used], labels[:, 1:][used]), expected)
    close(PF.token_lm_loss(torch.zeros(0, 11), torch.zeros(0, dtype=torch.long)), 0.0)


# --- from logits -----------------------------------------------------------------------------


def test_entropy_from_logits():
    # uniform over V=7: log 7
    close(PF.entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    # p = (1/2, 1/4, 1/4): H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2
    logits = torch.tensor([[[math.log(0.5), math.log(0.25), math.log(0.25)]]])
    close(PF.entropy_from_logits(logits), [[1.5 * math.log(2)]])
    # temperature 2 halves the logits: ln(1/2)/2, ln(1/4)/2 -> p proportional to (1/sqrt2, 1/2, 1/2)
    z = 1 / 2**0.5 + 1.0
    p = torch.tensor([1 / 2**0.5, 0.5, 0.5]) / z
    close(PF.entropy_from_logits(logits, temperature=2.0), [[float(-(p * p.log()).sum())]])


def test_logprobs_from_logits():
    # row: p = (1/2, 1/4, 1/4) then uniform (1/3 each); tokens 1 and 2 -> (ln 1/4, ln 1/3)
    logits = torch.tensor([[[math.log(0.5), math.log(0.25), math.log(0.25)], [0.0, 0.0, 0.0]]])
    close(PF.logprobs_from_logits(logits, torch.tensor([[1, 2]])), [[math.log(0.25), math.log(1 / 3)]])
    # matches the full log_softmax + gather, returns float32 for bf16 input, and is differentiable
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, generator=generator, requires_grad=True)
    tokens = torch.randint(0, 9, (3, 4), generator=generator)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    got = PF.logprobs_from_logits(logits, tokens)
    close(got, expected.detach())
    got.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert PF.logprobs_from_logits(logits.detach().bfloat16(), tokens).dtype == torch.float32
    # temperature T scores softmax(logits / T), the distribution sampling drew from
    expected = torch.log_softmax(logits.detach() / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(PF.logprobs_from_logits(logits.detach(), tokens, temperature=0.7), expected)


# --- controllers and running moments ---------------------------------------------------------


def test_adaptive_kl_controller_moves_toward_target_with_clamp():
    # target 6, horizon 10000, n_steps 256
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=12.0, n_steps=256)
    # error = clip(12/6 - 1, -0.2, 0.2) = 0.2 (clamped from 1); 0.1 * (1 + 0.2*256/10000) = 0.100512
    assert controller.kl_coef == pytest.approx(0.100512)
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=3.0, n_steps=256)
    # error = clip(3/6 - 1) = -0.2 (clamped from -0.5); 0.1 * (1 - 0.00512) = 0.099488
    assert controller.kl_coef == pytest.approx(0.099488)
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=6.6, n_steps=256)
    # error = 6.6/6 - 1 = 0.1 (inside the clamp); 0.1 * (1 + 0.1*256/10000) = 0.100256
    assert controller.kl_coef == pytest.approx(0.100256)
    # resume: a fresh controller loaded from the state continues from the same kl_coef
    resumed = AdaptiveKLController(init_kl_coef=0.5, target=6.0, horizon=10000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.kl_coef == controller.kl_coef


def test_fixed_kl_controller_never_moves():
    controller = FixedKLController(kl_coef=0.05)
    controller.update(current_kl=100.0, n_steps=256)
    assert controller.kl_coef == 0.05
    other = FixedKLController(kl_coef=1.0)
    other.load_state_dict(controller.state_dict())
    assert other.kl_coef == 0.05


def test_running_moments_match_concatenated_batches():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=generator) * 2 + 3 for n in (3, 1, 5, 8)]
    moments = RunningMoments()
    for batch in batches:
        batch_mean, batch_std = moments.update(batch)
        assert batch_mean == pytest.approx(batch.double().mean().item())
        # one-element batch: std defined as 0.0 (torch.std would give NaN)
        expected_std = batch.double().std().item() if batch.numel() > 1 else 0.0
        assert batch_std == pytest.approx(expected_std)
    everything = torch.cat(batches).double()
    assert moments.count == 17
    assert moments.mean == pytest.approx(everything.mean().item())
    assert moments.std == pytest.approx(everything.std().item())
    # resume: state round-trips and further updates agree with an uninterrupted run
    resumed = RunningMoments()
    resumed.load_state_dict(moments.state_dict())
    extra = torch.tensor([10.0, -4.0])
    moments.update(extra)
    resumed.update(extra)
    assert resumed.state_dict() == pytest.approx(moments.state_dict())
    assert resumed.std == pytest.approx(torch.cat([everything, extra.double()]).std().item())
