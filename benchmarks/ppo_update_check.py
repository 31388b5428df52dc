"""Does one PPO update follow the advantages? A check of stage 3's update direction on the demo model.

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/ppo_update_check.py [--sft runs/quickstart/sft]
        [--estimator rloo] [--learning-rate 5e-4] [--reward long_words]

One step of `train_ppo`'s loop, taken apart: a rollout of `--prompts` prompts x `--samples`
samples from the SFT checkpoint (LoRA on the SFT adapter's blocks, the frozen trunk as in the
quickstart), scored by a Python reward from `unseen_reward.py`, advantages from the chosen
estimator, then the trainer's own PPO epochs (`update.ppo_epochs`, the same update code). Before
the update it also draws `--fresh` more samples of each prompt, which the update never sees.

Printed:
- recorded vs recomputed log-probs: the sampler's log pi_old against a full forward (should be ~1e-5);
- trained samples: correlation of each response's advantage with the change of its summed
  log-probability (a working update makes it clearly positive);
- fresh samples: correlation of the reward (centred per prompt) with the change of log-probability,
  and the importance-weighted change of the mean reward, sum_i w_i R_i - mean R per prompt with
  w = softmax over the prompt's samples of the log-probability change: does the update generalise
  beyond the samples it was computed from, and by how much per step.
Writes the figures to `--out` (default benchmarks/ppo_update_check.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from unseen_reward import REWARDS  # noqa: E402 - the sibling benchmark's rewards

ROOT = Path(__file__).resolve().parents[1]


def corr(a, b) -> float:
    import torch

    return float(torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", type=Path, default=ROOT / "runs" / "quickstart" / "sft")
    p.add_argument("--estimator", default="rloo", choices=["gae", "rloo", "grpo", "reinforce_baseline"])
    p.add_argument("--reward", default="long_words", choices=sorted(REWARDS))
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--prompts", type=int, default=8, help="prompts in the rollout")
    p.add_argument("--samples", type=int, default=4, help="samples of each prompt in the rollout (gae: prompts x samples prompts, one sample each)")
    p.add_argument("--fresh", type=int, default=8, help="held-back samples of each prompt")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ppo_update_check.json")
    args = p.parse_args()

    import torch

    from rlhf_stack.config import validate
    from rlhf_stack.ppo import estimators, update
    from rlhf_stack.ppo import functional as PF
    from rlhf_stack.ppo.config import PPOConfig
    from rlhf_stack.ppo.data import step_prompt_indices
    from rlhf_stack.ppo.rewards import process_scores
    from rlhf_stack.ppo.rollout import collect_rollout, left_pad, sequence_logprobs
    from rlhf_stack.ppo.setup import build_run

    k = args.samples if args.estimator != "gae" else 1
    n = args.prompts * (k if args.estimator != "gae" else args.samples)
    out_dir = Path(tempfile.mkdtemp(prefix="ppo_update_check_"))
    cfg = validate(PPOConfig, {
        "policy": {"name_or_path": str(args.sft), "tuning": "lora"},
        "prompts": {"path": str(ROOT / "recipes/data/quickstart/prompts_train.jsonl"), "eval_fraction": 0.0},
        "advantage_estimator": args.estimator, "samples_per_prompt": k, "steps": 1, "batch_size": n,
        "mini_batch_size": 8, "max_new_tokens": 40, "learning_rate": args.learning_rate, "seed": args.seed,
        "output_dir": str(out_dir), "save_every_steps": None, "eval_max_prompts": 0, "progress_bar": False,
        "resume": False, "missing_eos_penalty": 0})
    run = build_run(cfg, [REWARDS[args.reward]])
    ac, tok, data = run.actor_critic, run.tokenizer, run.data

    def rollout(rows: list[int], group: int, seed: int):
        ids, mask = left_pad([data.prompt_ids[i] for i in rows], tok.pad_token_id, "cpu")
        ro = collect_rollout(ac, ac.policy, ids, mask, run.gen_config, eos_id=tok.eos_token_id,
                             pad_id=tok.pad_token_id, temperature=cfg.temperature,
                             micro_batch_size=cfg.micro_batch_size, draws=(seed, 0, len(rows)),
                             samples_per_prompt=group)
        raw, _ = run.reward([data.prompts[i]["prompt"] for i in rows],
                            tok.batch_decode(ro.response_ids, skip_special_tokens=True))
        return ro, raw

    def logprobs(ro):
        return sequence_logprobs(ac.policy, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask,
                                 cfg.temperature)

    index = step_prompt_indices(data.prompt_stream, 1, 1, 0, cfg.prompts_per_step, k)
    ro, raw = rollout(index, k, args.seed)
    before = logprobs(ro)
    mask = ro.response_mask
    fresh_rows = [i for i in dict.fromkeys(index) for _ in range(args.fresh)]
    fresh, fresh_raw = rollout(fresh_rows, args.fresh, args.seed + 1000)
    fresh_before = logprobs(fresh)

    # steps 2-5 of the loop, as train_ppo runs them
    scores = process_scores(raw, ro.has_eos, raw, cfg, run.moments)
    kl = PF.KL_ESTIMATORS[cfg.kl_estimator](ro.logprobs, ro.ref_logprobs) * mask
    rewards = PF.kl_penalized_rewards(scores, kl, mask, run.kl_ctl.kl_coef)
    advantage_fn = estimators.advantage_estimator(cfg.advantage_estimator, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                                                  whiten=cfg.whiten_advantages, samples_per_prompt=k)
    advantages, returns = advantage_fn(rewards, ro.values, mask)
    ro = replace(ro, scores=scores, rewards=rewards, advantages=advantages, returns=returns)
    aggregate = PF.loss_aggregation(cfg.loss_aggregation, cfg.max_new_tokens)
    backward = partial(update.policy_and_value_backward if ac.has_value else update.policy_backward,
                       aggregate=aggregate)

    class NoGuard:
        def check_update(self, *_):
            return False

    stats = update.ppo_epochs(run, cfg, ro, 1, backward, NoGuard())

    change = ((logprobs(ro) - before) * mask).sum(1)
    advantage = (advantages * mask).sum(1) / mask.sum(1)
    fresh_change = ((logprobs(fresh) - fresh_before) * fresh.response_mask).sum(1)
    groups = fresh_raw.reshape(-1, args.fresh)
    centred = (groups - groups.mean(1, keepdim=True)).reshape(-1)
    weights = torch.softmax(fresh_change.reshape(-1, args.fresh), dim=1)
    gain = ((weights * groups).sum(1) - groups.mean(1))
    result = {
        "settings": {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(args).items()},
        "rollouts": n, "fresh_samples": len(fresh_rows),
        "recorded_vs_forward_max_abs": float(((before - ro.logprobs) * mask).abs().max()),
        "update": {name: float(v) for name, v in stats.items()},
        "trained_corr_advantage_dlogp": corr(advantage, change),
        "trained_dlogp_abs_mean": float(change.abs().mean()),
        "fresh_corr_reward_dlogp": corr(centred, fresh_change),
        "fresh_dlogp_abs_mean": float(fresh_change.abs().mean()),
        "fresh_reward_mean": float(fresh_raw.mean()), "fresh_reward_sd": float(fresh_raw.std()),
        "fresh_weighted_gain": float(gain.mean()),
        "fresh_weighted_gain_se": float(gain.std() / len(gain) ** 0.5),
    }
    print(f"{args.reward} / {args.estimator}, lr {args.learning_rate}: {n} rollouts, {len(fresh_rows)} fresh samples")
    print(f"recorded log pi_old vs a full forward: max |diff| {result['recorded_vs_forward_max_abs']:.1e}")
    print("update: " + ", ".join(f"{name} {v:.4f}" for name, v in result["update"].items()))
    print(f"trained samples: corr(advantage, d log pi) {result['trained_corr_advantage_dlogp']:+.2f}, "
          f"mean |d log pi| {result['trained_dlogp_abs_mean']:.2f} nats")
    print(f"fresh samples:   corr(reward - prompt mean, d log pi) {result['fresh_corr_reward_dlogp']:+.2f}, "
          f"mean |d log pi| {result['fresh_dlogp_abs_mean']:.2f} nats")
    print(f"fresh samples:   importance-weighted change of the mean reward {result['fresh_weighted_gain']:+.4f} "
          f"+- {result['fresh_weighted_gain_se']:.4f} (SE over prompts; reward mean {result['fresh_reward_mean']:.3f}, "
          f"sd {result['fresh_reward_sd']:.3f})")
    runs = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    args.out.write_text(json.dumps({"runs": runs + [result]}, indent=1))


if __name__ == "__main__":
    main()
