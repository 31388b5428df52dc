"""The reward model's losses (rlhf_stack.reward.functional) on hand-computed tensors."""

import math

import pytest
import torch

from rlhf_stack.reward.batching import to_ranking_matrix
from rlhf_stack.reward.functional import (
    center_penalty,
    listwise_loss,
    pairwise_accuracy,
    preferred_pairs,
    ranking_loss,
)


def softplus_neg(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def test_pairwise_loss_k3_with_a_tie_by_hand():
    # scores (2, 1, 0), ranks (1, 2, 2): completions 1 and 2 tie, so the pairs are (0,1) and (0,2) only.
    # -log sigmoid(2-1) = log(1 + e^-1) = log(1.367879) = 0.313262
    # -log sigmoid(2-0) = log(1 + e^-2) = log(1.135335) = 0.126928
    # mean over the 2 pairs = (0.313262 + 0.126928) / 2 = 0.220095
    loss = ranking_loss(t([2.0, 1.0, 0.0]), t([1, 2, 2], torch.long))
    assert loss.item() == pytest.approx(0.220095, abs=1e-6)


def test_pairwise_loss_margin_scales_with_rank_gap():
    # ranks (1, 2, 2), margin 0.5: both pairs have rank gap 1, so m = 0.5 for each.
    # -log sigmoid(1 - 0.5) = log(1 + e^-0.5) = 0.474077 ; -log sigmoid(2 - 0.5) = log(1 + e^-1.5) = 0.201413
    # mean = 0.337745
    loss = ranking_loss(t([2.0, 1.0, 0.0]), t([1, 2, 2], torch.long), margin=0.5)
    assert loss.item() == pytest.approx(0.337745, abs=1e-6)
    # ranks (1, 2, 3): the (0,2) pair has gap 2 -> m = 1.0: pairs (0,1): 2-1-0.5, (0,2): 2-0-1.0, (1,2): 1-0-0.5
    loss3 = ranking_loss(t([2.0, 1.0, 0.0]), t([1, 2, 3], torch.long), margin=0.5)
    expected = (softplus_neg(0.5) + softplus_neg(1.0) + softplus_neg(0.5)) / 3
    assert loss3.item() == pytest.approx(expected, abs=1e-6)


def test_listwise_loss_k3_with_a_tie_by_hand():
    # Plackett-Luce, Breslow ties. scores (2, 1, 0), ranks (1, 2, 2):
    # completion 0 is picked from {0, 1, 2}: logsumexp(2, 1, 0) - 2 = log(e^2 + e + 1) - 2
    #   = log(7.389056 + 2.718282 + 1) - 2 = log(11.107338) - 2 = 2.407606 - 2 = 0.407606
    # completions 1, 2 form the worst tier: no choice left, no term. One term -> loss 0.407606.
    loss = listwise_loss(t([2.0, 1.0, 0.0]), t([1, 2, 2], torch.long))
    assert loss.item() == pytest.approx(0.407606, abs=1e-6)


def test_listwise_loss_tie_in_the_middle_by_hand():
    # scores (2, 1, 0.5, 0), ranks (1, 2, 2, 3)
    # i=0 from {0,1,2,3}: log(e^2 + e^1 + e^.5 + 1) - 2 = 2.546006 - 2   = 0.546006
    # i=1 from {1,2,3} (its tied peer 2 stays in the set): log(e + e^.5 + 1) - 1 = 1.680270 - 1 = 0.680270
    # i=2 from {1,2,3}: 1.680270 - 0.5 = 1.180270 ; i=3 is the worst tier: no term
    # mean of 3 terms = (0.546006 + 0.680270 + 1.180270) / 3 = 0.802182
    loss = listwise_loss(t([2.0, 1.0, 0.5, 0.0]), t([1, 2, 2, 3], torch.long))
    assert loss.item() == pytest.approx(0.802182, abs=1e-6)


def test_listwise_equals_pairwise_for_k2():
    scores, ranks = t([[0.3, 1.7], [2.0, -1.0]]), t([[2, 1], [1, 2]], torch.long)
    assert listwise_loss(scores, ranks).item() == pytest.approx(ranking_loss(scores, ranks).item(), abs=1e-6)


def test_batch_is_mean_over_rankings_with_padding():
    # ranking A (K=3) and ranking B (K=2, padded with rank 0 and a junk score)
    a_s, a_r = [2.0, 1.0, 0.0], [1, 2, 2]
    b_s, b_r = [0.0, 3.0], [1, 2]
    batch = ranking_loss(t([a_s, b_s + [99.0]]), t([a_r, b_r + [0]], torch.long))
    # A = 0.220095 (above); B = -log sigmoid(0 - 3) = log(1 + e^3) = 3.048587; mean = 1.634341
    assert batch.item() == pytest.approx((0.220095 + softplus_neg(-3.0)) / 2, abs=1e-5)
    assert batch.item() == pytest.approx(1.634341, abs=1e-5)
    single = (ranking_loss(t(a_s), t(a_r, torch.long)) + ranking_loss(t(b_s), t(b_r, torch.long))) / 2
    assert batch.item() == pytest.approx(single.item(), abs=1e-6)


def test_all_tied_rankings_add_nothing():
    mixed = ranking_loss(t([[2.0, 1.0, 0.0], [5.0, -5.0, 0.0]]), t([[1, 2, 2], [1, 1, 1]], torch.long))
    assert mixed.item() == pytest.approx(0.220095, abs=1e-6)  # the tied ranking is not averaged in
    scores = t([[1.0, 2.0]]).requires_grad_()
    only_tied = ranking_loss(scores, t([[1, 1]], torch.long))
    only_tied.backward()
    assert only_tied.item() == 0.0 and torch.equal(scores.grad, torch.zeros(1, 2))
    assert listwise_loss(t([[1.0, 2.0]]), t([[1, 1]], torch.long)).item() == 0.0


def test_gradient_pushes_better_up_and_worse_down():
    scores = t([0.0, 0.0, 0.0]).requires_grad_()
    ranking_loss(scores, t([1, 2, 3], torch.long)).backward()
    # d/ds of mean(-log sigmoid(s_i - s_j)) at 0: each pair gives -0.5 to i and +0.5 to j, / 3 pairs
    assert torch.allclose(scores.grad, t([-1.0 / 3, 0.0, 1.0 / 3]), atol=1e-6)


def test_shift_invariance_and_margin_free_losses():
    scores, ranks = t([1.5, -0.5, 0.2]), t([2, 3, 1], torch.long)
    for fn in (ranking_loss, listwise_loss):
        assert fn(scores + 7.0, ranks).item() == pytest.approx(fn(scores, ranks).item(), abs=1e-5)


def test_center_penalty_by_hand():
    # ranking means: (1 + 2 + 3) / 3 = 2 -> 4 ; (-1 + 0) / 2 = -0.5 -> 0.25 (third entry is padding)
    # mean over rankings = (4 + 0.25) / 2 = 2.125
    value = center_penalty(t([[1.0, 2.0, 3.0], [-1.0, 0.0, 50.0]]), t([[1, 2, 3], [1, 2, 0]], torch.long))
    assert value.item() == pytest.approx(2.125)


def test_pairwise_accuracy_counts_score_ties_half():
    # pairs (0,1): 2 > 1 right; (0,2): 2 > 2? tie -> 0.5; (1,2): 1 > 2 wrong  => 1.5 / 3
    assert pairwise_accuracy(t([2.0, 1.0, 2.0]), t([1, 2, 3], torch.long)).item() == pytest.approx(0.5)


def test_preferred_pairs_and_ranking_matrix():
    ranks = t([[1, 2, 2], [2, 1, 0]], torch.long)
    pairs = preferred_pairs(ranks)
    assert pairs[0].nonzero().tolist() == [[0, 1], [0, 2]]
    assert pairs[1].nonzero().tolist() == [[1, 0]]
    matrix = to_ranking_matrix(t([1.0, 2.0, 3.0, 4.0, 5.0]), ranks)
    assert matrix.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    with pytest.raises(ValueError):
        to_ranking_matrix(t([1.0, 2.0]), ranks)
    with pytest.raises(ValueError):
        ranking_loss(t([1.0, 2.0]), t([1, 2, 3], torch.long))
