"""LoRA layers through peft's forward and as one autograd step (`fused_lora.py`), side by side in one process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fused_lora_speed.py [--rounds 8] [--threads 2]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/fused_lora_speed.py --smoke   # the tiny test model

The model of `ppo_vs_trl.py`'s real row: SmolLM2-135M-Instruct, float32, LoRA r16/alpha32 on every linear
layer of the blocks (dropout 0), the gated MLP fused and activations rebuilt (the library's defaults).
Two copies of it with the same weights, one with `fuse_lora_linears`. Two passes, each as a PPO step
runs it on 8 rows of 86 tokens (a prompt of ~38 and a response of 48):
- train: forward, logits on the last 48 positions, log-softmax, backward (a policy update);
- no-grad: a forward without autograd (the rollout's value pass, a reward model's scoring).
Each round times both copies in the order A B B A (A = peft's forward), after one warm-up pass each;
the figures are the medians over the rounds' passes. Prints a table and `train: N.NNx`, `no_grad: N.NNx`
(fused time over peft's) last; writes benchmarks/fused_lora_speed.json (`--smoke`: benchmarks/out/).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS, TOKENS, RESPONSE = 8, 86, 48
OUT, SMOKE_OUT = ROOT / "benchmarks/fused_lora_speed.json", ROOT / "benchmarks/out/fused_lora_speed_smoke.json"


def build(model_path: str, threads: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf_stack.fused_lora import fuse_lora_linears
    from rlhf_stack.gated_mlp import fuse_gated_mlps
    from rlhf_stack.rebuild import enable_rebuilds

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    fuse_gated_mlps(model)
    enable_rebuilds(model)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():  # B starts at zero in peft: give the adapters an effect, as after some training
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    fused = copy.deepcopy(model)
    blocks = fuse_lora_linears(fused)
    return {"peft": model.train(), "fused": fused.train()}, blocks


def passes(model, ids):
    import torch

    def train() -> float:
        model.zero_grad(set_to_none=False)
        started = time.perf_counter()
        logits = model(input_ids=ids, logits_to_keep=RESPONSE, use_cache=False).logits
        torch.log_softmax(logits, -1).gather(-1, ids[:, -RESPONSE:, None]).mean().backward()
        return time.perf_counter() - started

    def no_grad() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=1, use_cache=False)
        return time.perf_counter() - started

    return {"train": train, "no_grad": no_grad}


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="the tiny test model, 2 rounds")
    args = p.parse_args(argv)
    from rlhf_stack.modeling import resolve_model_path

    model_path, vocab, rounds, out = ((str(ROOT / "tests/fixtures/tiny-llama"), 500, 2, SMOKE_OUT) if args.smoke else
                                      (resolve_model_path("smollm2-135m-instruct"), 49152, args.rounds, OUT))
    out.parent.mkdir(parents=True, exist_ok=True)
    models, blocks = build(model_path, args.threads)
    ids = torch.randint(3, vocab, (ROWS, TOKENS), generator=torch.Generator().manual_seed(1))
    runs = {name: passes(model, ids) for name, model in models.items()}
    times = {name: {kind: [] for kind in ("train", "no_grad")} for name in models}
    for name in models:  # warm-up: gradients allocated, kernels chosen
        for run in runs[name].values():
            run()
    for round_ in range(rounds):
        for name in ("peft", "fused", "fused", "peft"):
            for kind, run in runs[name].items():
                times[name][kind].append(run())
        print(f"[bench] round {round_ + 1}: " + ", ".join(
            f"{name} {kind} {times[name][kind][-1]:.3f} s" for name in models for kind in ("train", "no_grad")), flush=True)
    medians = {name: {kind: statistics.median(t) for kind, t in kinds.items()} for name, kinds in times.items()}
    ratios = {kind: medians["fused"][kind] / medians["peft"][kind] for kind in ("train", "no_grad")}
    out.write_text(json.dumps({"model": model_path, "rows": ROWS, "tokens": TOKENS, "response": RESPONSE,
                               "threads": args.threads, "rounds": rounds, "blocks_fused": blocks,
                               "times_s": times, "medians_s": medians, "ratios": ratios}, indent=2))
    print(f"{'variant':<7} {'train pass s':>13} {'no-grad pass s':>15}")
    for name, m in medians.items():
        print(f"{name:<7} {m['train']:>13.3f} {m['no_grad']:>15.3f}")
    print(f"[bench] {blocks} blocks fused; per-pass times: {out}")
    print(f"train: {ratios['train']:.2f}x")
    print(f"no_grad: {ratios['no_grad']:.2f}x")


if __name__ == "__main__":
    main()
