"""Evaluation: the statistics on hand-computed numbers, then one tiny-model run of the whole thing."""

import json
import math

import pytest
import torch

from rlhf_stack.config import load_config
from rlhf_stack.errors import ConfigError
from rlhf_stack.evaluation import evaluate as ev
from rlhf_stack.evaluation import stats


def test_win_rate_counts_ties_as_half():
    # prompt 1 tie (0.5), prompt 2 win (1), prompt 3 loss (0): 1.5 / 3
    assert stats.win_rate([1.0, 2.0, 3.0], [1.0, 1.0, 4.0]) == pytest.approx(0.5)
    assert stats.win_rate([2.0, 2.0], [1.0, 1.0]) == 1.0
    with pytest.raises(ValueError):
        stats.win_rate([1.0], [1.0, 2.0])


def test_best_of_n_kl_is_log_n_minus_n_minus_one_over_n():
    assert stats.best_of_n_kl(1) == 0.0
    assert stats.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert stats.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)  # 0.6363
    with pytest.raises(ValueError):
        stats.best_of_n_kl(0)


def test_perplexity_is_exp_of_mean_nll():
    # 5 tokens, each with NLL ln 10 -> perplexity 10
    assert stats.perplexity(5 * math.log(10), 5) == pytest.approx(10.0)


def test_ranking_pair_margins_skip_ties():
    # ranks [1, 3, 2, 2]: ordered pairs (0,1) (0,2) (0,3) (2,1) (3,1); (2,3) tie skipped
    scores = [3.0, 1.0, 2.0, 0.5]
    margins = stats.ranking_pair_margins(scores, [1, 3, 2, 2])
    assert sorted(margins) == sorted([3 - 1, 3 - 2, 3 - 0.5, 2 - 1, 0.5 - 1])


def test_sequence_kl_k1_and_k3_by_hand():
    policy = [torch.tensor([-1.0, -2.0])]
    ref = [torch.tensor([-1.5, -1.0])]
    # k1 = sum(logp - logq) = 0.5 - 1.0 = -0.5
    # k3 with log r = logq - logp = [-0.5, 1.0]: (e^-0.5 - 1 + 0.5) + (e^1 - 1 - 1)
    k3 = (math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)
    out = stats.sequence_kl(policy, ref)
    assert out["kl"] == pytest.approx(-0.5)
    assert out["kl_k3"] == pytest.approx(k3, rel=1e-6)


def test_best_of_n_picks_the_proxy_favourite_and_judges_it():
    texts = ["a", "bbb", "cc", "d"]  # prompt 0: a, bbb; prompt 1: cc, d
    proxy = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    judge = lambda prompts, responses: [1.0 if r == "bbb" else 0.0 for r in responses]  # noqa: E731
    scores = ev._best_of_n_curve(["p0", "p1"], texts, 2, [2], judge, proxy(["p0"] * 4, texts))[2]
    chosen = scores["texts"]
    assert chosen == ["bbb", "cc"]
    assert scores["judge"] == [1.0, 0.0]
    assert scores["rm"] == [3.0, 2.0]
    chosen = ev._best_of_n_curve(["p0", "p1"], texts, 2, [2], judge, None)[2]["texts"]  # no RM: the judge picks
    assert chosen[0] == "bbb"


def test_best_of_n_curve_uses_the_first_n_of_one_pool_and_judges_each_pick_once():
    # one pool of 4 per prompt; the RM prefers longer texts, the judge counts the letter x
    texts = ["x", "xxxx", "yy", "xxx",  # prompt 0: RM picks n=1 -> "x", n=2 -> "xxxx", n=4 -> "xxxx"
             "yyy", "y", "xxxxx", "z"]  # prompt 1: n=1 -> "yyy", n=2 -> "yyy", n=4 -> "xxxxx"
    proxy = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    calls = []

    def judge(prompts, responses):
        calls.append(list(responses))
        return [float(r.count("x")) for r in responses]

    curve = ev._best_of_n_curve(["p0", "p1"], texts, 4, [1, 2, 4], judge, proxy(["p0"] * 8, texts))
    assert {n: c["texts"] for n, c in curve.items()} == {1: ["x", "yyy"], 2: ["xxxx", "yyy"], 4: ["xxxx", "xxxxx"]}
    assert curve[4]["judge"] == [4.0, 5.0] and curve[4]["rm"] == [4.0, 5.0]
    # picks over all n: indices 0, 1, 4, 6 -> the judge saw exactly those four, once, in one call
    assert calls == [["x", "xxxx", "yyy", "xxxxx"]]


def test_python_judge_path_errors_are_config_errors():
    from rlhf_stack.errors import ConfigError

    with pytest.raises(ConfigError):
        ev.build_judge(ev.JudgeConfig(kind="python", path="no_colon_here"))
    with pytest.raises(ConfigError):
        ev.build_judge(ev.JudgeConfig(kind="reward_model"))


def test_reward_model_eval_reports_the_labelers_agreement_on_the_same_rows(tmp_path, monkeypatch):
    from rlhf_stack.data import write_jsonl

    comps = ["a", "bb", "ccc"]
    rows = [{"prompt": "p", "completions": comps, "ranks": [3, 2, 1], "annotator": "x"},
            {"prompt": "p", "completions": comps, "ranks": [2, 3, 1], "annotator": "y"},
            {"prompt": "q", "completions": comps, "ranks": [1, 2, 3], "annotator": "x"},
            {"prompt": "q", "completions": comps, "ranks": [3, 2, 1], "annotator": "y"}]
    path = tmp_path / "rankings.jsonl"
    write_jsonl(rows, path)
    # an RM that prefers longer completions (ccc > bb > a)
    from rlhf_stack.evaluation import reward_accuracy

    monkeypatch.setattr(reward_accuracy, "reward_model_scorer", lambda checkpoint: lambda p, r: [float(len(x)) for x in r])
    out = ev.evaluate_reward_model("rm", str(path))
    # RM: p/x c>b>a 3 of 3; p/y c>a>b 2 of 3 (a>b wrong); q/x a>b>c 0 of 3; q/y c>b>a 3 of 3 -> 8 / 12
    assert out["pairwise_accuracy"] == pytest.approx(8 / 12) and out["n_pairs"] == 12
    # labelers: p (a,b) reversed, (a,c) (b,c) alike -> 2 of 3; q fully reversed -> 0 of 3; 2 / 6
    assert out["labeler_agreement"] == pytest.approx(2 / 6) and out["n_agreement_pairs"] == 6
    # on the first two rows only (max_rows): p alone -> 2 / 3
    assert ev.evaluate_reward_model("rm", str(path), max_rows=2)["labeler_agreement"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_same_model_on_both_sides_ties_with_zero_kl(tmp_path, tiny_model_dir, prompts_file, corpus_file,
                                                    rankings_file, monkeypatch):
    # Policy and baseline are the same weights sampled with the same seed: every pair of samples is
    # identical, so the win rate is exactly 1/2 and the sampled KL exactly 0.
    (tmp_path / "judge_mod.py").write_text(
        "def by_length(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(ev.EvalConfig, {
        "policy": str(tiny_model_dir), "baseline": str(tiny_model_dir), "prompts": str(prompts_file),
        "n_prompts": 6, "judge": {"kind": "python", "path": "judge_mod:by_length"}, "best_of_n": 3,
        "max_new_tokens": 8, "corpus": str(corpus_file), "n_corpus": 4, "output_dir": str(tmp_path / "out"),
        "reward_model": str(tiny_model_dir), "rankings": str(rankings_file), "batch_size": 4,
    })
    results = ev.evaluate_from_config(cfg)
    rows = {row["name"]: row for row in results["models"]}
    assert rows["policy"]["win_rate"] == 0.5
    assert rows["policy"]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert rows["baseline"]["kl"] == 0.0  # the reference is the baseline itself
    assert rows["policy"]["perplexity"] == pytest.approx(rows["baseline"]["perplexity"], rel=1e-5)
    assert rows["best_of_n"]["kl"] == pytest.approx(math.log(3) - 2 / 3)
    # best-of-3 by the RM: its RM score is at least the single sample's on average
    assert rows["best_of_n"]["rm_score"] >= rows["baseline"]["rm_score"] - 1e-6
    rm = results["reward_model"]
    assert rm["n_pairs"] == 24 * 6  # 24 rankings of ranks [1, 2, 4, 3]: 6 ordered pairs each
    assert len(rm["margins"]) == rm["n_pairs"]
    wins = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in rm["margins"]) / rm["n_pairs"]
    assert rm["pairwise_accuracy"] == pytest.approx(wins, abs=1e-3)
    # one annotator per prompt: no inter-annotator figure (None, not NaN, in results.json)
    assert rm["labeler_agreement"] is None and rm["n_agreement_pairs"] == 0
    assert "rm_labeler_agreement" not in results["summary"]
    assert results["summary"]["rm_pairwise_accuracy"] == rm["pairwise_accuracy"]
    saved = json.loads((tmp_path / "out" / ev.RESULTS_FILE).read_text())
    assert saved["summary"]["policy_win_rate"] == 0.5
    samples = [json.loads(line) for line in (tmp_path / "out" / ev.SAMPLES_FILE).read_text().splitlines()]
    assert len(samples) == 6 * 2  # one row per prompt and sample (samples_per_prompt 2 by default)
    assert all(s["policy"] == s["baseline"] for s in samples)
    assert {"prompt", "best_of_n", "policy_judge", "baseline_judge"} <= set(samples[0])


# ---- the frontier's statistics ------------------------------------------------------------------


def test_paired_outcomes_pair_the_jth_samples_and_broadcast_a_single_pick():
    # prompt 0: (3 vs 1) win, (1 vs 1) tie; prompt 1: (2 vs 5) loss, (2 vs 2) tie
    assert stats.paired_outcomes([3, 1, 2, 2], [1, 1, 5, 2], 2) == [[1.0, 0.5], [0.0, 0.5]]
    # one best-of-n pick per prompt meets both baseline samples: 2 vs (1, 3); 0 vs (0, 0)
    assert stats.paired_outcomes([2, 0], [1, 3, 0, 0], 2) == [[1.0, 0.0], [0.5, 0.5]]
    with pytest.raises(ValueError):
        stats.paired_outcomes([1, 2, 3, 4], [1, 2, 3, 4, 5, 6], 2)  # 2 per prompt against 3


def test_bootstrap_interval_of_certain_outcomes_is_a_point():
    assert stats.bootstrap_interval([[1.0, 1.0]] * 10) == (1.0, 1.0)  # every resample's mean is 1
    assert stats.bootstrap_interval([[0.5, 0.5], [0.5]]) == (0.5, 0.5)  # all ties
    with pytest.raises(ValueError):
        stats.bootstrap_interval([])


def test_bootstrap_interval_of_one_win_and_one_loss_spans_zero_to_one():
    # Two prompts, one won, one lost: a resample draws (loss, loss) with probability 1/4, mean 0,
    # and (win, win) with 1/4, mean 1; so the 2.5% and 97.5% quantiles are 0 and 1.
    assert stats.bootstrap_interval([[1.0], [0.0]], n_resamples=1000, seed=3) == (0.0, 1.0)


def test_bootstrap_resamples_prompts_and_pools_their_samples():
    # A prompt's samples move together: doubling every sample inside its prompt changes no resample,
    # so the interval is identical; the same 20 outcomes as 20 independent prompts give a narrower one.
    by_prompt = stats.bootstrap_interval([[1.0, 1.0]] * 5 + [[0.0, 0.0]] * 5, seed=0)
    assert by_prompt == stats.bootstrap_interval([[1.0]] * 5 + [[0.0]] * 5, seed=0)
    flat = stats.bootstrap_interval([[1.0]] * 10 + [[0.0]] * 10, seed=0)
    # half-widths ~1.96 * sqrt(0.25 / 10) = 0.31 against 1.96 * sqrt(0.25 / 20) = 0.22
    assert (flat[1] - flat[0]) < (by_prompt[1] - by_prompt[0]) - 0.1
    # The statistic pools samples: prompts [1, 1, 1] and [0]. A mixed resample has mean 3/4 (not
    # the mean of prompt means, 1/2), drawn with probability 1/2 between the two ends (1/4 each),
    # so the 30% and 70% quantiles are both 3/4.
    assert stats.bootstrap_interval([[1.0, 1.0, 1.0], [0.0]], confidence=0.4) == (0.75, 0.75)


def test_win_rate_with_interval_fixed_seed_regression():
    outcomes = [[1, 0.5], [1, 1], [0, 0], [1, 0], [0.5, 0.5], [1, 1], [0, 1], [1, 0]]
    w = stats.win_rate_with_interval(outcomes, n_resamples=1000, confidence=0.95, seed=0)
    # 1.5 + 2 + 0 + 1 + 1 + 2 + 1 + 1 = 9.5 wins in 16 pairs
    assert w.win_rate == pytest.approx(9.5 / 16) and (w.n_samples, w.n_prompts) == (16, 8)
    assert w.low < w.win_rate < w.high
    # about 0.59 +- 1.96 * 0.107 (the sd of the 8 prompt means, 0.30, over sqrt 8); pinned: numpy PCG64, seed 0
    assert (w.low, w.high) == pytest.approx((0.375, 0.78125), abs=1e-12)
    assert stats.win_rate_with_interval(outcomes, n_resamples=1000, confidence=0.95, seed=0) == w  # fixed seed


def test_best_of_n_picks_use_the_first_n_of_each_pool():
    selector = [0.1, 0.9, 0.5, 0.2,  # prompt 0
                0.3, 0.3, 0.8, 0.9]  # prompt 1
    assert stats.best_of_n_picks(selector, 4, 1) == [0, 4]
    assert stats.best_of_n_picks(selector, 4, 2) == [1, 4]  # a tie (0.3, 0.3): the earlier sample
    assert stats.best_of_n_picks(selector, 4, 3) == [1, 6]
    assert stats.best_of_n_picks(selector, 4, 4) == [1, 7]
    with pytest.raises(ValueError):
        stats.best_of_n_picks(selector, 4, 5)


def test_best_of_n_frontier_points_in_increasing_n():
    points = stats.best_of_n_frontier({4: [[1.0], [1.0]], 1: [[1.0], [0.0]]}, seed=3)
    assert [p.n for p in points] == [1, 4]
    assert (points[0].kl, points[0].win_rate, points[0].low, points[0].high) == (0.0, 0.5, 0.0, 1.0)
    assert points[1].kl == pytest.approx(math.log(4) - 0.75)  # 0.6363
    assert (points[1].win_rate, points[1].low, points[1].high) == (1.0, 1.0, 1.0)


def _curve():
    P = stats.FrontierPoint
    return [P(1, 0.0, 0.50, 0.40, 0.60), P(2, math.log(2) - 0.5, 0.60, 0.50, 0.70),
            P(4, math.log(4) - 0.75, 0.70, 0.60, 0.80)]


def test_frontier_position_interpolates_linearly_in_kl():
    # halfway between n=2 (KL 0.1931) and n=4 (KL 0.6363): KL 0.4147, curve (0.6 + 0.7) / 2 = 0.65
    kl = (math.log(2) - 0.5 + math.log(4) - 0.75) / 2
    at = stats.frontier_position(kl, 0.70, _curve())
    assert at.position == "above" and at.between == (2, 4)
    assert at.curve_win_rate == pytest.approx(0.65) and at.margin == pytest.approx(0.05)
    assert (at.curve_low, at.curve_high) == pytest.approx((0.55, 0.75))
    # a quarter of the way from n=1 (KL 0, 0.5) to n=2 (0.1931, 0.6): curve 0.525, policy 0.5 below it
    at = stats.frontier_position((math.log(2) - 0.5) / 4, 0.5, _curve())
    assert at.position == "below" and at.margin == pytest.approx(-0.025) and at.between == (1, 2)


def test_frontier_position_at_the_ends():
    # a sampled k1 KL just below 0 counts as the best-of-1 point's KL 0
    at = stats.frontier_position(-0.05, 0.45, _curve())
    assert at.position == "below" and at.curve_win_rate == pytest.approx(0.5) and at.margin == pytest.approx(-0.05)
    # past the last point: the margin against the point that wins most (n=4's 0.70), not an extrapolation
    beyond = stats.frontier_position(1.0, 0.9, _curve())
    assert beyond.position == "beyond the curve" and beyond.between == (4, 4)
    assert beyond.margin == pytest.approx(0.2) and (beyond.curve_low, beyond.curve_high) == (0.60, 0.80)
    worse = [stats.FrontierPoint(p.n, p.kl, w, w - 0.1, w + 0.1) for p, w in zip(_curve(), (0.5, 0.75, 0.7), strict=True)]
    at = stats.frontier_position(1.0, 0.65, worse)  # best-of-2 wins more at less KL: below, whatever comes after
    assert at.between == (2, 2) and at.margin == pytest.approx(-0.1)
    assert stats.frontier_position(0.1, 0.9, _curve()[1:]).position == "before the curve"  # no best-of-1
    assert stats.frontier_position(None, 0.9, _curve()).position == "no KL"
    only_4 = _curve()[2:]  # a one-point curve: its own KL is on it, anything else off it
    assert stats.frontier_position(math.log(4) - 0.75, 0.7, only_4).between == (4, 4)
    assert stats.frontier_position(0.6, 0.7, only_4).position == "before the curve"
    assert stats.frontier_position(math.log(4) - 0.75, 0.7, _curve()).position == "on"


# ---- the config ---------------------------------------------------------------------------------


def _eval_cfg(**kw):
    return load_config(ev.EvalConfig, {"policy": "p", "prompts": "q.jsonl", **kw})


def test_best_of_n_accepts_one_number_or_a_list():
    assert _eval_cfg().best_of_n == [1, 2, 4, 8, 16]
    assert _eval_cfg(best_of_n=4).best_of_n == [4]  # old recipes
    assert _eval_cfg(best_of_n=1).best_of_n == [] and _eval_cfg(best_of_n=0).best_of_n == []
    assert _eval_cfg(best_of_n=[16, 1, 4, 4]).best_of_n == [1, 4, 16]
    assert _eval_cfg(best_of_n=[1]).best_of_n == [] and _eval_cfg(best_of_n=[]).best_of_n == []
    with pytest.raises(ConfigError, match="best_of_n"):
        _eval_cfg(best_of_n=[0, 2])
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        _eval_cfg(samples_per_prompt=0)
    with pytest.raises(ConfigError, match="confidence"):
        _eval_cfg(confidence=1.0)


def test_policies_list_beside_or_instead_of_policy():
    cfg = _eval_cfg(policy_label="PPO", policies=[{"name": "rloo", "path": "r", "label": "RLOO"},
                                                  {"name": "dpo", "path": "d"}])
    assert cfg.policy_specs() == [("policy", "PPO", "p"), ("rloo", "RLOO", "r"), ("dpo", "dpo", "d")]
    alone = load_config(ev.EvalConfig, {"prompts": "q.jsonl", "policies": [{"name": "dpo", "path": "d"}]})
    assert alone.policy_specs() == [("dpo", "dpo", "d")]
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        load_config(ev.EvalConfig, {"prompts": "q.jsonl"})
    for bad in ([{"name": "a", "path": "x"}, {"name": "a", "path": "y"}], [{"name": "baseline", "path": "x"}],
                [{"name": "best_of_4", "path": "x"}]):
        with pytest.raises(ConfigError, match="names must be unique"):
            _eval_cfg(policies=bad)
    with pytest.raises(ConfigError, match="name"):
        _eval_cfg(policies=[{"name": "has space", "path": "x"}])


def test_every_eval_field_documented():
    from rlhf_stack.config import describe

    for cls in (ev.EvalConfig, ev.PolicySpec):
        assert not [key for key, _, _, doc in describe(cls) if not doc]


@pytest.mark.slow
def test_two_policies_on_one_frontier_with_an_oracle_best_of_n(tmp_path, tiny_model_dir, prompts_file,
                                                                 monkeypatch):
    # The same weights as `policy` and as a `policies` entry, and as the baseline; no reward model, so
    # the judge picks best-of-n (an oracle): its judge score can only grow with n.
    (tmp_path / "judge_mod.py").write_text(
        "def by_length(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(ev.EvalConfig, {
        "policy": str(tiny_model_dir), "policy_label": "PPO", "baseline": str(tiny_model_dir),
        "policies": [{"name": "twin", "path": str(tiny_model_dir), "label": "Twin"}],
        "prompts": str(prompts_file), "n_prompts": 5, "samples_per_prompt": 3, "best_of_n": [1, 2, 4],
        "judge": {"kind": "python", "path": "judge_mod:by_length"}, "max_new_tokens": 6,
        "bootstrap_samples": 200, "output_dir": str(tmp_path / "out"), "batch_size": 8,
    })
    results = ev.evaluate_from_config(cfg)
    rows = {row["name"]: row for row in results["models"]}
    assert list(rows) == ["baseline", "policy", "twin", "best_of_n"]
    for name in ("policy", "twin"):  # same weights, same seed as the baseline: all ties
        assert rows[name]["win_rate"] == 0.5 and rows[name]["n_samples"] == 5 * 3
        assert (rows[name]["win_rate_low"], rows[name]["win_rate_high"]) == (0.5, 0.5)
    best = rows["best_of_n"]
    assert best["n"] == 4 and "oracle" in best["label"] and best["n_samples"] == 5 * 3
    assert best["kl"] == pytest.approx(math.log(4) - 0.75) and "rm_score" not in best
    frontier = results["frontier"]
    assert frontier["picker"] == "judge (oracle)" and frontier["confidence"] == 0.95
    points = frontier["best_of_n"]
    assert [p["n"] for p in points] == [1, 2, 4]
    assert [p["kl"] for p in points] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    judge_scores = [p["judge_score"] for p in points]
    assert judge_scores == sorted(judge_scores)  # the oracle's max over more samples never falls
    assert all(p["win_rate_low"] <= p["win_rate"] <= p["win_rate_high"] for p in points)
    assert best["win_rate"] == points[-1]["win_rate"]  # the `best_of_n` row is the largest n
    placed = {p["name"]: p for p in frontier["policies"]}
    assert set(placed) == {"policy", "twin"}
    for p in placed.values():  # identical weights: KL 0 up to the rounding of log-probs recorded while
        # sampling against a forward pass (a hair either side), so on the best-of-1 point
        assert abs(p["kl"]) < 1e-4 and p["between_n"] in ([1, 1], [1, 2])
        assert p["curve_win_rate"] == pytest.approx(points[0]["win_rate"], abs=1e-3)
        assert p["margin"] == pytest.approx(0.5 - points[0]["win_rate"], abs=1e-3)
    summary = results["summary"]
    assert summary["twin_win_rate"] == 0.5 and summary["best_of_n_win_rate"] == points[-1]["win_rate"]
    assert summary["policy_frontier_margin"] == placed["policy"]["margin"]
    samples = [json.loads(line) for line in (tmp_path / "out" / ev.SAMPLES_FILE).read_text().splitlines()]
    assert len(samples) == 5 * 3 and [s["sample"] for s in samples[:3]] == [0, 1, 2]
    assert all(s["twin"] == s["policy"] == s["baseline"] for s in samples)  # each policy, the same seeds
    assert samples[0]["best_of_n"] == samples[2]["best_of_n"]  # one pick per prompt


def test_policies_take_stage_references_in_a_recipe():
    from pathlib import Path

    import yaml

    from rlhf_stack.pipeline import runner, staleness
    from rlhf_stack.pipeline.plan import plan

    quickstart = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    recipe = yaml.safe_load(quickstart.read_text())
    recipe["evaluation"]["policies"] = [{"name": "sft_again", "path": "@sft"}]
    recipe["evaluation"]["best_of_n"] = 4
    loaded, _ = runner.load_recipe(recipe)
    assert loaded.evaluation.best_of_n == [4]  # one n, read as a list
    stage = runner.stage_dict(loaded, plan(loaded)[-1])
    assert ("evaluation.policies.0.path", "sft") in list(staleness.iter_references(stage, "evaluation"))
    resolved = staleness.resolve_references(stage, {"sft": "/r/sft", "ppo": "/r/ppo", "reward": "/r/reward"})
    assert resolved["policies"] == [{"name": "sft_again", "path": "/r/sft", "label": None}]


def test_sampling_keeps_each_prompts_samples_in_place(tiny_model_dir, monkeypatch):
    """LM.sample runs prompts shortest first, several to a generate() call, each prompt's pass once
    for its n samples (runs of n identical rows, `group=n`); the responses still come back grouped
    by prompt, in the rows' order. A stand-in generate() answers each row with its prompt's last
    two tokens and the row's place in its run, so a response shows which prompt and sample it is."""
    from rlhf_stack.evaluation.models import LM
    from rlhf_stack.ppo import rollout

    calls = []

    def fake_generate(model, query_ids, query_mask, gen_config, group=1, **_):
        calls.append((query_ids.shape[0], group))
        runs = query_ids.view(-1, group, query_ids.shape[1])
        assert (runs == runs[:, :1]).all()  # each run of `group` rows is one prompt
        place = torch.arange(query_ids.shape[0]).remainder(group).unsqueeze(1) + 1000
        return torch.cat([query_ids[:, -2:], place], 1)

    monkeypatch.setattr(rollout, "generate", fake_generate)
    rows = [{"prompt": p} for p in ("Tell me a long story about a cat and a dog and a bird", "Hi",
                                    "What is two plus two?", "Name a colour")]
    cfg = ev.EvalConfig(prompts="unused.jsonl", policy="unused", max_new_tokens=6)
    lm = LM(str(tiny_model_dir))
    out = lm.sample(rows, cfg, max_prompt_length=64, batch_size=6, source="test", n=3)
    assert calls == [(6, 3), (6, 3)]  # 6 // 3 = 2 prompts a call
    assert len(out.response_ids) == 12
    for i in range(4):
        for j in range(3):
            assert out.prompt_ids[3 * i + j] == out.prompt_ids[3 * i]
            assert out.response_ids[3 * i + j] == out.prompt_ids[3 * i][-2:] + [1000 + j]
    assert len({tuple(out.prompt_ids[3 * i]) for i in range(4)}) == 4


def test_recorded_logprobs_equal_a_second_pass_and_leave_the_samples_unchanged(tiny_model_dir):
    """The evaluation takes a policy's own log-probs (for its KL) from its sampler instead of a
    second forward pass: they must equal that pass (`response_logprobs`), and recording must not
    change what is drawn."""
    from rlhf_stack.evaluation.models import LM

    rows = [{"prompt": p} for p in ("Tell me a long story about a cat", "Hi", "What is two plus two?")]
    cfg = ev.EvalConfig(prompts="unused.jsonl", policy="unused", max_new_tokens=8)
    lm = LM(str(tiny_model_dir))
    runs = []
    for record in (False, True):
        torch.manual_seed(3)
        runs.append(lm.sample(rows, cfg, max_prompt_length=64, batch_size=4, source="test", n=2, record=record))
    plain, recorded = runs
    assert plain.logprobs is None and recorded.response_ids == plain.response_ids
    forward = lm.response_logprobs(recorded, cfg.temperature, batch_size=4)
    assert [len(x) for x in recorded.logprobs] == [len(r) for r in recorded.response_ids]
    for got, want in zip(recorded.logprobs, forward, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_report_reads_samples_whose_text_holds_a_unicode_line_separator(tmp_path):
    """A sampled response may contain U+2028 or U+0085, which json.dumps(ensure_ascii=False) leaves
    raw and str.splitlines() splits on: the report read such a samples.jsonl as broken JSON (seen
    in `make demo`, 2026-12-01). Rows are split on newlines only."""
    from rlhf_stack.evaluation.report import read_jsonl

    rows = [{"prompt": "p", "policy": "one\u2028two\x85three"}, {"prompt": "q", "policy": "plain"}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_jsonl(path) == rows


def test_reference_pass_over_a_shared_trunk_equals_the_full_pass(tiny_model_dir, monkeypatch):
    """A policy whose bottom blocks equal its reference's (adapters on the top blocks only) keeps
    those blocks' output while it samples; the reference's KL pass then runs only its top blocks.
    Its log-probs must equal the reference's full pass, for samples of one prompt and of several."""
    from rlhf_stack.evaluation.models import LM
    from rlhf_stack.ppo.trunk import Trunk

    rows = [{"prompt": p} for p in ("Tell me a long story about a cat", "Hi", "What is two plus two?")]
    cfg = ev.EvalConfig(prompts="unused.jsonl", policy="unused", max_new_tokens=8)
    reference, policy = LM(str(tiny_model_dir)), LM(str(tiny_model_dir))
    top = policy.backbone.layers[-1]
    with torch.no_grad():  # the "trained" policy: its top block moved, every block below untouched
        for weight in top.parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    depth = policy.shared_trunk_depth(reference)
    assert depth == len(policy.backbone.layers) - 1
    assert reference.shared_trunk_depth(LM(str(tiny_model_dir))) == 0  # identical: nothing to split
    with monkeypatch.context() as patch:  # a model that rescales `inputs_embeds` (Gemma): the split is refused
        top = Trunk.top
        patch.setattr(Trunk, "top", lambda self, hidden, mask: top(self, hidden * 2.0, mask))
        assert policy.shared_trunk_depth(reference) == 0
    for n in (1, 2):
        torch.manual_seed(5)
        samples = policy.sample(rows, cfg, max_prompt_length=64, batch_size=4, source="test", n=n, record=True,
                                trunk_depth=depth)
        assert [len(h) for h in samples.trunk] == [len(p) + len(r) - 1 for p, r in
                                                    zip(samples.prompt_ids, samples.response_ids, strict=True)]
        split = reference.response_logprobs(samples, cfg.temperature, batch_size=3, trunk_depth=depth)
        full = reference.response_logprobs(samples, cfg.temperature, batch_size=3)
        for got, want in zip(split, full, strict=True):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        own = policy.response_logprobs(samples, cfg.temperature, batch_size=3)
        assert max((a - b).abs().max() for a, b in zip(own, full, strict=True)) > 1e-3  # the two models differ


def _reward_model_sharing_bottom_blocks(tiny_model_dir, out_dir):
    """A one-label classifier on the tiny model's backbone whose top block moved (an RM trained
    with adapters on its top block only), saved with the tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_stack import modeling

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    with torch.no_grad():
        for weight in rm.model.layers[-1].parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.mark.parametrize("max_rest", [None, 10**6])
def test_reward_scores_from_the_sampling_trunk_equal_the_reward_models_own(tiny_model_dir, tmp_path, monkeypatch,
                                                                           max_rest):
    """The evaluation's proxy RM keeps, while a model that shares its bottom blocks samples, those
    blocks' output over the RM's own tokens (the sampled ones, then what its chat template adds,
    run on the sampling's cache), and scores from there with its top blocks only. The scores must
    equal `RewardScorer`'s full pass: rows cut at max_new_tokens and rows ended by EOS, one sample
    a prompt and several. A response whose decoded text the RM tokenizes otherwise than it was
    sampled is not held by default (`MAX_REST`, scored by the full pass); held all the same with the
    bound lifted, its whole rest runs on the cache."""
    from rlhf_stack.evaluation.models import LM
    from rlhf_stack.evaluation.reward_trunk import proxy_reward_model, shared_blocks
    from rlhf_stack.ppo import trunk_reward
    from rlhf_stack.reward.scorer import RewardScorer

    if max_rest is not None:
        monkeypatch.setattr(trunk_reward, "MAX_REST", max_rest)

    checkpoint = str(_reward_model_sharing_bottom_blocks(tiny_model_dir, tmp_path / "rm"))
    rows = [{"prompt": p} for p in ("Tell me a long story about a cat", "Hi", "What is two plus two?")]
    lm = LM(str(tiny_model_dir))
    eos = lm.tokenizer.eos_token_id
    head = torch.nn.Linear(*reversed(lm.model.lm_head.weight.shape))  # the same head, plus a bias
    with torch.no_grad():  # that makes EOS likely, so that some rows end before max_new_tokens
        head.weight.copy_(lm.model.lm_head.weight)
        head.bias.zero_()[eos] = 3.0
    lm.model.lm_head = head
    reference = RewardScorer(checkpoint)
    for n, max_new in ((1, 8), (2, 12)):
        proxy = proxy_reward_model(checkpoint)
        depth = shared_blocks(proxy, lm)
        assert depth == len(lm.backbone.layers) - 1
        cfg = ev.EvalConfig(prompts="unused.jsonl", policy="unused", max_new_tokens=max_new)
        torch.manual_seed(7)
        samples = lm.sample(rows, cfg, max_prompt_length=64, batch_size=4, source="test", n=n, trunk_depth=depth,
                            keep_trunk=False, reward=proxy)
        prompts = [r["prompt"] for r in rows for _ in range(n)]
        assert samples.trunk is None
        ended = [bool(r) and r[-1] == eos for r in samples.response_ids]
        texts = [*samples.texts, "not sampled at all"]  # scored by the full pass
        got = proxy([*prompts, rows[0]["prompt"]], texts)
        want = reference.score([*prompts, rows[0]["prompt"]], texts)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-4)
        # the tiny model's random text mostly retokenizes otherwise: all held only with the bound lifted
        assert proxy.held.reused == len(prompts) if max_rest else proxy.held.reused < len(prompts)
        if n == 2:
            assert any(ended) and not all(ended)
