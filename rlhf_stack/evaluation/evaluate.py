"""Did RLHF help? A policy vs a baseline on held-out prompts, and a reward model on rankings.

`evaluate_from_config(EvalConfig)` samples one response per prompt from the policy and from the
baseline, and N from the baseline for best-of-N, then reports for each:

- win rate against the baseline under a judge (`judges.py`: a trained reward model, any Python
  scorer, or a registered judge such as the demo's hidden gold judge); ties count one half
  (InstructGPT fig. 1);
- mean judge score and mean proxy-RM score;
- KL(policy || reference) estimated on the policy's own samples, summed over response tokens
  (k1 and k3, Schulman 2020); best-of-N's is the analytic log N - (N-1)/N (Stiennon 2020,
  appendix G; Gao 2022);
- mean response length in tokens;
- perplexity on a held-out corpus: the "alignment tax" (InstructGPT section 4.2).

`evaluate_reward_model(checkpoint, rankings)` is the stage-2 metric set on any rankings file.
The judges are in `judges.py`, the models that sample and score in `models.py`, the report in
`report.py`.
Results go to `output_dir/results.json` and the side-by-side samples to `output_dir/samples.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from rlhf_stack.config import Config, DataPath, config_to_dict
from rlhf_stack.data import preferred_pairs
from rlhf_stack.evaluation.judges import JudgeConfig, ScoreFn, build_judge, reward_model_scorer
from rlhf_stack.evaluation.models import LM, Samples
from rlhf_stack.pipeline.layout import RESULTS_FILE, SAMPLES_FILE


class EvalConfig(Config):
    """Policy vs baseline on held-out prompts (+ optional RM accuracy on a rankings file)."""

    policy: str
    """The model under test: checkpoint dir, hub id or alias (`@ppo` in a recipe)."""
    baseline: str | None = None
    """What the policy is compared with (`@sft` in a recipe); None evaluates the policy alone."""
    reference: str | None = None
    """Model the KL is measured against (PPO's reference); None: the baseline."""
    policy_label: str = "policy"
    """Name of the policy in tables and plots (e.g. PPO)."""
    baseline_label: str = "baseline"
    """Name of the baseline in tables and plots (e.g. SFT)."""
    prompts: DataPath
    """Held-out prompts file (prompts format; rows of any format with a `prompt` also work)."""
    n_prompts: int = 64
    """Evaluate on the first N prompts of the file."""
    judge: JudgeConfig = JudgeConfig()
    """The judge behind the win rate and the judge score."""
    reward_model: str | None = None
    """Proxy reward model (`@reward`): its mean score per side, and the pick in best-of-N. None:
    best-of-N picks by the judge (an oracle best-of-N, an upper bound)."""
    best_of_n: int = 4
    """N for the best-of-N baseline row (0 or 1: no best-of-N row)."""
    max_new_tokens: int = 64
    """Response length cap in tokens (use the PPO stage's value)."""
    temperature: float = 1.0
    """Sampling temperature. Keep 1.0 for an unbiased KL estimate of the policy itself."""
    top_p: float = 1.0
    """Nucleus sampling; below 1.0 the KL estimate is of the truncated sampler."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: off)."""
    max_prompt_length: int = 256
    """Longest prompt in tokens after the chat template; longer prompts are a data error."""
    corpus: DataPath | None = None
    """Held-out corpus file (`{"text"}` rows) for perplexity; None skips perplexity."""
    n_corpus: int = 64
    """Perplexity over the first N corpus rows."""
    corpus_max_length: int = 256
    """Tokens per corpus row for perplexity."""
    rankings: DataPath | None = None
    """Held-out rankings file: the reward model's pairwise accuracy on it (needs `reward_model`)."""
    n_rankings: int | None = None
    """Use the first N rankings of that file (None: all)."""
    batch_size: int = 16
    """Sequences per generation / forward batch."""
    seed: int = 0
    """Sampling seed (the same prompts and seed give the same samples)."""
    output_dir: str = "eval"
    """Where results.json and samples.jsonl go (the runner sets RUN_DIR/eval)."""


# ---- pure statistics ----------------------------------------------------------------------------


def preference(score_a: float, score_b: float) -> float:
    """1 if a beats b, 0 if b beats a, 0.5 for a tie."""
    return 1.0 if score_a > score_b else 0.0 if score_a < score_b else 0.5


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> float:
    """Share of paired prompts where a's score beats b's; ties count one half."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    return sum(preference(a, b) for a, b in zip(scores_a, scores_b, strict=True)) / len(scores_a)


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon 2020, app. G.3)."""
    if n < 1:
        raise ValueError("best-of-n needs n >= 1")
    return math.log(n) - (n - 1) / n


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp of the mean per-token negative log-likelihood."""
    return math.exp(total_nll / max(n_tokens, 1))


def ranking_pair_margins(scores: Sequence[float], ranks: Sequence[int]) -> list[float]:
    """score(better) - score(worse) for every strictly ordered pair of one ranking (ties skipped)."""
    return [scores[i] - scores[j] for i, j in preferred_pairs(ranks)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def sequence_kl(policy_logprobs: list, ref_logprobs: list) -> dict[str, float]:
    """Mean over samples of the summed per-token k1 and k3 KL estimates (nats per response)."""
    from rlhf_stack.ppo.functional import kl_k1, kl_k3

    k1 = [float(kl_k1(p, r).sum()) for p, r in zip(policy_logprobs, ref_logprobs, strict=True)]
    k3 = [float(kl_k3(p, r).sum()) for p, r in zip(policy_logprobs, ref_logprobs, strict=True)]
    return {"kl": mean(k1), "kl_k3": mean(k3)}


# ---- the evaluation -----------------------------------------------------------------------------


def evaluate_from_config(cfg: EvalConfig) -> dict:
    """Run the evaluation `cfg` describes; write results.json + samples.jsonl; return the results."""
    import torch

    from rlhf_stack.data import load_rows

    rows_in = load_rows(cfg.prompts, "prompts", max_rows=cfg.n_prompts, keep_lines=True)
    prompts = [row["prompt"] for row in rows_in]
    reference_name = cfg.reference or cfg.baseline
    how = {"max_prompt_length": cfg.max_prompt_length, "batch_size": cfg.batch_size, "source": cfg.prompts}

    # 1. sample: baseline (one response, and N for best-of-N), then the policy
    baseline = LM(cfg.baseline) if cfg.baseline else None
    reference = baseline if reference_name == cfg.baseline else (LM(reference_name) if reference_name else None)
    sides: dict[str, Samples] = {}
    if baseline is not None:
        torch.manual_seed(cfg.seed)
        sides["baseline"] = baseline.sample(rows_in, cfg, **how)
    bon = None
    if baseline is not None and cfg.best_of_n > 1:
        torch.manual_seed(cfg.seed + 1)
        bon = baseline.sample(rows_in, cfg, n=cfg.best_of_n, **how)
    policy = LM(cfg.policy)
    torch.manual_seed(cfg.seed)
    sides["policy"] = policy.sample(rows_in, cfg, **how)

    # 2. KL to the reference on each side's own samples, and the alignment tax (perplexity)
    rows = {name: _length_row(s) for name, s in sides.items()}
    for name, model in (("baseline", baseline), ("policy", policy)):
        if name in sides and reference is not None:
            rows[name].update(_kl_row(model, reference, sides[name], cfg))
    if cfg.corpus:
        texts = [r["text"] for r in load_rows(cfg.corpus, "corpus", max_rows=cfg.n_corpus)]
        for name, model in (("baseline", baseline), ("policy", policy)):
            if model is not None:
                rows[name]["perplexity"] = perplexity(*model.corpus_nll(texts, cfg.corpus_max_length, cfg.batch_size))
    del policy, baseline, reference

    # 3. judge (and proxy RM) scores; best-of-N picks by the RM, or by the judge when there is none
    judge = build_judge(cfg.judge)
    proxy = reward_model_scorer(cfg.reward_model) if cfg.reward_model else None
    scores = {name: {"judge": judge(prompts, s.texts)} for name, s in sides.items()}
    if proxy is not None:
        for name, s in sides.items():
            scores[name]["rm"] = proxy(prompts, s.texts)
    if bon is not None:
        bon_texts, scores["best_of_n"] = _best_of_n(prompts, bon.texts, cfg.best_of_n, judge, proxy)
        rows["best_of_n"] = {"kl": best_of_n_kl(cfg.best_of_n), "kl_source": "analytic",
                             "response_tokens": _best_of_n_lengths(bon, scores["best_of_n"])}

    # 4. tables
    results = _assemble(cfg, prompts, rows, scores)
    if cfg.rankings and cfg.reward_model:
        rm_eval = evaluate_reward_model(cfg.reward_model, cfg.rankings, cfg.n_rankings)
        results["reward_model"] = rm_eval
        results["summary"].update({f"rm_{key}": rm_eval[key] for key in ("pairwise_accuracy", "labeler_agreement")
                                   if rm_eval[key] is not None})
    samples = _sample_table(prompts, sides, bon_texts if bon is not None else None, scores)
    write_results(Path(cfg.output_dir), results, samples)
    return results


def _length_row(samples: Samples) -> dict:
    return {"response_tokens": mean([len(r) for r in samples.response_ids])}


def _kl_row(model: LM, reference: LM, samples: Samples, cfg: EvalConfig) -> dict:
    if model is reference:
        return {"kl": 0.0, "kl_k3": 0.0, "kl_source": "identical"}
    if model.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        return {"kl": None, "kl_source": "different tokenizers"}
    kl = sequence_kl(model.response_logprobs(samples, cfg.temperature, cfg.batch_size),
                     reference.response_logprobs(samples, cfg.temperature, cfg.batch_size))
    return {**kl, "kl_source": "sampled"}


def _best_of_n(prompts, texts: list[str], n: int, judge: ScoreFn, proxy: ScoreFn | None):
    """Pick, for each prompt, the best of its n samples by the proxy RM (else the judge)."""
    repeated = [p for p in prompts for _ in range(n)]
    selector = proxy(repeated, texts) if proxy is not None else judge(repeated, texts)
    picks = [max(range(i * n, (i + 1) * n), key=lambda j: selector[j]) for i in range(len(prompts))]
    chosen = [texts[j] for j in picks]
    picked_scores = {"judge": judge(prompts, chosen), "picks": picks}
    if proxy is not None:
        picked_scores["rm"] = [selector[j] for j in picks]
    return chosen, picked_scores


def _best_of_n_lengths(bon: Samples, scores: dict) -> float:
    return mean([len(bon.response_ids[j]) for j in scores["picks"]])


def _assemble(cfg: EvalConfig, prompts: list, rows: dict, scores: dict) -> dict:
    labels = {"baseline": cfg.baseline_label, "policy": cfg.policy_label,
              "best_of_n": f"best-of-{cfg.best_of_n} ({cfg.baseline_label})"}
    models = {"baseline": cfg.baseline, "policy": cfg.policy, "best_of_n": cfg.baseline}
    table = []
    for name in ("baseline", "policy", "best_of_n"):
        if name not in rows:
            continue
        row = {"name": name, "label": labels[name], "model": models[name], **rows[name],
               "judge_score": mean(scores[name]["judge"])}
        if "rm" in scores[name]:
            row["rm_score"] = mean(scores[name]["rm"])
        if "baseline" in scores and name != "baseline":
            row["win_rate"] = win_rate(scores[name]["judge"], scores["baseline"]["judge"])
        table.append(row)
    summary = {f"{row['name']}_{key}": row[key] for row in table
               for key in ("win_rate", "kl", "judge_score", "rm_score", "perplexity", "response_tokens")
               if row.get(key) is not None}
    return {"judge": cfg.judge.kind, "n_prompts": len(prompts), "summary": summary, "models": table,
            "config": config_to_dict(cfg)}


def _sample_table(prompts, sides: dict[str, Samples], bon_texts, scores) -> list[dict]:
    out = []
    for i, prompt in enumerate(prompts):
        row = {"prompt": prompt}
        for name, samples in sides.items():
            row[name] = samples.texts[i]
            row[f"{name}_judge"] = scores[name]["judge"][i]
        if bon_texts is not None:
            row["best_of_n"] = bon_texts[i]
            row["best_of_n_judge"] = scores["best_of_n"]["judge"][i]
        out.append(row)
    return out


def write_results(out_dir: Path, results: dict, samples: list[dict]) -> Path:
    """results.json last (atomic): its presence marks a finished evaluation."""
    from rlhf_stack.data import write_jsonl

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(samples, out_dir / SAMPLES_FILE)
    path = out_dir / RESULTS_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(path)
    return path


# ---- reward-model evaluation --------------------------------------------------------------------


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
