"""A reward model on a rankings file: the stage-2 metric set (`evaluate_reward_model`), used by
the evaluation (EvalConfig.rankings) and by anyone scoring an RM on rankings of their own."""

from __future__ import annotations

from rlhf_stack.evaluation.judges import reward_model_scorer
from rlhf_stack.evaluation.stats import mean, ranking_pair_margins


def evaluate_reward_model(checkpoint: str, rankings: str, max_rows: int | None = None,
                          max_margins: int = 2000) -> dict:
    """Stage-2 metrics of a reward model on any rankings file (`rlhf_stack.metrics.ranking`:
    pairwise accuracy, top-1, Kendall tau, pairwise F1, calibration) plus the reward margins
    score(better) - score(worse) of every strictly ordered pair, for the report's histogram.

    `labeler_agreement` is the annotators' own agreement on the same rows (the noise ceiling, over
    the `n_agreement_pairs` pairs two annotators of one prompt both rank strictly; None when no
    prompt has two). The RM's accuracy counts every row's strictly ordered pairs: both are reported."""
    from rlhf_stack.data import load_rankings, prompt_key
    from rlhf_stack.metrics.agreement import agreement_counts
    from rlhf_stack.metrics.ranking import ranking_metrics

    score = reward_model_scorer(checkpoint)
    data = load_rankings(rankings, max_rows=max_rows)
    # Several annotators rank the same completions: score each (prompt, completion) once.
    unique: dict[tuple[str, str], int] = {}
    pairs = []
    for r in data:
        for c in r.completions:
            key = (prompt_key(r.prompt), c)
            if key not in unique:
                unique[key] = len(pairs)
                pairs.append((r.prompt, c))
    flat = score([p for p, _ in pairs], [c for _, c in pairs])
    per_ranking = [[flat[unique[(prompt_key(r.prompt), c)]] for c in r.completions] for r in data]
    margins = [m for s, r in zip(per_ranking, data, strict=True) for m in ranking_pair_margins(s, r.ranks)]
    n_agree, n_agreement_pairs = agreement_counts(data)
    return {
        "rankings": str(rankings), "n_rankings": len(data), "n_scored": len(pairs),
        **ranking_metrics(per_ranking, [r.ranks for r in data]),
        "labeler_agreement": n_agree / n_agreement_pairs if n_agreement_pairs else None,
        "n_agreement_pairs": n_agreement_pairs,
        "mean_margin": mean(margins),
        "margins": [round(m, 4) for m in margins[:max_margins]],
    }
