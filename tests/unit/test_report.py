"""The run report from synthetic run directories: sections, plots, relative links, missing stages."""

import json
import re

import pytest

from rlhf_stack.errors import RlhfStackError
from rlhf_stack.evaluation import markdown, report


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _full_run(run_dir):
    stages = {
        "sft": {"status": "done", "duration_s": 12.0, "metrics": {"eval_loss": 1.5, "eval_loss_before": 2.0}},
        "reward": {"status": "done", "duration_s": 20.0, "metrics": {"eval_pairwise_accuracy": 0.7,
                                                                       "eval_off_prompt_accuracy": 0.52}},
        "ppo": {"status": "done", "duration_s": 30.0, "metrics": {"score": 0.4, "kl": 1.2}},
        "eval": {"status": "done", "duration_s": 5.0, "metrics": {"policy_win_rate": 0.75}},
    }
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"recipe": "recipes/x.yaml", "stages": stages,
                                                       "versions": {"torch": "2"}}))
    _jsonl(run_dir / "sft/logs/train_log.jsonl", [{"loss": 2.0 - 0.1 * s, "step": s} for s in range(1, 6)]
           + [{"eval_loss": 1.5, "step": 5}])
    (run_dir / "sft/stage.json").write_text(json.dumps({"metrics": stages["sft"]["metrics"]}))
    _jsonl(run_dir / "reward/logs/train_log.jsonl", [{"loss": 0.7, "step": 1}, {"eval_pairwise_accuracy": 0.7, "step": 2}])
    (run_dir / "reward/stage.json").write_text(json.dumps({"metrics": stages["reward"]["metrics"]}))
    _jsonl(run_dir / "ppo/logs/ppo_log.jsonl", [
        {"step": s, "score": 0.1 * s, "reward": 0.1 * s - 0.01, "kl": 0.2 * s, "kl_coef": 0.05, "entropy": 2.0,
         "response_length": 30 - s} for s in range(1, 5)])
    results = {"judge": "gold", "n_prompts": 2, "models": [
        {"name": "baseline", "label": "SFT", "judge_score": 0.1, "kl": 0.0, "response_tokens": 30.0, "perplexity": 9.0},
        {"name": "policy", "label": "PPO", "win_rate": 0.75, "judge_score": 0.5, "kl": 1.4, "response_tokens": 20.0,
         "perplexity": 9.5},
        {"name": "best_of_n", "label": "best-of-4 (SFT)", "win_rate": 0.6, "judge_score": 0.3, "kl": 0.636}],
        "reward_model": {"rankings": "r.jsonl", "pairwise_accuracy": 0.7, "n_pairs": 3, "margins": [0.5, -0.2, 1.0],
                         "labeler_agreement": 0.74, "n_agreement_pairs": 50}}
    (run_dir / "eval").mkdir()
    (run_dir / "eval/results.json").write_text(json.dumps(results))
    _jsonl(run_dir / "eval/samples.jsonl", [
        {"prompt": "Say | hi", "baseline": "line one\nline two", "policy": "Hi.", "baseline_judge": 0.1,
         "policy_judge": 0.9},
        {"prompt": [{"role": "user", "content": "chat prompt"}], "baseline": "a", "policy": "b",
         "baseline_judge": 0.0, "policy_judge": 0.0}])


def test_full_report_has_every_section_and_its_plots(tmp_path):
    run_dir = tmp_path / "run"
    _full_run(run_dir)
    path = report.write_report(run_dir)
    text = path.read_text()
    assert path == run_dir / "report.md"
    for heading in ("## Stages", "## Stage 1", "## Stage 2", "## Stage 3", "## Evaluation", "## Samples"):
        assert heading in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all(not link.startswith("/") for link in links)  # relative: renders on GitHub
    for link in links:
        assert (run_dir / link).is_file() and (run_dir / link).stat().st_size > 1000
    assert {"sft_loss.png", "reward_margins.png", "ppo_reward_kl.png", "ppo_policy.png",
            "eval_win_rate_kl.png"} <= {p.name for p in (run_dir / "plots").iterdir()}
    assert "**PPO wins 75% against SFT**" in text
    assert "| PPO | 0.75 | 0.5 |" in text
    assert "Say \\| hi" in text and "line one<br>line two" in text  # table cells stay one row
    assert "user: chat prompt" in text
    # the RM's accuracy beside the labelers' own agreement on the same rankings, in the summary and stage 2
    summary, stage2 = text.split("## Stages")[0], text.split("## Stage 2")[1].split("## Stage 3")[0]
    assert ("Reward model on `r.jsonl`: pairwise accuracy **0.7** over 3 ordered pairs; labelers' own "
            "agreement on the same rankings: **0.74** over 50 pairs both labelers rank strictly (the noise ceiling)") in summary
    assert "labelers' own agreement on the same rankings: 0.74 over 50 pairs" in stage2
    assert "held-out answers scored above an answer to another prompt: **0.52**" in summary


def test_missing_stages_are_left_out(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"stages": {"sft": {"status": "failed"}}}))
    text = report.write_report(run_dir).read_text()
    assert "| sft | failed |" in text
    assert "## Stage 3" not in text and "## Evaluation" not in text


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RlhfStackError, match="not a run directory"):
        report.write_report(tmp_path)


def test_series_takes_the_first_present_key_and_skips_gaps():
    log = [{"step": 1, "kl": 0.1}, {"step": 2}, {"step": 3, "kl": float("nan")}, {"step": 4, "kl": 0.3}]
    assert report.series(log, ("objective/kl", "kl")) == ([1, 4], [0.1, 0.3])
    assert report.series(log, "missing") == ([], [])


def test_fmt_and_cell():
    assert markdown.fmt(None) == "—"
    assert markdown.fmt(0.123456) == "0.123"
    assert markdown.fmt(7) == "7"
    assert markdown.cell("a|b\nc") == "a\\|b<br>c"
    assert markdown.cell("x" * 500).endswith("…")


def _frontier_run(run_dir):
    """A run whose results.json has intervals, two policies and the best-of-n frontier."""
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"stages": {"eval": {"status": "done"}}}))
    points = [{"n": 1, "kl": 0.0, "win_rate": 0.5, "win_rate_low": 0.4, "win_rate_high": 0.6, "judge_score": 0.1},
              {"n": 2, "kl": 0.1931, "win_rate": 0.6, "win_rate_low": 0.5, "win_rate_high": 0.7, "judge_score": 0.2},
              {"n": 4, "kl": 0.6363, "win_rate": 0.7, "win_rate_low": 0.6, "win_rate_high": 0.8, "judge_score": 0.3}]
    models = [
        {"name": "baseline", "label": "SFT", "judge_score": 0.1, "kl": 0.0, "n_samples": 8},
        {"name": "policy", "label": "PPO", "win_rate": 0.75, "win_rate_low": 0.55, "win_rate_high": 0.9,
         "judge_score": 0.5, "kl": 0.4147, "n_samples": 8},
        {"name": "rloo", "label": "RLOO", "win_rate": 0.8125, "win_rate_low": 0.625, "win_rate_high": 0.9375,
         "judge_score": 0.6, "kl": 2.5, "n_samples": 8},
        {"name": "best_of_n", "label": "best-of-4 (SFT)", "n": 4, **points[-1], "n_samples": 8}]
    placed = [{"name": "policy", "label": "PPO", "kl": 0.4147, "win_rate": 0.75, "position": "above",
               "curve_win_rate": 0.675, "margin": 0.075, "intervals_overlap": True},
              {"name": "rloo", "label": "RLOO", "kl": 2.5, "win_rate": 0.8125, "position": "beyond the curve",
               "curve_win_rate": None, "margin": None, "intervals_overlap": None}]
    results = {"judge": "gold", "n_prompts": 4, "samples_per_prompt": 2, "confidence": 0.95,
               "bootstrap_samples": 1000, "models": models,
               "frontier": {"picker": "reward_model", "best_of_n": points, "policies": placed}}
    (run_dir / "eval").mkdir()
    (run_dir / "eval/results.json").write_text(json.dumps(results))
    _jsonl(run_dir / "eval/samples.jsonl", [
        {"prompt": f"p{i}", "sample": j, "baseline": f"b{i}{j}", "policy": f"q{i}{j}", "rloo": f"r{i}{j}",
         "baseline_judge": 0.0, "policy_judge": 1.0, "rloo_judge": 1.0, "best_of_n": f"x{i}", "best_of_n_judge": 0.5}
        for i in range(4) for j in range(2)])


def test_frontier_report_shows_intervals_the_curve_and_each_policy_against_it(tmp_path):
    run_dir = tmp_path / "run"
    _frontier_run(run_dir)
    text = report.write_report(run_dir).read_text()
    assert "| PPO | 75.0% [55.0, 90.0] | 0.5 |" in text
    assert "| RLOO | 81.2% [62.5, 93.8] |" in text
    assert "**PPO wins 75% against SFT** (95% interval 55.0-90.0%)" in text
    assert "4 held-out prompts, 2 samples a side each" in text and "1000 resamples" in text
    # the curve's table and the sentence per policy (0.75 - 0.675 = 7.5 points)
    assert "| 4 | 0.636 | 70.0% [60.0, 80.0] |" in text
    sentence = ("PPO lies 7.5 points above best-of-n at its KL (KL 0.415 nats; best-of-n interpolated at that "
                "KL: 67.5%). Its interval overlaps the curve's there")
    assert sentence in text.split("## Evaluation")[1] and sentence in text.split("## Stages")[0]  # and the summary
    assert "RLOO's KL (2.5 nats) is beyond the best-of-n curve, which ends at best-of-4 (0.636 nats)" in text
    # how to read a point below the curve, once, under the placements (the analytic KL is an upper bound)
    evaluation = text.split("## Evaluation")[1]
    assert evaluation.count("How to read this:") == 1 and "an upper bound on its true KL" in evaluation
    assert evaluation.index("is beyond the best-of-n curve") < evaluation.index("How to read this:")
    assert (run_dir / "plots" / "eval_win_rate_kl.png").stat().st_size > 1000
    # samples: the first sample of each prompt, every policy a column
    samples = text.split("## Samples")[1]
    assert "| prompt | SFT (score) | PPO (score) | RLOO (score) |" in samples
    assert "b00" in samples and "b01" not in samples


def test_a_policy_beyond_the_curve_is_placed_against_the_point_that_wins_most():
    last = {"n": 16, "kl": 1.8420}
    beyond = {"label": "PPO", "kl": 5.7483, "position": "beyond the curve", "between_n": [8, 8],
              "curve_win_rate": 0.770, "margin": 0.719 - 0.770, "intervals_overlap": True}
    assert markdown.frontier_sentence(beyond, last) == (
        "PPO's KL (5.75 nats) is beyond the best-of-n curve, which ends at best-of-16 (1.84 nats), and best-of-8 "
        "wins 5.1 points more at less KL (77.0%): PPO lies below the curve. Its interval overlaps best-of-n's "
        "there: not a clear separation.")
    ahead = {**beyond, "margin": 0.82 - 0.770, "intervals_overlap": False}
    assert markdown.frontier_sentence(ahead, last).endswith(
        "; PPO wins 5.0 points more than the best best-of-n point (best-of-8, 77.0%), but the curve does not reach "
        "its KL: not placed.")


def test_frontier_plot_needs_something_to_draw(tmp_path):
    from rlhf_stack.evaluation import plots

    plots.use_file_backend()
    assert not plots.frontier_plot(tmp_path / "a.png", [], [("PPO", None, 0.7, None, None)], "kl", "win", "bon")
    curve = [(1, 0.0, 0.5, 0.4, 0.6), (2, 0.19, 0.6, None, None)]  # a bound missing: no band, still a curve
    assert plots.frontier_plot(tmp_path / "b.png", curve, [("PPO", 0.3, 0.7, 0.6, 0.8)], "kl", "win", "bon")
    assert (tmp_path / "b.png").stat().st_size > 1000
