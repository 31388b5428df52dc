"""Where does a quickstart PPO step go? Phase times of the quickstart's stage 3, variants side by side.

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/ppo_step_profile.py [--run-dir runs/quickstart]
        [--steps 5] [--repeats 2] [--variant base=cache_frozen_trunk=false --variant trunk=...]

Needs a quickstart run whose sft and reward stages are finished (`make demo`, or
`rlhf-stack run recipes/quickstart.yaml --only sft --only reward`). Runs the quickstart's own PPO
config (8 prompts, 40 new tokens, 2 epochs, LoRA on the top 4 blocks, the RM hosted on the shared
base, PPO-ptx) for `--steps` steps per variant, variants interleaved `--repeats` times, and prints
the median over the measured steps (step 1 is warm-up and dropped) of each phase:
sample (generation), rollout forward (reference / value / trunk), score (RM), train (PPO epochs),
and the whole step. In each repeat, after the variants, `generation_side_by_side`: stage 3's sampling
path (`rollout.generate`, adapter unmerged, recording sampler) against plain `generate()` of the
merged SFT model, the same weights, prompts, batch and length, batch by batch in turn. The last lines are `step_speedup` of the
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


def generation_side_by_side(run_dir: Path, batches: int) -> dict[str, list[float]]:
    """Stage 3's sampling path against plain generate(), the same SFT weights, prompts and batch.

    Per batch of the quickstart's prompts, in turn: `rollout.generate` of the policy as PPO holds it
    (the SFT adapter unmerged on its base, the recording RolloutSampler, PPO's GenerationConfig), and
    transformers' `generate()` of the SFT model with the adapter merged (multinomial sampling).
    Both sample the same distribution but different draws, so responses end at different lengths:
    `new` counts every decoded row-step (batch x generated width, the work of the decoding loop),
    `response` only the tokens up to each row's EOS. Lists per side: tokens/s per batch (the first
    batch warms up and is dropped)."""
    import torch
    from peft import PeftModel

    from rlhf_stack import modeling
    from rlhf_stack.config import ModelConfig
    from rlhf_stack.data import load_rows
    from rlhf_stack.ppo.rollout import encode_prompts, generate, generation_config, left_pad
    from rlhf_stack.ppo.sampling import RolloutSampler

    cfg = quickstart_ppo(run_dir, 1, [], Path(tempfile.gettempdir()) / "unused")
    path = str(run_dir / "sft")
    tok = modeling.load_tokenizer(path, padding_side="left")
    merged = modeling.load_causal_lm(ModelConfig(name_or_path=path, tuning="full"), merge=True).eval()
    base = modeling.load_causal_lm(ModelConfig(name_or_path=modeling.adapter_base(path), tuning="full")).eval()
    policy = PeftModel.from_pretrained(base, path).eval()
    for module in policy.modules():  # as ppo/models.py: dropout off
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    gen_config = generation_config(cfg, tok)
    rows = load_rows(cfg.prompts.path, "prompts")

    def rollout_side(ids, mask, seed):
        return generate(policy, ids, mask, gen_config, sampler=RolloutSampler(True, seed, (0, len(ids))))

    def plain_side(ids, mask, seed):
        torch.manual_seed(seed)
        out = merged.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=cfg.temperature,
                              top_k=0, top_p=1.0, max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id)
        return out[:, ids.shape[1]:]

    speeds: dict[str, list[float]] = {}
    for step in range(batches):
        batch = rows[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        ids, mask = left_pad(encode_prompts(batch, tok, 10**9, "prompts"), tok.pad_token_id, torch.device("cpu"))
        for side, fn in (("rollout", rollout_side), ("plain", plain_side)):
            start = time.perf_counter()
            with torch.no_grad():
                new = fn(ids, mask, step)
            elapsed = time.perf_counter() - start
            ended = (new == tok.eos_token_id).int().cumsum(1)
            response = int(((ended == 0) | ((ended == 1) & (new == tok.eos_token_id))).sum())
            if step:  # the first batch warms up
                speeds.setdefault(f"{side}_new", []).append(new.numel() / elapsed)
                speeds.setdefault(f"{side}_response", []).append(response / elapsed)
    return speeds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variant", action="append", default=[],
                   help="name=key=value,key=value (PPO config keys); default: base (no trunk) and now")
    p.add_argument("--json", type=Path, default=Path("benchmarks/ppo_step_profile.json"))
    p.add_argument("--generation-only", action="store_true", help="only the rollout-vs-generate comparison")
    args = p.parse_args(argv)
    variants = {}
    for spec in args.variant or ["base=cache_frozen_trunk=false", "trunk=cache_frozen_trunk=true"]:
        name, _, rest = spec.partition("=")
        variants[name] = [o for o in rest.split(",") if o]
    raw: dict[str, list[dict]] = {name: [] for name in variants} if not args.generation_only else {}
    gen: dict[str, list[float]] = {}
    for repeat in range(args.repeats):  # plain generate inside each repeat: it sees the same load
        for name, overrides in variants.items() if not args.generation_only else ():
            log = run_variant(args.run_dir, args.steps, overrides)
            raw[name] += [{**r, "repeat": repeat} for r in log[1:]]  # step 1 warms up
            print(f"[profile] {name} repeat {repeat}: step {statistics.median(r['time_step_s'] for r in log[1:]):.2f} s")
        for key, values in generation_side_by_side(args.run_dir, args.steps).items():
            gen.setdefault(key, []).extend(values)
    print(f"\n{'variant':<12}" + "".join(f"{k[5:-2]:>17}" for k in PHASES) + f"{'sample tok/s':>14}")
    medians = {}
    for name, records in raw.items():
        medians[name] = {k: statistics.median(r[k] for r in records) for k in PHASES}
        medians[name]["sample_tokens_per_s"] = statistics.median(r["response_tokens"] / r["time_sample_s"] for r in records)
        print(f"{name:<12}" + "".join(f"{medians[name][k]:>17.2f}" for k in PHASES)
              + f"{medians[name]['sample_tokens_per_s']:>14.1f}")
    g = {key: statistics.median(values) for key, values in gen.items()}
    print(f"generation, SFT weights, same prompts and batch (medians of {len(gen['plain_new'])} batches): "
          f"rollout path {g['rollout_new']:.1f} decoded / {g['rollout_response']:.1f} response tokens/s, "
          f"plain generate (merged) {g['plain_new']:.1f} / {g['plain_response']:.1f}")
    args.json.write_text(json.dumps({"variants": variants, "raw": raw, "medians": medians, "generation": gen},
                                    indent=1, default=str))
    if medians:
        first, last = list(medians)[0], list(medians)[-1]
        print(f"step_speedup: {medians[first]['time_step_s'] / medians[last]['time_step_s']:.2f}x ({last} vs {first})")
        print(f"in-training rollout sampling vs plain generate, response tokens/s (different policies and prompts): "
              f"{medians[last]['sample_tokens_per_s'] / g['plain_response']:.2f}x ({last})")
    print(f"rollout_vs_plain_generate: {g['rollout_new'] / g['plain_new']:.2f}x (decoded tokens/s; response tokens/s "
          f"{g['rollout_response'] / g['plain_response']:.2f}x)")


if __name__ == "__main__":
    main()
