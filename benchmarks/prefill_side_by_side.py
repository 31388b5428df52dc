"""The prompt pass before sampling: planned (`ppo/prefill.py`) vs one padded pass, side by side.

    HF_HUB_OFFLINE=1 python benchmarks/prefill_side_by_side.py --run-dir runs/quickstart [--batches 6]

The quickstart's SFT policy (its adapter unmerged on the base, as PPO holds it), its training
prompts in batches of 8, packed weights as in PPO. Per batch, in alternating order:
- the prompt pass alone: `prefill(policy, plan)` against the policy over the padded batch;
- a whole `rollout.generate` of 40 tokens (min_new_tokens 40, so both sides decode the same
  number of steps), the planned pass against the padded one, the same draws.
The first batch warms up and is dropped; medians of the rest.
With `--eval-repeats N`: the evaluation's sampling as `make demo` runs it (`evaluation.models.LM`,
the SFT model merged, the 64 held-out prompts x 2 samples, 64 rows a `generate()` call, shortest
prompts first, each prompt's pass run once for its samples), `unpadded_prompt_passes` on and off in
turn, N times each. Raw numbers: `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> None:
    import torch
    from peft import PeftModel
    from ppo_step_profile import quickstart_ppo

    from rlhf_stack import modeling
    from rlhf_stack.config import ModelConfig
    from rlhf_stack.data import load_rows
    from rlhf_stack.ppo.packed import packed_linears
    from rlhf_stack.ppo.prefill import plan_prompts, prefill
    from rlhf_stack.ppo.rollout import encode_prompts, generate, generation_config, left_pad
    from rlhf_stack.ppo.sampling import RolloutSampler

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--eval-repeats", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path("benchmarks/prefill_side_by_side.json"))
    args = p.parse_args(argv)

    cfg = quickstart_ppo(args.run_dir, 1, [], args.run_dir / "unused")
    path = str(args.run_dir / "sft")
    tok = modeling.load_tokenizer(path, padding_side="left")
    base = modeling.load_causal_lm(ModelConfig(name_or_path=modeling.adapter_base(path), tuning="full")).eval()
    policy = PeftModel.from_pretrained(base, path).eval()
    gen = generation_config(cfg, tok)
    gen.min_new_tokens = cfg.max_new_tokens
    rows = load_rows(cfg.prompts.path, "prompts")
    raw: dict[str, list[float]] = {"prefill_planned": [], "prefill_padded": [], "generate_planned": [],
                                   "generate_padded": []}
    shapes = []
    with torch.no_grad():
        for b in range(args.batches):
            ids, mask = left_pad(encode_prompts(rows[8 * b:8 * b + 8], tok, 10**9, "prompts"), tok.pad_token_id,
                                 torch.device("cpu"))
            plan = plan_prompts(policy, ids, mask)
            shapes.append({"padded_rows": ids.shape[0] * (ids.shape[1] - 1), "prefix": len(plan.prefix),
                           "passes": [[len(plan.rests[m]) for m in members] for members in plan.passes]})
            times = {}
            for planned in ((True, False) if b % 2 else (False, True)):
                side = "planned" if planned else "padded"
                with packed_linears(policy, rows=8):
                    start = time.perf_counter()
                    if planned:
                        prefill(policy, plan, ids.device)
                    else:
                        policy(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], logits_to_keep=1)
                    times[f"prefill_{side}"] = time.perf_counter() - start
                start = time.perf_counter()
                generate(policy, ids, mask, gen, sampler=RolloutSampler(True, b, (0, 8)), unpadded=planned)
                times[f"generate_{side}"] = time.perf_counter() - start
            print(f"batch {b}: " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()), flush=True)
            if b:
                for key, value in times.items():
                    raw[key].append(value)
    if args.eval_repeats:
        raw.update(eval_sampling(args.run_dir, args.eval_repeats))
    medians = {key: statistics.median(values) for key, values in raw.items()}
    args.json.write_text(json.dumps({"raw": raw, "medians": medians, "batches": shapes}, indent=1))
    print(f"prompt pass: planned {medians['prefill_planned']:.3f} s vs padded {medians['prefill_padded']:.3f} s "
          f"({medians['prefill_padded'] / medians['prefill_planned']:.2f}x); generate 8 x {cfg.max_new_tokens} tokens: "
          f"{medians['generate_planned']:.3f} vs {medians['generate_padded']:.3f} s "
          f"({medians['generate_padded'] / medians['generate_planned']:.2f}x), medians of {len(raw['prefill_padded'])} batches")
    if args.eval_repeats:
        print(f"evaluation sampling, 64 prompts x 2: planned {medians['eval_planned']:.1f} s vs padded "
              f"{medians['eval_padded']:.1f} s ({medians['eval_padded'] / medians['eval_planned']:.2f}x), "
              f"medians of {args.eval_repeats}")


def eval_sampling(run_dir: Path, repeats: int) -> dict[str, list[float]]:
    import torch

    from rlhf_stack.data import load_rows
    from rlhf_stack.evaluation.evaluate import EvalConfig
    from rlhf_stack.evaluation.models import LM

    prompts = "recipes/data/quickstart/prompts_eval.jsonl"
    rows = load_rows(prompts, "prompts", keep_lines=True)
    model = LM(str(run_dir / "sft"))
    out: dict[str, list[float]] = {"eval_planned": [], "eval_padded": []}
    for repeat in range(repeats):
        for planned in ((True, False) if repeat % 2 else (False, True)):
            cfg = EvalConfig(prompts=prompts, policy="unused", max_new_tokens=40, unpadded_prompt_passes=planned)
            torch.manual_seed(repeat)
            start = time.perf_counter()
            model.sample(rows, cfg, max_prompt_length=256, batch_size=64, source=prompts, n=2, desc="eval sampling")
            out["eval_planned" if planned else "eval_padded"].append(time.perf_counter() - start)
            print(f"eval repeat {repeat}, {'planned' if planned else 'padded'}: "
                  f"{out['eval_planned' if planned else 'eval_padded'][-1]:.1f} s", flush=True)
    return out


if __name__ == "__main__":
    main()
