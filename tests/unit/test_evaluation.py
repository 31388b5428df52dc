"""Evaluation: the statistics on hand-computed numbers, then one tiny-model run of the whole thing."""

import json
import math

import pytest
import torch

from rlhf_stack.evaluation import evaluate as ev
from rlhf_stack.config import load_config


def test_win_rate_counts_ties_as_half():
    # prompt 1 tie (0.5), prompt 2 win (1), prompt 3 loss (0): 1.5 / 3
    assert ev.win_rate([1.0, 2.0, 3.0], [1.0, 1.0, 4.0]) == pytest.approx(0.5)
    assert ev.win_rate([2.0, 2.0], [1.0, 1.0]) == 1.0
    with pytest.raises(ValueError):
        ev.win_rate([1.0], [1.0, 2.0])


def test_best_of_n_kl_is_log_n_minus_n_minus_one_over_n():
    assert ev.best_of_n_kl(1) == 0.0
    assert ev.best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert ev.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)  # 0.6363
    with pytest.raises(ValueError):
        ev.best_of_n_kl(0)


def test_perplexity_is_exp_of_mean_nll():
    # 5 tokens, each with NLL ln 10 -> perplexity 10
    assert ev.perplexity(5 * math.log(10), 5) == pytest.approx(10.0)


def test_ranking_pair_margins_skip_ties():
    # ranks [1, 3, 2, 2]: ordered pairs (0,1) (0,2) (0,3) (2,1) (3,1); (2,3) tie skipped
    scores = [3.0, 1.0, 2.0, 0.5]
    margins = ev.ranking_pair_margins(scores, [1, 3, 2, 2])
    assert sorted(margins) == sorted([3 - 1, 3 - 2, 3 - 0.5, 2 - 1, 0.5 - 1])


def test_sequence_kl_k1_and_k3_by_hand():
    policy = [torch.tensor([-1.0, -2.0])]
    ref = [torch.tensor([-1.5, -1.0])]
    # k1 = sum(logp - logq) = 0.5 - 1.0 = -0.5
    # k3 with log r = logq - logp = [-0.5, 1.0]: (e^-0.5 - 1 + 0.5) + (e^1 - 1 - 1)
    k3 = (math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)
    out = ev.sequence_kl(policy, ref)
    assert out["kl"] == pytest.approx(-0.5)
    assert out["kl_k3"] == pytest.approx(k3, rel=1e-6)


def test_best_of_n_picks_the_proxy_favourite_and_judges_it():
    texts = ["a", "bbb", "cc", "d"]  # prompt 0: a, bbb; prompt 1: cc, d
    proxy = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    judge = lambda prompts, responses: [1.0 if r == "bbb" else 0.0 for r in responses]  # noqa: E731
    chosen, scores = ev._best_of_n(["p0", "p1"], texts, 2, judge, proxy)
    assert chosen == ["bbb", "cc"]
    assert scores["judge"] == [1.0, 0.0]
    assert scores["rm"] == [3.0, 2.0]
    chosen, _ = ev._best_of_n(["p0", "p1"], texts, 2, judge, None)  # no RM: the judge picks
    assert chosen[0] == "bbb"


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
    monkeypatch.setattr(ev, "reward_model_scorer", lambda checkpoint: lambda p, r: [float(len(x)) for x in r])
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
    assert len(samples) == 6
    assert all(s["policy"] == s["baseline"] for s in samples)
    assert {"prompt", "best_of_n", "policy_judge", "baseline_judge"} <= set(samples[0])
