"""The run report: RUN_DIR/report.md + PNG plots, readable on GitHub (relative image links).

Sections, each present only when its stage left something to show:
summary (with a line per stage whose `on_nonfinite: skip_step` dropped updates) · stages (status, time, headline metric) · SFT train/eval loss · reward model eval accuracy beside the
labelers' own agreement on the same rankings (the noise ceiling) and the reward-margin histogram ·
PPO score, KL and kl_coef, entropy and response length over steps ·
evaluation table (baseline vs each policy vs best-of-n: win rate with its interval, scores, KL,
length, perplexity) · the KL-win-rate frontier (best-of-n curve, each policy as a point, and where
each lies against the curve at its KL) · sample responses to the same prompts side by side.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rlhf_stack.errors import RlhfStackError
from rlhf_stack.evaluation.markdown import fmt, frontier_sentence, image, prompt_text, table, win_text
from rlhf_stack.evaluation.plots import frontier_plot, histogram, line_plot, use_file_backend
from rlhf_stack.pipeline.layout import PPO_LOG, SAMPLES_FILE, TRAIN_LOG, RunLayout

N_SAMPLE_ROWS = 8
# Under the placement sentences: what a point below the curve does and does not mean.
FRONTIER_READING = (
    "How to read this: best-of-n's KL is the analytic log n - (n-1)/n, an upper bound on its true KL "
    "(Beirami et al. 2024), so the curve is drawn no further left than it is. A trained policy's KL is "
    "sampled. Gao et al. (2022, \"Scaling Laws for Reward Model Overoptimization\") found RL slower than "
    "best-of-n as a function of KL, so a policy below the curve is the usual outcome, not a sign of a broken "
    "run. What the policy buys is one sample per prompt at generation time, where best-of-n needs n samples "
    "and a reward-model pass over each.")

# PPO log keys, first present wins: the trainer's names, then common alternatives.
PPO_SERIES = {
    "score": ("score", "scores", "mean_score", "env/score"),
    "reward": ("reward", "rewards", "mean_reward", "non_score_reward"),
    "kl": ("kl", "mean_kl", "objective/kl"),
    "kl_coef": ("kl_coef", "objective/kl_coef"),
    "entropy": ("entropy", "mean_entropy", "objective/entropy"),
    "response_length": ("response_length", "response_tokens", "mean_response_length"),
}


def write_report(run_dir: str | Path) -> Path:
    """(Re)write RUN_DIR/report.md and RUN_DIR/plots/*.png from what the run left on disk."""
    from rlhf_stack.pipeline.stages import STAGES

    use_file_backend()
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    manifest = _read_json(layout.manifest)
    if manifest is None and not any(layout.stage_dir(s).is_dir() for s in STAGES):
        raise RlhfStackError(f"{run_dir} is not a run directory (no manifest.json and no stage directories)")
    manifest = manifest or {"stages": {}}
    layout.plots.mkdir(parents=True, exist_ok=True)
    results = _read_json(layout.stage_dir("eval") / STAGES["eval"].marker)
    parts = [
        _header(run_dir, manifest),
        _summary_section(manifest, results),
        _stages_section(manifest),
        _sft_section(run_dir),
        _reward_section(run_dir, results),
        *(_ppo_section(run_dir, name) for name in _stages_of_kind(manifest, "ppo")),
        _eval_section(run_dir, results),
        _samples_section(run_dir, results),
    ]
    text = "\n\n".join(p for p in parts if p) + "\n"
    path = layout.report
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# ---- readers ------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file. Split on "\\n" only: str.splitlines() also splits on U+2028,
    U+0085 and others, which json.dumps(ensure_ascii=False) leaves raw inside a sampled text."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def series(log: list[dict], keys: tuple[str, ...] | str, step_key: str = "step") -> tuple[list, list]:
    """(steps, values) of the first key in `keys` found in the log entries; entries without it skipped."""
    keys = (keys,) if isinstance(keys, str) else keys
    key = next((k for k in keys if any(k in e for e in log)), None)
    if key is None:
        return [], []
    points: dict = {}  # step -> value; a step logged twice (e.g. the final re-evaluation) keeps the last
    for n, entry in enumerate(log):
        value = entry.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            points[entry.get(step_key, n)] = value
    return list(points), list(points.values())


# ---- sections -----------------------------------------------------------------------------------

HEADLINES = {
    "sft": ("eval_loss_before", "eval_loss", "train_loss"),
    "reward": ("eval_pairwise_accuracy", "pairwise_accuracy", "eval_accuracy", "accuracy", "eval_loss"),
    "dpo": ("eval_pairwise_accuracy", "eval_mean_margin", "eval_chosen_logratio", "train_loss"),
    "ppo": ("score", "mean_score", "reward", "kl", "steps"),
    "eval": ("policy_win_rate", "policy_kl", "best_of_n_win_rate", "rm_pairwise_accuracy", "rm_labeler_agreement"),
}


def _rm_accuracy_text(rm_eval: dict, bold: bool = False) -> str:
    """The RM's pairwise accuracy on a rankings file, next to the labelers' own agreement on the same
    rankings (the noise ceiling) where the file has two annotators for some prompt."""
    b = "**" if bold else ""
    text = (f"pairwise accuracy {b}{fmt(rm_eval.get('pairwise_accuracy'))}{b} "
            f"over {fmt(rm_eval.get('n_pairs'))} ordered pairs")
    agreement = rm_eval.get("labeler_agreement")
    if isinstance(agreement, int | float):
        pairs = rm_eval.get("n_agreement_pairs")
        text += (f"; labelers' own agreement on the same rankings: {b}{fmt(agreement)}{b}"
                 + (f" over {pairs} pairs both labelers rank strictly" if pairs else "") + " (the noise ceiling)")
    return text


def _header(run_dir: Path, manifest: dict) -> str:
    title = Path(manifest["recipe"]).stem if manifest.get("recipe") else run_dir.name
    versions = manifest.get("versions") or {}
    lines = [f"# Run report: {title}", "",
             f"Run directory `{run_dir}`" + (f", recipe `{manifest['recipe']}`" if manifest.get("recipe") else "")
             + (f", last updated {manifest['updated_at']}." if manifest.get("updated_at") else ".")]
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return "\n".join(lines)


def _summary_section(manifest: dict, results: dict | None) -> str:
    """The answers first: did the RM learn the preference, did PPO beat SFT, at what KL, how long."""
    stages = manifest.get("stages") or {}
    lines = []
    rm = (stages.get("reward") or {}).get("metrics") or {}
    accuracy = next((rm[k] for k in HEADLINES["reward"][:4] if isinstance(rm.get(k), int | float)), None)
    if accuracy is not None:
        pairs = rm.get("eval_n_pairs")
        ceiling = rm.get("eval_labeler_agreement")
        lines.append(f"- Reward model, held-out pairwise accuracy: **{fmt(accuracy)}**"
                     + (f" ({pairs} ordered pairs)" if pairs else "")
                     + (f"; the labelers' own agreement on those rankings (the noise ceiling): **{fmt(ceiling)}**"
                        if isinstance(ceiling, int | float) else ""))
    off_prompt = rm.get("eval_off_prompt_accuracy")
    if isinstance(off_prompt, int | float):
        lines.append(f"- Reward model, held-out answers scored above an answer to another prompt: **{fmt(off_prompt)}** "
                     "(0.5: it cannot tell whether an answer is on topic; `reward.off_prompt_negatives` trains it to)")
    rm_eval = (results or {}).get("reward_model") or {}
    if rm_eval.get("pairwise_accuracy") is not None:
        lines.append(f"- Reward model on `{rm_eval.get('rankings')}`: {_rm_accuracy_text(rm_eval, bold=True)}")
    models = (results or {}).get("models", [])
    baseline = next((m["label"] for m in models if m["name"] == "baseline"), "baseline")
    for m in models:
        if m.get("win_rate") is not None:
            lines.append(f"- {m['label']} vs {baseline}, {results.get('judge')} judge: win rate **{win_text(m)}** "
                         f"at KL {fmt(m.get('kl'))} nats")
    frontier = (results or {}).get("frontier") or {}
    last = (frontier.get("best_of_n") or [None])[-1]
    lines += [f"- {frontier_sentence(placed, last)}" for placed in frontier.get("policies", [])]
    for name, entry in stages.items():  # on_nonfinite: skip_step dropped some updates
        skipped = (entry.get("metrics") or {}).get("skipped_updates")
        if isinstance(skipped, int) and skipped > 0:
            lines.append(f"- {name}: **{skipped}** optimizer update{'s' * (skipped > 1)} skipped for a NaN or inf in "
                         "the loss, gradients, rewards or advantages (`on_nonfinite: skip_step`; which step and "
                         "what: the stage's log)")
    durations = [e["duration_s"] for e in stages.values() if isinstance(e.get("duration_s"), int | float)]
    if durations:
        lines.append(f"- Stage time: {sum(durations) / 60:.1f} min in all (the last attempt of each stage)")
    return "## Summary\n\n" + "\n".join(lines) if lines else ""


def _stages_section(manifest: dict) -> str:
    stages = manifest.get("stages") or {}
    if not stages:
        return ""
    rows = []
    for name, entry in stages.items():
        metrics = entry.get("metrics") or {}
        kind = entry.get("kind", name)
        shown = [f"{k} {fmt(metrics[k])}" for k in HEADLINES.get(kind, ()) if isinstance(metrics.get(k), int | float)]
        duration = entry.get("duration_s")
        rows.append([name if kind == name else f"{name} ({kind})", entry.get("status", "?"), f"{duration:.0f} s" if duration is not None else "—",
                     ", ".join(shown) or "—"])
    return "## Stages\n\n" + table(["stage", "status", "time", "headline metrics"], rows)


def _sft_section(run_dir: Path) -> str:
    log = read_jsonl(RunLayout(run_dir).log("sft", TRAIN_LOG))
    info = _read_json(RunLayout(run_dir).stage_record("sft")) or {}
    metrics = info.get("metrics") or {}
    if not log and not metrics:
        return ""
    out = ["## Stage 1: supervised fine-tuning"]
    if "eval_loss" in metrics:
        before = metrics.get("eval_loss_before")
        out.append(f"Held-out loss {fmt(before)} before tuning, {fmt(metrics['eval_loss'])} after "
                   f"({fmt(metrics.get('n_train'))} training examples, {fmt(metrics.get('steps'))} steps).")
    drawn = line_plot(RunLayout(run_dir).plots / "sft_loss.png", [
        ("loss", [("train", *series(log, "loss")), ("eval", *series(log, "eval_loss"))])])
    if drawn:
        out.append(image("sft_loss.png", "SFT train and eval loss"))
    return "\n\n".join(out)


def _reward_section(run_dir: Path, results: dict | None) -> str:
    log = read_jsonl(RunLayout(run_dir).log("reward", TRAIN_LOG))
    metrics = (_read_json(RunLayout(run_dir).stage_record("reward")) or {}).get("metrics") or {}
    rm_eval = (results or {}).get("reward_model") or {}
    if not (log or metrics or rm_eval):
        return ""
    out = ["## Stage 2: reward model"]
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float) and ("acc" in k or "tau" in k or "f1" in k or "agreement" in k)}
    if shown:
        out.append(table(["held-out metric (stage 2)", "value"], [[k, v] for k, v in shown.items()]))
    if rm_eval:
        out.append(f"On `{rm_eval.get('rankings')}`: {_rm_accuracy_text(rm_eval)}. Top-1 accuracy "
                   f"{fmt(rm_eval.get('top1_accuracy'))}, Kendall tau {fmt(rm_eval.get('kendall_tau'))}, "
                   f"mean margin {fmt(rm_eval.get('mean_margin'))}.")
    accuracy_key = next((k for e in log for k in e if k.startswith("eval_") and "accuracy" in k), None)
    drawn = line_plot(RunLayout(run_dir).plots / "reward_training.png", [
        ("train loss", [("train", *series(log, "loss"))]),
        ("eval accuracy", [(accuracy_key or "", *series(log, accuracy_key or "-"))]),
    ])
    if drawn:
        out.append(image("reward_training.png", "reward model loss and eval accuracy"))
    if histogram(RunLayout(run_dir).plots / "reward_margins.png", rm_eval.get("margins") or [],
                 "reward margin, better - worse", "r(better) - r(worse)"):
        out.append(image("reward_margins.png", "reward margin histogram"))
    return "\n\n".join(out)


def _stages_of_kind(manifest: dict, kind: str) -> list[str]:
    """Names of the run's stages of one kind (`ppo`, and named branches with `kind: ppo`)."""
    names = [name for name, entry in (manifest.get("stages") or {}).items() if entry.get("kind", name) == kind]
    return names or [kind]


def _ppo_section(run_dir: Path, stage: str = "ppo") -> str:
    log = read_jsonl(RunLayout(run_dir).log(stage, PPO_LOG))
    if not log:
        return ""
    s = {name: series(log, keys) for name, keys in PPO_SERIES.items()}
    metrics = (_read_json(RunLayout(run_dir).stage_record(stage)) or {}).get("metrics") or {}
    estimator = metrics.get("advantage_estimator")
    out = ["## Stage 3: PPO" + (f" (`{stage}`)" if stage != "ppo" else "")
           + (f", {estimator} advantages" if isinstance(estimator, str) else "")]
    moved = [[key, metrics[f"{key}_first"], metrics[key]] for key in PPO_SERIES
             if isinstance(metrics.get(key), int | float) and isinstance(metrics.get(f"{key}_first"), int | float)]
    if moved:
        out.append(f"{fmt(metrics.get('steps'))} steps.\n\n" + table(["", "first step", "last step"], moved))
    drawn = line_plot(RunLayout(run_dir).plots / f"{stage}_reward_kl.png", [
        ("score and reward", [("RM score", *s["score"]), ("reward (score - KL penalty)", *s["reward"])]),
        ("KL(policy || reference)", [("kl", *s["kl"])]),
        ("kl_coef", [("kl_coef", *s["kl_coef"])]),
    ])
    if drawn:
        out.append(image(f"{stage}_reward_kl.png", f"{stage}: score, reward, KL and kl_coef"))
    if line_plot(RunLayout(run_dir).plots / f"{stage}_policy.png", [
        ("entropy", [("entropy", *s["entropy"])]),
        ("response length (tokens)", [("length", *s["response_length"])]),
    ]):
        out.append(image(f"{stage}_policy.png", f"{stage}: entropy and response length"))
    return "\n\n".join(out)


def _eval_section(run_dir: Path, results: dict | None) -> str:
    if not results or not results.get("models"):
        return ""
    models = results["models"]
    baseline = next((m["label"] for m in models if m["name"] == "baseline"), "baseline")
    judge = results.get("judge", "judge")
    rows = [[m["label"], win_text(m), m.get("judge_score"), m.get("rm_score"), m.get("kl"),
             m.get("response_tokens"), m.get("perplexity")] for m in models]
    out = ["## Evaluation", table(
        ["model", f"win rate vs {baseline} ({judge} judge)", f"{judge} score", "RM score", "KL to reference (nats)",
         "response tokens", "held-out perplexity"], rows)]
    per_prompt = results.get("samples_per_prompt")
    how = (f"{per_prompt} samples a side each; a policy's j-th sample meets {baseline}'s j-th, a best-of-n "
           f"pick meets every {baseline} sample" if per_prompt else "one sample each")
    interval = (f" In brackets: {100 * results['confidence']:.0f}% percentile bootstrap intervals over prompts "
                f"({results.get('bootstrap_samples')} resamples; a prompt's samples move together)."
                if results.get("confidence") else "")
    out.append(f"{results.get('n_prompts')} held-out prompts, {how} (ties count 1/2).{interval} KL is summed "
               "over response tokens and estimated on the model's own samples (k1); best-of-n's is the analytic "
               "log n - (n-1)/n. Perplexity on the held-out corpus measures the alignment tax.")
    for m in models:
        if m["name"] not in ("baseline", "best_of_n") and m.get("win_rate") is not None:
            bounds = (f" ({100 * results['confidence']:.0f}% interval {100 * m['win_rate_low']:.1f}-"
                      f"{100 * m['win_rate_high']:.1f}%)" if m.get("win_rate_low") is not None else "")
            out.append(f"**{m['label']} wins {100 * m['win_rate']:.0f}% against {baseline}**{bounds} under the "
                       f"{judge} judge, at KL {fmt(m.get('kl'))} nats.")
    out.append(_frontier_section(run_dir, results, baseline, judge))
    return "\n\n".join(p for p in out if p)


def _frontier_section(run_dir: Path, results: dict, baseline: str, judge: str) -> str:
    """The best-of-n curve and each policy against it; results written before the frontier existed
    draw their one best-of-n row as the curve."""
    models = results["models"]
    frontier = results.get("frontier") or {}
    points = frontier.get("best_of_n") or [{"n": m.get("n", "N"), **m} for m in models if m["name"] == "best_of_n"]
    out = []
    if frontier.get("best_of_n"):
        picker = "the reward model picks" if frontier.get("picker") == "reward_model" else \
            "the judge picks: an oracle, an upper bound"
        out.append(f"### KL-win-rate frontier\n\nBest-of-n from {baseline} ({picker}; one pool of "
                   f"{points[-1]['n']} samples per prompt, best-of-n takes the first n):\n\n" + table(
                       ["n", "KL (nats, analytic)", f"win rate vs {baseline}", f"{judge} score", "RM score",
                        "response tokens"],
                       [[p["n"], p["kl"], win_text(p), p.get("judge_score"), p.get("rm_score"),
                         p.get("response_tokens")] for p in points]))
    sentences = [frontier_sentence(placed, points[-1] if points else None) for placed in frontier.get("policies", [])]
    if sentences:
        out.append("\n".join(f"- {s}" for s in sentences))
        out.append(FRONTIER_READING)
    curve = [(p["n"], p["kl"], p["win_rate"], p.get("win_rate_low"), p.get("win_rate_high"))
             for p in points if p.get("kl") is not None and p.get("win_rate") is not None]
    policies = [(m["label"], m.get("kl"), m.get("win_rate"), m.get("win_rate_low"), m.get("win_rate_high"))
                for m in models if m["name"] not in ("baseline", "best_of_n")]
    if frontier_plot(RunLayout(run_dir).plots / "eval_win_rate_kl.png", curve, policies, "KL to reference (nats)",
                     f"{judge} win rate vs {baseline}", f"best-of-n ({baseline})"):
        out.append(image("eval_win_rate_kl.png", "win rate against KL: best-of-n curve and policies"))
    return "\n\n".join(out)


def _samples_section(run_dir: Path, results: dict | None) -> str:
    rows = [r for r in read_jsonl(RunLayout(run_dir).stage_dir("eval") / SAMPLES_FILE) if r.get("sample", 0) == 0]
    rows = rows[:N_SAMPLE_ROWS]
    if not rows or not results:
        return ""
    labels = {m["name"]: m["label"] for m in results.get("models", [])}
    sides = [name for name in labels if name != "best_of_n" and name in rows[0]]
    header = ["prompt"] + [f"{labels.get(name, name)} (score)" for name in sides]
    body = [[prompt_text(r["prompt"])] + [f"{r[name]}\n\n*({fmt(r.get(name + '_judge'))})*" for name in sides]
            for r in rows]
    return "## Samples\n\nThe same held-out prompts, the first sample from each model, with the judge's score.\n\n" + \
        table(header, body)
