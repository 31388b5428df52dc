"""Where does a quickstart PPO step go? Phase times of the quickstart's stage 3, variants side by side.

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/ppo_step_profile.py [--run-dir runs/quickstart]
        [--steps 5] [--repeats 2] [--variant base=cache_frozen_trunk=false --variant trunk=...]

Needs a quickstart run whose sft and reward stages are finished (`make demo`, or
`rlhf-stack run recipes/quickstart.yaml --only sft --only reward`). Runs the quickstart's own PPO
config (8 prompts, 40 new tokens, 2 epochs, LoRA on the top 4 blocks, the RM hosted on the shared
base, PPO-ptx) for `--steps` steps per variant, variants interleaved `--repeats` times, and prints
the median over the measured steps (step 1 is warm-up and dropped) of each phase:
sample (generation), rollout forward (reference / value / trunk), score (RM), train (PPO epochs),
and the whole step. In each repeat, after the variants, plain `generate()` of the SFT model with its
adapter merged, same batch size and length (the first prompts of the file): rollout sampling
tokens/s against the median over every repeat's batches. The last lines are `step_speedup` of the
last variant over the first, and `rollout_vs_plain_generate`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHASES = ("time_sample_s", "time_rollout_forward_s", "time_score_s", "time_train_s", "time_step_s")


def quickstart_ppo(run_dir: Path, steps: int, overrides: list[str], output_dir: Path):
    from rlhf_stack.config import validate
    from rlhf_stack.pipeline.runner import load_recipe, stage_dict
    from rlhf_stack.pipeline.staleness import resolve_references
    from rlhf_stack.ppo.config import PPOConfig

    recipe, _ = load_recipe("recipes/quickstart.yaml", [f"ppo.{o}" for o in overrides])
    config = stage_dict(recipe, "ppo")
    checkpoints = {name: str((run_dir / name).resolve()) for name in ("sft", "reward")}
    config = {**resolve_references(config, checkpoints), "output_dir": str(output_dir), "steps": steps,
              "save_every_steps": None, "progress_bar": False, "resume": False}
    return validate(PPOConfig, config)


def run_variant(run_dir: Path, steps: int, overrides: list[str]) -> list[dict]:
    from rlhf_stack.ppo.trainer import train_ppo

    with tempfile.TemporaryDirectory() as tmp:
        cfg = quickstart_ppo(run_dir, steps, overrides, Path(tmp) / "ppo")
        result = train_ppo(cfg)
        log = [json.loads(line) for line in (Path(tmp) / "ppo" / "logs" / "ppo_log.jsonl").read_text().splitlines()]
    for record in log:
        record["response_tokens"] = record["response_length"] * cfg.batch_size
        record["models"] = result.metrics.get("models")
    return log


def plain_generate(run_dir: Path, steps: int) -> list[float]:
    """Response tokens/s of plain generate() of the merged SFT model on the quickstart's prompts."""
    import torch

    from rlhf_stack.config import ModelConfig
    from rlhf_stack.data import load_rows
    from rlhf_stack.modeling import load_causal_lm, load_tokenizer
    from rlhf_stack.ppo.rollout import encode_prompts, left_pad

    cfg = quickstart_ppo(run_dir, 1, [], Path(tempfile.gettempdir()) / "unused")
    path = str(run_dir / "sft")
    tok = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(ModelConfig(name_or_path=path, tuning="full"), merge=True).eval()
    rows = load_rows(cfg.prompts.path, "prompts")
    speeds = []
    for step in range(steps):
        batch = rows[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        ids, mask = left_pad(encode_prompts(batch, tok, 10**9, "prompts"), tok.pad_token_id, torch.device("cpu"))
        torch.manual_seed(step)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id)
        elapsed = time.perf_counter() - start
        new = out[:, ids.shape[1]:]
        ended = (new == tok.eos_token_id).int().cumsum(1)
        n_tokens = int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())
        speeds.append(n_tokens / elapsed)
    return speeds[1:]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variant", action="append", default=[],
                   help="name=key=value,key=value (PPO config keys); default: base (no trunk) and now")
    p.add_argument("--json", type=Path, default=Path("benchmarks/ppo_step_profile.json"))
    args = p.parse_args(argv)
    variants = {}
    for spec in args.variant or ["base=cache_frozen_trunk=false", "trunk=cache_frozen_trunk=true"]:
        name, _, rest = spec.partition("=")
        variants[name] = [o for o in rest.split(",") if o]
    raw: dict[str, list[dict]] = {name: [] for name in variants}
    gen: list[float] = []
    for repeat in range(args.repeats):  # plain generate inside each repeat: it sees the same load
        for name, overrides in variants.items():
            log = run_variant(args.run_dir, args.steps, overrides)
            raw[name] += [{**r, "repeat": repeat} for r in log[1:]]  # step 1 warms up
            print(f"[profile] {name} repeat {repeat}: step {statistics.median(r['time_step_s'] for r in log[1:]):.2f} s")
        gen += plain_generate(args.run_dir, args.steps)
    print(f"\n{'variant':<12}" + "".join(f"{k[5:-2]:>17}" for k in PHASES) + f"{'sample tok/s':>14}")
    medians = {}
    for name, records in raw.items():
        medians[name] = {k: statistics.median(r[k] for r in records) for k in PHASES}
        medians[name]["sample_tokens_per_s"] = statistics.median(r["response_tokens"] / r["time_sample_s"] for r in records)
        print(f"{name:<12}" + "".join(f"{medians[name][k]:>17.2f}" for k in PHASES)
              + f"{medians[name]['sample_tokens_per_s']:>14.1f}")
    plain = statistics.median(gen)
    print(f"plain generate (merged SFT model): {plain:.1f} response tokens/s (median of {len(gen)} batches)")
    args.json.write_text(json.dumps({"variants": variants, "raw": raw, "medians": medians, "plain_generate": gen},
                                    indent=1, default=str))
    first, last = list(medians)[0], list(medians)[-1]
    print(f"step_speedup: {medians[first]['time_step_s'] / medians[last]['time_step_s']:.2f}x ({last} vs {first})")
    print(f"rollout_vs_plain_generate: {medians[last]['sample_tokens_per_s'] / plain:.2f}x ({last})")


if __name__ == "__main__":
    main()
