"""Reward-model metrics (pure functions + the `evaluate` modules loaded by path) and reward sources."""

import math

import pytest
import torch

from rlhf_stack.config import load_callable
from rlhf_stack.data import Ranking
from rlhf_stack.errors import ConfigError
from rlhf_stack.metrics import RANKING_METRICS, load_metric, metric_path
from rlhf_stack.metrics.agreement import agreement_counts, annotator_agreement, pair_agreement
from rlhf_stack.metrics.ranking import (
    kendall_tau,
    pairwise_accuracy,
    pairwise_calibration,
    pairwise_prf,
    ranking_metrics,
    top1_accuracy,
)
from rlhf_stack.ppo.rewards import CombinedReward, RewardSourceConfig, build_reward_function

# Two rankings: A has a tie (ranks 1,2,2), B is a full order of 3 with one mistake.
SCORES = [[2.0, 0.5, -1.0], [0.1, 0.3, -0.4]]
RANKS = [[1, 2, 2], [1, 2, 3]]


def test_pairwise_and_top1_by_hand():
    # A: pairs (0,1) 2>.5 ok, (0,2) 2>-1 ok (1,2 tied: skipped). B: (0,1) .1>.3 wrong, (0,2) ok, (1,2) ok
    # -> 4 of 5 pairs right
    assert pairwise_accuracy(SCORES, RANKS) == {"pairwise_accuracy": pytest.approx(0.8), "n_pairs": 5}
    # top-1: A's best-scored is rank 1 (hit); B's best-scored (0.3) is rank 2 (miss) -> 1/2
    assert top1_accuracy(SCORES, RANKS)["top1_accuracy"] == pytest.approx(0.5)


def test_kendall_tau_b_by_hand():
    # A: pairs (0,1) concordant, (0,2) concordant, (1,2) tied in ranks -> C-D = 2, n0 = 3,
    #    tau_b = 2 / sqrt((3 - 1) * (3 - 0)) = 2 / sqrt(6) = 0.816497
    # B: (0,1) discordant, (0,2) concordant, (1,2) concordant -> (2 - 1) / 3 = 0.333333
    # mean = (0.816497 + 0.333333) / 2 = 0.574915
    assert kendall_tau(SCORES, RANKS)["kendall_tau"] == pytest.approx(0.574915, abs=1e-6)
    assert kendall_tau([[3.0, 2.0, 1.0]], [[1, 2, 3]])["kendall_tau"] == pytest.approx(1.0)
    assert kendall_tau([[1.0, 2.0, 3.0]], [[1, 2, 3]])["kendall_tau"] == pytest.approx(-1.0)


def test_pairwise_prf_by_hand():
    # presentation-order pairs i<j with different ranks: A (0,1) y=1 p=1, (0,2) y=1 p=1;
    # B (0,1) y=1 p=0, (0,2) y=1 p=1, (1,2) y=1 p=1. tp=4, fp=0, fn=1
    out = pairwise_prf(SCORES, RANKS)
    assert out["precision"] == pytest.approx(1.0)
    assert out["recall"] == pytest.approx(0.8)
    assert out["f1"] == pytest.approx(2 * 0.8 / 1.8)
    # a later completion preferred: label 0; predicting "first wins" there is a false positive
    assert pairwise_prf([[1.0, 0.0]], [[2, 1]])["precision"] == 0.0


def test_calibration_by_hand():
    # one pair, scores (10, 0), ranks (1, 2): ordered pairs give p = sigmoid(10) with y=1 and
    # p = sigmoid(-10) with y=0; both errors are 1 - sigmoid(10) = 4.54e-5
    good = pairwise_calibration([[10.0, 0.0]], [[1, 2]])
    err = 1 - 1 / (1 + math.exp(-10))
    assert good["ece"] == pytest.approx(err, rel=1e-6)
    assert good["brier"] == pytest.approx(err**2, rel=1e-6)
    bad = pairwise_calibration([[0.0, 10.0]], [[1, 2]])
    assert bad["ece"] == pytest.approx(1 - err, rel=1e-6)
    # scores equal: p = 0.5 everywhere, labels half 1, half 0 -> perfectly calibrated in its bin
    flat = pairwise_calibration([[0.0, 0.0]], [[1, 2]])
    assert flat["ece"] == pytest.approx(0.0) and flat["brier"] == pytest.approx(0.25)


def test_all_tied_rows_and_bad_shapes():
    assert pairwise_accuracy([[1.0, 2.0]], [[1, 1]])["n_pairs"] == 0
    assert math.isnan(top1_accuracy([[1.0, 2.0]], [[1, 1]])["top1_accuracy"])
    with pytest.raises(ValueError):
        pairwise_accuracy([[1.0, 2.0]], [[1, 2, 3]])


def test_evaluate_modules_by_path_match_the_pure_functions():
    expected = ranking_metrics(SCORES, RANKS)
    combined = {}
    for name in RANKING_METRICS:
        assert metric_path(name).is_dir()
        combined.update(load_metric(name).compute(predictions=SCORES, references=RANKS))
    assert combined.keys() == expected.keys()
    for key, value in expected.items():
        assert combined[key] == pytest.approx(value), key
    with pytest.raises(ValueError, match="no metric named"):
        metric_path("nope")


def test_pair_agreement_strict_and_with_ties_by_hand():
    # pairs of [1, 2, 3] vs [1, 3, 1]: (0,1) -1 vs -2 alike; (0,2) -2 vs 0 (b ties); (1,2) -1 vs +2 reversed
    assert pair_agreement([1, 2, 3], [1, 3, 1]) == (1, 2)  # strict pairs only: (0,1), (1,2)
    assert pair_agreement([1, 2, 3], [1, 3, 1], count_ties=True) == (1, 3)  # the tie is a disagreement


def test_annotator_agreement_by_hand():
    rows = [
        # p: y lists the completions in another order; aligned, y ranks A=1, B=3, C=2
        {"prompt": "p", "completions": ["A", "B", "C"], "ranks": [1, 2, 3], "annotator": "x"},
        {"prompt": "p", "completions": ["C", "A", "B"], "ranks": [2, 1, 3], "annotator": "y"},
        # q: x ties A and B, so that pair is left out
        {"prompt": "q", "completions": ["A", "B", "C"], "ranks": [1, 1, 2], "annotator": "x"},
        {"prompt": "q", "completions": ["A", "B", "C"], "ranks": [1, 2, 3], "annotator": "y"},
        # r: one annotator twice (self-consistency, not agreement); s: one annotator only
        {"prompt": "r", "completions": ["A", "B"], "ranks": [1, 2], "annotator": "x"},
        {"prompt": "r", "completions": ["A", "B"], "ranks": [2, 1], "annotator": "x"},
        {"prompt": "s", "completions": ["A", "B"], "ranks": [1, 2], "annotator": "z"},
    ]
    # p: (A,B) alike, (A,C) alike, (B,C) x 2<3 but y 3>2 reversed -> 2 of 3
    # q: (A,B) tied by x -> out; (A,C), (B,C) alike -> 2 of 2;  r, s: no pair -> 4 of 5 = 0.8
    assert agreement_counts(rows) == (4, 5)
    assert annotator_agreement(rows) == pytest.approx(0.8)
    rankings = [Ranking(r["prompt"], r["completions"], r["ranks"], r["annotator"]) for r in rows]
    assert annotator_agreement(rankings) == pytest.approx(0.8)
    assert annotator_agreement(rows[4:]) is None  # no prompt ranked by two annotators


def test_demo_labeler_agreement_is_the_metric():
    from data_tools.demo import labeler_agreement

    assert labeler_agreement is annotator_agreement


# ---- reward sources ------------------------------------------------------------------------------


def length_reward(prompts, responses):
    return [float(len(r)) for r in responses]


def test_load_callable_and_errors():
    assert load_callable(f"{__name__}:length_reward") is length_reward
    for bad, msg in [("no_colon", "must look like"), ("not_a_module_xyz:f", "cannot import"),
                     (f"{__name__}:missing_fn", "no attribute"), (f"{__name__}:SCORES", "not callable")]:
        with pytest.raises(ConfigError, match=msg):
            load_callable(bad)


def test_combined_reward_weights_and_components():
    sources = [RewardSourceConfig(kind="python", path=f"{__name__}:length_reward", weight=0.5)]
    combined = build_reward_function(sources, extra_fns=[lambda p, r: [1.0] * len(r)])
    total, parts = combined(["q", "q"], ["ab", "abcd"])
    assert total.dtype == torch.float32 and total.shape == (2,)
    assert total.tolist() == [0.5 * 2 + 1.0, 0.5 * 4 + 1.0]
    assert parts["length_reward"].tolist() == [2.0, 4.0] and len(parts) == 2
    assert combined.bias == 0.0
    with pytest.raises(ConfigError, match="distinct names"):
        build_reward_function(sources * 2)
    with pytest.raises(ConfigError, match="needs `label`"):
        build_reward_function([RewardSourceConfig(kind="classifier", path="x")])


def test_combined_reward_checks_lengths():
    from rlhf_stack.errors import RewardFunctionError

    combined = CombinedReward([("bad", 1.0, lambda p, r: [0.0])])
    with pytest.raises(RewardFunctionError, match="reward 'bad' returned 1 values for 2 responses"):
        combined(["a", "b"], ["x", "y"])


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, tiny_model_dir):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                        label2id={"NEGATIVE": 0, "POSITIVE": 1})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    out = tmp_path_factory.mktemp("classifier")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_classifier_source_is_a_label_probability(tiny_classifier):
    pos = RewardSourceConfig(kind="classifier", path=str(tiny_classifier), label="POSITIVE", name="pos")
    neg = RewardSourceConfig(kind="classifier", path=str(tiny_classifier), label="NEGATIVE", name="neg")
    combined = build_reward_function([pos, neg], device="cpu")
    total, parts = combined(["q"] * 3, ["good", "bad film", "so so"])
    assert torch.all((parts["pos"] > 0) & (parts["pos"] < 1))
    assert torch.allclose(total, torch.ones(3), atol=1e-5)  # P(POSITIVE) + P(NEGATIVE) = 1
    with pytest.raises(ConfigError, match="not one of them"):
        build_reward_function([RewardSourceConfig(kind="classifier", path=str(tiny_classifier), label="JOY")])
