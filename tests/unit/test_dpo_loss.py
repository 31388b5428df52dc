"""DPO's losses (rlhf_stack.dpo.functional) on hand-computed tensors and against a naive pair loop."""

import math

import pytest
import torch

from rlhf_stack.dpo.functional import (
    LOSSES,
    ipo_loss,
    mean_margin,
    plackett_luce_loss,
    sequence_logprobs,
    sigmoid_loss,
)


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def naive_kwise_dpo(logprobs, ref_logprobs, ranks, beta) -> float:
    """DPO written from the paper's eq. 7, one (winner, loser) pair at a time, in plain Python:
    per ranking the mean over pairs with rank_w < rank_l (ties and padding skipped), then the
    mean over rankings that hold a pair."""
    per_ranking = []
    for lp, ref, r in zip(logprobs, ref_logprobs, ranks, strict=True):
        losses = []
        for w in range(len(r)):
            for lose in range(len(r)):
                if 0 < r[w] < r[lose]:
                    h = beta * ((lp[w] - ref[w]) - (lp[lose] - ref[lose]))
                    losses.append(-math.log(1.0 / (1.0 + math.exp(-h))))
        if losses:
            per_ranking.append(sum(losses) / len(losses))
    return sum(per_ranking) / len(per_ranking)


def test_kwise_sigmoid_equals_a_naive_loop_over_pairs_with_ties_and_padding():
    torch.manual_seed(0)
    ranks = [[1, 2, 2, 3],  # K=4 with a tie: 5 pairs
             [2, 1, 3, 0],  # K=3 padded: 3 pairs
             [1, 2, 0, 0],  # K=2 padded: 1 pair
             [1, 1, 0, 0]]  # all tied: no pair, left out of the mean
    logprobs = -10 * torch.rand(4, 4, dtype=torch.float64)
    ref_logprobs = -10 * torch.rand(4, 4, dtype=torch.float64)
    for beta in (0.1, 0.5, 2.0):
        expected = naive_kwise_dpo(logprobs.tolist(), ref_logprobs.tolist(), ranks, beta)
        got = sigmoid_loss(logprobs - ref_logprobs, t(ranks, torch.long), beta)
        assert got.item() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_pairwise_by_hand():
    # one pair, beta 0.1: logratios (2, -1) -> -log sigmoid(0.1 * 3) = log(1 + e^-0.3) = log(1.740818) = 0.554355
    loss = sigmoid_loss(t([2.0, -1.0]), t([1, 2], torch.long), 0.1)
    assert loss.item() == pytest.approx(0.554355, abs=1e-6)


def test_plackett_luce_by_hand():
    # beta 0.5, ranking A: logratios (1, 0, -1), ranks (1, 2, 3) -> rewards (0.5, 0, -0.5)
    #   first pick from {0,1,2}: log(e^.5 + 1 + e^-.5) - 0.5 = log(3.255252) - 0.5 = 1.180270 - 0.5 = 0.680270
    #   second from {1,2}:       log(1 + e^-.5) - 0    = log(1.606531)            = 0.474077
    #   mean over the 2 choices: (0.680270 + 0.474077) / 2 = 0.577173
    # ranking B: logratios (2, 0, -2), ranks (1, 1, 2), rewards (1, 0, -1); the tied pair picks from the
    #   same set (Breslow): lse = log(e + 1 + e^-1) = log(4.086161) = 1.407606
    #   terms 1.407606 - 1 = 0.407606 and 1.407606 - 0 = 1.407606; mean 0.907606
    # batch: (0.577173 + 0.907606) / 2 = 0.742390
    logratios = t([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0]])
    ranks = t([[1, 2, 3], [1, 1, 2]], torch.long)
    assert plackett_luce_loss(logratios, ranks, 0.5).item() == pytest.approx(0.742390, abs=1e-6)


def test_plackett_luce_equals_sigmoid_for_one_pair():
    logratios, ranks = t([0.7, -0.2]), t([2, 1], torch.long)
    assert plackett_luce_loss(logratios, ranks, 0.3).item() == pytest.approx(sigmoid_loss(logratios, ranks, 0.3).item(),
                                                                              abs=1e-7)


def test_ipo_by_hand():
    # beta (tau) 0.25: target gap 1 / (2 * 0.25) = 2
    # ranking A: logratios (2, 0.5, 0), ranks (1, 2, 2): pairs (0,1): h = 1.5 -> (1.5 - 2)^2 = 0.25;
    #   (0,2): h = 2 -> 0; the tie (1,2) gives no pair; mean 0.125
    # ranking B (K=2, padded): logratios (0, 1), ranks (1, 2): h = -1 -> (-1 - 2)^2 = 9
    # batch: (0.125 + 9) / 2 = 4.5625
    logratios = t([[2.0, 0.5, 0.0], [0.0, 1.0, 5.0]])
    ranks = t([[1, 2, 2], [1, 2, 0]], torch.long)
    assert ipo_loss(logratios, ranks, 0.25).item() == pytest.approx(4.5625, abs=1e-6)


def test_ipo_gradient_is_zero_at_its_target_and_losses_keep_a_graph_without_pairs():
    logratios = t([1.0, 0.0]).requires_grad_()
    ipo_loss(logratios, t([1, 2], torch.long), 0.5).backward()  # gap 1 == 1 / (2 * 0.5)
    assert torch.equal(logratios.grad, torch.zeros(2))
    for loss in LOSSES.values():
        x = t([[0.3, 0.1]]).requires_grad_()
        value = loss(x, t([[1, 1]], torch.long), 0.1)  # a tie: nothing to learn
        value.backward()
        assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros(1, 2))


def test_sequence_logprobs_by_hand():
    # position 0: logits (0, 0, 0), label 1 -> log(1/3) = -1.098612
    # position 1: logits (ln 3, 0, 0), label 0 -> log(3 / 5) = -0.510826
    # position 2: masked out
    # sum: log(1/3 * 3/5) = log(1/5) = -1.609438
    logits = t([[[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0], [5.0, 0.0, 0.0]]])
    labels = t([[1, 0, 2]], torch.long)
    mask = t([[1, 1, 0]], torch.bool)
    assert sequence_logprobs(logits, labels, mask).item() == pytest.approx(-1.609438, abs=1e-6)


def test_mean_margin_by_hand():
    # rewards (1, 0.5, 0), ranks (1, 2, 2): pairs (0,1) gap 0.5 and (0,2) gap 1; the tie gives none -> 0.75
    # second ranking (0, 2), ranks (1, 2): gap -2. Pooled over the 3 pairs: (0.5 + 1 - 2) / 3 = -1/6
    rewards = t([[1.0, 0.5, 0.0], [0.0, 2.0, 0.0]])
    ranks = t([[1, 2, 2], [1, 2, 0]], torch.long)
    assert mean_margin(rewards[:1], ranks[:1]).item() == pytest.approx(0.75, abs=1e-7)
    assert mean_margin(rewards, ranks).item() == pytest.approx(-1 / 6, abs=1e-7)
