"""Did RLHF help? Policies vs a baseline on held-out prompts, and a reward model on rankings.

`evaluate_from_config(EvalConfig)` samples `samples_per_prompt` responses per prompt from each
policy and from the baseline, and one pool of max(best_of_n) from the baseline for the best-of-n
curve, then reports for each model:

- win rate against the baseline under a judge (`judges.py`: a trained reward model, any Python
  scorer, or a registered judge such as the demo's hidden gold judge): the share of paired samples
  (a policy's j-th sample against the baseline's j-th) it wins, ties one half (InstructGPT fig. 1),
  with a bootstrap interval that resamples prompts (`stats.bootstrap_interval`);
- mean judge score and mean proxy-RM score;
- KL(policy || reference) estimated on the policy's own samples, summed over response tokens
  (k1 and k3, Schulman 2020); best-of-n's is the analytic log n - (n-1)/n (Stiennon 2020,
  appendix G; Gao 2022);
- mean response length in tokens;
- perplexity on a held-out corpus: the "alignment tax" (InstructGPT section 4.2);

and the KL-win-rate frontier: best-of-n from the baseline for every n in `best_of_n` (the RM picks;
with no RM the judge picks, an oracle) as a curve, each policy as a point, and where each policy
lies against the curve at its own KL (`stats.frontier_position`).

`evaluate_reward_model(checkpoint, rankings)` (`reward_accuracy.py`) is the stage-2 metric set on
any rankings file; the evaluation calls it when given `rankings`. The statistics are in `stats.py`, the judges in `judges.py`, the models that sample and score in
`models.py`, the proxy RM that scores samples from the blocks they were drawn with in `reward_trunk.py`,
the report in `report.py`.
Results go to `output_dir/results.json` and the side-by-side samples to `output_dir/samples.jsonl`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from rlhf_stack.config import Config, DataPath, config_to_dict
from rlhf_stack.evaluation import stats
from rlhf_stack.evaluation.judges import JudgeConfig, ScoreFn, build_judge
from rlhf_stack.evaluation.models import LM, Samples
from rlhf_stack.evaluation.reward_accuracy import evaluate_reward_model
from rlhf_stack.evaluation.reward_trunk import proxy_reward_model, sampling_args, scores_then_release
from rlhf_stack.evaluation.stats import best_of_n_kl, mean, perplexity, sequence_kl
from rlhf_stack.pipeline.layout import RESULTS_FILE, SAMPLES_FILE

RESERVED_NAMES = ("baseline", "policy", "best_of_n")


class PolicySpec(Config):
    """One more trained policy to place on the same frontier (e.g. an RLOO or a DPO checkpoint)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$")
    """Its key in results.json (`<name>_win_rate` in the summary, a column of samples.jsonl), e.g. `rloo`."""
    path: str
    """Checkpoint dir, hub id or alias (`@ppo` in a recipe)."""
    label: str | None = None
    """Name in tables and plots (e.g. RLOO); None: `name`."""


class EvalConfig(Config):
    """Policies vs a baseline on held-out prompts, the best-of-n frontier (+ optional RM accuracy on
    a rankings file).

    What it costs, with P = n_prompts, s = samples_per_prompt and N = max(best_of_n): generation of
    s * P responses per policy and for the baseline, plus N * P baseline responses for the whole
    best-of-n curve (one pool serves every n); a forward pass of the reference over each policy's
    s * P samples for the KL (the policy's own log-probs are recorded while it samples); the proxy RM (without one, the judge) over the N * P
    pool; the judge over every side's samples and the picks; the bootstrap: no model, milliseconds.
    Generation dominates. The quickstart's 64 prompts with s = 2 and N = 16 generate 128 + 128 +
    1024 responses (a policy, the baseline, the pool), 3.3x the 384 of one sample a side and
    best-of-4 before the frontier; with the recipe's `best_of_n: 4`, 512 (1.3x)."""

    policy: str | None = None
    """The model under test: checkpoint dir, hub id or alias (`@ppo` in a recipe). None: only the
    `policies` list."""
    policies: list[PolicySpec] = []
    """More policies on the same frontier, each `{name, path, label}`, sampled with the same seeds as
    `policy` (e.g. PPO-GAE, RLOO and DPO against one SFT baseline). Each costs s * P more responses."""
    baseline: str | None = None
    """What the policies are compared with (`@sft` in a recipe); None evaluates them alone (no win
    rate, no best-of-n)."""
    reference: str | None = None
    """Model the KL is measured against (PPO's reference); None: the baseline."""
    policy_label: str = "policy"
    """Name of `policy` in tables and plots (e.g. PPO)."""
    baseline_label: str = "baseline"
    """Name of the baseline in tables and plots (e.g. SFT)."""
    prompts: DataPath
    """Held-out prompts file (prompts format; rows of any format with a `prompt` also work)."""
    n_prompts: int = 64
    """Evaluate on the first P prompts of the file. The bootstrap resamples prompts, so P, more than
    samples_per_prompt, sets the width of the intervals (64 prompts: up to about +-12 points at a
    50% win rate, less as far as a prompt's samples disagree among themselves)."""
    samples_per_prompt: int = Field(2, ge=1)
    """s: responses per prompt from each policy and from the baseline; the policy's j-th sample
    meets the baseline's j-th. Two or more let the interval see the spread within a prompt. Cost:
    s * P generations per policy and for the baseline."""
    judge: JudgeConfig = JudgeConfig()
    """The judge behind the win rate and the judge score."""
    reward_model: str | None = None
    """Proxy reward model (`@reward`): its mean score per side, and the pick in best-of-n. None:
    best-of-n picks by the judge (an oracle best-of-n, an upper bound, labelled as such)."""
    best_of_n: list[int] = [1, 2, 4, 8, 16]
    """The n of the best-of-n curve. One pool of max(n) baseline samples per prompt is drawn once and
    best-of-n picks among its first n, so the curve costs max(n) * P generations (16 * 64 = 1024 for
    the quickstart's prompts). A single number is accepted (4 means [4]); 0 or 1 alone, or an empty
    list: no best-of-n. The `best_of_n` row of results.json is the largest n."""
    bootstrap_samples: int = Field(1000, ge=1)
    """Resamples of the prompts behind every interval (milliseconds, no model involved)."""
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    """Coverage of the percentile bootstrap intervals."""
    max_new_tokens: int = 64
    """Response length cap in tokens (use the PPO stage's value)."""
    temperature: float = 1.0
    """Sampling temperature. Keep 1.0 for an unbiased KL estimate of the policy itself."""
    top_p: float = 1.0
    """Nucleus sampling; below 1.0 the KL estimate is of the truncated sampler."""
    top_k: int = 0
    """Sample among the k most likely tokens (0: off)."""
    pack_weights_for_sampling: bool = True
    """CPU, float32: sample through oneDNN-packed copies of the linear weights, made once for all
    of a model's sampling batches and freed after; see PPOConfig.pack_weights_for_sampling
    (`ppo/packed.py`)."""
    unpadded_prompt_passes: bool = True
    """Run each `generate()` call's prompt pass unpadded, the prompts' shared start once; see
    PPOConfig.unpadded_prompt_passes (`ppo/prefill.py`)."""
    max_prompt_length: int = 256
    """Longest prompt in tokens after the chat template; longer prompts are a data error."""
    corpus: DataPath | None = None
    """Held-out corpus file (`{"text"}` rows) for perplexity; None skips perplexity."""
    n_corpus: int = 64
    """Perplexity over the first N corpus rows (one forward pass per model)."""
    corpus_max_length: int = 256
    """Tokens per corpus row for perplexity."""
    rankings: DataPath | None = None
    """Held-out rankings file: the reward model's pairwise accuracy on it (needs `reward_model`)."""
    n_rankings: int | None = None
    """Use the first N rankings of that file (None: all)."""
    batch_size: int = Field(16, ge=1)
    """Sequences per forward batch (KL, perplexity)."""
    generation_batch_size: int = Field(64, ge=1)
    """Sequences per `generate()` call. Each prompt's pass runs once for its samples and prompts go
    shortest first, so a larger batch mostly adds rows to each decoding step, where a CPU's
    matmuls are far from full: on 2 cores, 64 sampled 2 responses to each of the quickstart's 64
    prompts 1.65x as fast as 16 did before grouping (4 a prompt: 1.97x; benchmarks/RESULTS.md)."""
    seed: int = 0
    """Sampling seed (the same prompts and seed give the same samples; every policy and the baseline
    sample with it, the best-of-n pool with seed + 1) and the bootstrap's seed."""
    output_dir: str = "eval"
    """Where results.json and samples.jsonl go (the runner sets RUN_DIR/eval)."""

    @field_validator("best_of_n", mode="before")
    @classmethod
    def _best_of_n_list(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value] if value > 1 else []
        return value

    @field_validator("best_of_n")
    @classmethod
    def _best_of_n_values(cls, ns: list[int]) -> list[int]:
        if any(n < 1 for n in ns):
            raise ValueError(f"every best-of-n needs n >= 1 (got {ns})")
        ns = sorted(set(ns))
        return ns if ns and ns[-1] > 1 else []

    @model_validator(mode="after")
    def _check_policies(self) -> EvalConfig:
        if self.policy is None and not self.policies:
            raise ValueError("nothing to evaluate: set `policy` or `policies`")
        names = [p.name for p in self.policies]
        clash = sorted({n for n in names if names.count(n) > 1 or n in RESERVED_NAMES or n.startswith("best_of")})
        if clash:
            raise ValueError(f"policies: names must be unique and not {', '.join(RESERVED_NAMES)} or best_of*"
                             f" (got {', '.join(clash)})")
        return self

    def policy_specs(self) -> list[tuple[str, str, str]]:
        """(name, label, path) of every policy under test, `policy` first."""
        single = [("policy", self.policy_label, self.policy)] if self.policy is not None else []
        return single + [(p.name, p.label or p.name, p.path) for p in self.policies]


# ---- the evaluation -----------------------------------------------------------------------------


def evaluate_from_config(cfg: EvalConfig) -> dict:
    """Run the evaluation `cfg` describes; write results.json + samples.jsonl; return the results."""
    import torch

    from rlhf_stack.data import load_rows

    rows_in = load_rows(cfg.prompts, "prompts", max_rows=cfg.n_prompts, keep_lines=True)
    prompts = [row["prompt"] for row in rows_in]
    corpus = [r["text"] for r in load_rows(cfg.corpus, "corpus", max_rows=cfg.n_corpus)] if cfg.corpus else None
    reference_name = cfg.reference or cfg.baseline
    how = {"max_prompt_length": cfg.max_prompt_length, "batch_size": cfg.generation_batch_size, "source": cfg.prompts}

    # 1. the baseline: s samples per prompt, and one pool of max(n) per prompt for the best-of-n curve.
    # The proxy RM loads first: it keeps the bottom blocks' output of the samples it shares them with,
    # and scores each side right after it is sampled (`reward_trunk.scores_then_release`).
    proxy = proxy_reward_model(cfg.reward_model) if cfg.reward_model else None
    rm: dict[str, list[float] | None] = {}
    baseline = LM(cfg.baseline) if cfg.baseline else None
    reference = baseline if reference_name == cfg.baseline else (LM(reference_name) if reference_name else None)
    sides: dict[str, Samples] = {}
    rows: dict[str, dict] = {}
    pool = None
    if baseline is not None:
        scored = sampling_args(proxy, baseline)  # the proxy RM's use of the baseline's trunk, checked once
        torch.manual_seed(cfg.seed)
        sides["baseline"] = baseline.sample(rows_in, cfg, n=cfg.samples_per_prompt, desc=f"eval: {cfg.baseline_label}",
                                            **scored, **how)
        rm["baseline"] = scores_then_release(proxy, prompts, sides["baseline"], cfg.samples_per_prompt)
        rows["baseline"] = _model_row(baseline, reference, sides["baseline"], corpus, cfg)
        if cfg.best_of_n:
            torch.manual_seed(cfg.seed + 1)
            pool = baseline.sample(rows_in, cfg, n=cfg.best_of_n[-1], desc=f"eval: best-of-n pool ({cfg.baseline_label})",
                                   **scored, **how)
            rm["pool"] = scores_then_release(proxy, prompts, pool, cfg.best_of_n[-1])

    # 2. each policy with the same seed: its samples, KL to the reference on them, perplexity
    for name, label, path in cfg.policy_specs():
        model = LM(path)
        depth = model.shared_trunk_depth(reference) if reference is not None else 0  # KL pass: top blocks only
        torch.manual_seed(cfg.seed)
        sides[name] = model.sample(rows_in, cfg, n=cfg.samples_per_prompt, desc=f"eval: {label}",
                                   record=reference is not None, **sampling_args(proxy, model, depth), **how)
        rm[name] = scores_then_release(proxy, prompts, sides[name], cfg.samples_per_prompt)
        rows[name] = _model_row(model, reference, sides[name], corpus, cfg)
        del model
    del baseline, reference

    # 3. judge (and proxy RM) scores; best-of-n picks by the RM, or by the judge when there is none
    judge = build_judge(cfg.judge)
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    scores = {name: {"judge": judge(repeated, s.texts)} for name, s in sides.items()}
    if proxy is not None:
        for name in sides:
            scores[name]["rm"] = rm[name]
    curve = _best_of_n_curve(prompts, pool.texts, cfg.best_of_n[-1], cfg.best_of_n, judge, rm.get("pool")) if pool else {}
    for picked in curve.values():
        picked["response_tokens"] = mean([len(pool.response_ids[j]) for j in picked["picks"]])

    # 4. win rates with their intervals, the frontier, the tables
    results = _assemble(cfg, prompts, rows, scores, curve, picker="reward_model" if proxy else "judge (oracle)")
    if proxy is not None:
        held = proxy.held.reused if proxy.held is not None else 0
        results["reward_model_scoring"] = {"shared_blocks": proxy.held.depth if held else 0,
                                           "samples_from_shared_blocks": held}
    if cfg.rankings and cfg.reward_model:
        rm_eval = evaluate_reward_model(cfg.reward_model, cfg.rankings, cfg.n_rankings)
        results["reward_model"] = rm_eval
        results["summary"].update({f"rm_{key}": rm_eval[key] for key in ("pairwise_accuracy", "labeler_agreement")
                                   if rm_eval[key] is not None})
    samples = _sample_table(prompts, cfg.samples_per_prompt, sides, scores, curve)
    write_results(Path(cfg.output_dir), results, samples)
    return results


def _model_row(model: LM, reference: LM | None, samples: Samples, corpus: list[str] | None, cfg: EvalConfig) -> dict:
    """Length, KL to the reference on the model's own samples, and held-out perplexity."""
    row = {"response_tokens": mean([len(r) for r in samples.response_ids])}
    if reference is not None:
        row.update(_kl_row(model, reference, samples, cfg))
    if corpus is not None:
        row["perplexity"] = perplexity(*model.corpus_nll(corpus, cfg.corpus_max_length, cfg.batch_size))
    return row


def _kl_row(model: LM, reference: LM, samples: Samples, cfg: EvalConfig) -> dict:
    if model is reference:
        return {"kl": 0.0, "kl_k3": 0.0, "kl_source": "identical"}
    if model.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        return {"kl": None, "kl_source": "different tokenizers"}
    own = samples.logprobs or model.response_logprobs(samples, cfg.temperature, cfg.batch_size)  # recorded: no pass
    kl = sequence_kl(own, reference.response_logprobs(samples, cfg.temperature, cfg.batch_size, samples.trunk_depth))
    return {**kl, "kl_source": "sampled"}


def _best_of_n_curve(prompts, texts: list[str], pool_size: int, ns: list[int], judge: ScoreFn,
                     rm_pool: list[float] | None) -> dict[int, dict]:
    """Per n, best-of-n from one pool of `pool_size` samples per prompt (grouped by prompt): the picks
    (indices into the pool) among the first n by the proxy RM's scores `rm_pool` (None: by the
    judge), their texts, and their judge (and RM) scores. The judge scores each picked sample
    once, however many n pick it."""
    repeated = [p for p in prompts for _ in range(pool_size)]
    selector = rm_pool if rm_pool is not None else judge(repeated, texts)
    judged = {} if rm_pool is not None else dict(enumerate(selector))
    picks = {n: stats.best_of_n_picks(selector, pool_size, n) for n in ns}
    missing = sorted({j for chosen in picks.values() for j in chosen} - set(judged))
    judged.update(zip(missing, judge([repeated[j] for j in missing], [texts[j] for j in missing]), strict=True))
    curve = {}
    for n, chosen in picks.items():
        curve[n] = {"picks": chosen, "texts": [texts[j] for j in chosen], "judge": [judged[j] for j in chosen]}
        if rm_pool is not None:
            curve[n]["rm"] = [rm_pool[j] for j in chosen]
    return curve


def _assemble(cfg: EvalConfig, prompts: list, rows: dict, scores: dict, curve: dict, picker: str) -> dict:
    """results.json: the models table (baseline, policies, best-of-max(n)), the frontier, the summary."""
    boot = {"n_resamples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": cfg.seed}
    labels = {"baseline": cfg.baseline_label, **{name: label for name, label, _ in cfg.policy_specs()}}
    models = {"baseline": cfg.baseline, **{name: path for name, _, path in cfg.policy_specs()}}
    table = []
    for name in rows:
        row = {"name": name, "label": labels[name], "model": models[name], **rows[name],
               "judge_score": mean(scores[name]["judge"]), "n_samples": len(scores[name]["judge"])}
        if "rm" in scores[name]:
            row["rm_score"] = mean(scores[name]["rm"])
        if "baseline" in scores and name != "baseline":
            row.update(_win(scores[name]["judge"], scores["baseline"]["judge"], len(prompts), boot))
        table.append(row)
    frontier = None
    if curve:
        points = [{"n": n, "kl": best_of_n_kl(n), "kl_source": "analytic", "response_tokens": picked["response_tokens"],
                   "judge_score": mean(picked["judge"]), "rm_score": mean(picked["rm"]) if "rm" in picked else None,
                   **_win(picked["judge"], scores["baseline"]["judge"], len(prompts), boot)}
                  for n, picked in curve.items()]
        frontier = _frontier(points, [row for row in table if row["name"] != "baseline"])
        frontier.update({"picker": picker, "confidence": cfg.confidence, "bootstrap_samples": cfg.bootstrap_samples})
        top = points[-1]
        oracle = "" if picker == "reward_model" else ", judge picks: oracle"
        table.append({"name": "best_of_n", "label": f"best-of-{top['n']} ({cfg.baseline_label}{oracle})",
                      "model": cfg.baseline, **{k: v for k, v in top.items() if v is not None}})
    summary = {f"{row['name']}_{key}": row[key] for row in table
               for key in ("win_rate", "win_rate_low", "win_rate_high", "kl", "judge_score", "rm_score",
                           "perplexity", "response_tokens")
               if row.get(key) is not None}
    for placed in (frontier or {}).get("policies", []):
        if placed["margin"] is not None:
            summary[f"{placed['name']}_frontier_margin"] = placed["margin"]
    return {"judge": cfg.judge.kind, "n_prompts": len(prompts), "samples_per_prompt": cfg.samples_per_prompt,
            "confidence": cfg.confidence, "bootstrap_samples": cfg.bootstrap_samples, "summary": summary,
            "models": table, "frontier": frontier, "config": config_to_dict(cfg)}


def _win(scores: list[float], baseline_scores: list[float], n_prompts: int, boot: dict) -> dict:
    w = stats.win_rate_with_interval(stats.paired_outcomes(scores, baseline_scores, n_prompts), **boot)
    return {"win_rate": w.win_rate, "win_rate_low": w.low, "win_rate_high": w.high, "n_samples": w.n_samples}


def _frontier(points: list[dict], policy_rows: list[dict]) -> dict:
    """The best-of-n points and, per policy with a win rate, its position against the curve."""
    curve = [stats.FrontierPoint(p["n"], p["kl"], p["win_rate"], p["win_rate_low"], p["win_rate_high"])
             for p in points]
    placed = []
    for row in policy_rows:
        if row.get("win_rate") is None:
            continue
        at = stats.frontier_position(row.get("kl"), row["win_rate"], curve)
        overlap = None if at.curve_low is None else (row["win_rate_low"] <= at.curve_high
                                                     and at.curve_low <= row["win_rate_high"])
        placed.append({"name": row["name"], "label": row["label"], "kl": row.get("kl"), "win_rate": row["win_rate"],
                       "win_rate_low": row["win_rate_low"], "win_rate_high": row["win_rate_high"],
                       "position": at.position, "curve_win_rate": at.curve_win_rate, "margin": at.margin,
                       "curve_win_rate_low": at.curve_low, "curve_win_rate_high": at.curve_high,
                       "between_n": list(at.between) if at.between else None, "intervals_overlap": overlap})
    return {"best_of_n": points, "policies": placed}


def _sample_table(prompts, per_prompt: int, sides: dict[str, Samples], scores: dict, curve: dict) -> list[dict]:
    """One row per prompt and sample index j: each side's j-th sample with its judge score, and the
    largest n's best-of-n pick (the same for every j of a prompt)."""
    top = curve[max(curve)] if curve else None
    out = []
    for i, prompt in enumerate(prompts):
        for j in range(per_prompt):
            row = {"prompt": prompt, "sample": j}
            for name, samples in sides.items():
                row[name] = samples.texts[i * per_prompt + j]
                row[f"{name}_judge"] = scores[name]["judge"][i * per_prompt + j]
            if top is not None:
                row["best_of_n"] = top["texts"][i]
                row["best_of_n_judge"] = top["judge"][i]
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
