"""Is folding LoRA into the base faster for PPO's generation? (PPOConfig.merge_lora_for_generation)

    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/ppo_generation_merge.py [--repeats 3]

The demo model (SmolLM2-135M-Instruct) with a LoRA adapter (r=16, all linear layers, random B so
the adapter is not a no-op), 16 chat prompts, 48 sampled tokens, CPU. Times, fastest of
`repeats`: generation with the adapter unmerged; merge + generation + unmerge. Also reports the
largest base-weight change one merge/unmerge round trip leaves behind (rounding drift that would
accumulate in the shared base, i.e. in the reference model).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from rlhf_stack.config import ModelConfig
    from rlhf_stack.modeling import load_causal_lm, load_tokenizer, resolve_model_path
    from rlhf_stack.ppo.rollout import generate, left_pad

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="smollm2-135m-instruct")
    args = p.parse_args(argv)

    path = resolve_model_path(args.model)
    tok = load_tokenizer(path, padding_side="left")
    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(ModelConfig(name_or_path=path, tuning="lora"), device=torch.device("cpu")),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    model.eval()
    prompts = [[{"role": "user", "content": f"Tell me a fact about the number {i}."}] for i in range(16)]
    ids = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for m in prompts]
    query_ids, query_mask = left_pad(ids, tok.pad_token_id, torch.device("cpu"))

    from transformers import GenerationConfig

    gen = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=48, min_new_tokens=48,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}

    def timed(merge: bool) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            generate(model, query_ids, query_mask, gen, merge_lora=merge)
            best = min(best, time.perf_counter() - start)
        return best

    unmerged, merged = timed(False), timed(True)
    drift = max((p.detach() - base_before[n]).abs().max().item()
                for n, p in model.named_parameters() if "base_layer.weight" in n)
    print(f"generate 16 x 48 tokens, unmerged LoRA: {unmerged:.2f} s")
    print(f"merge + generate + unmerge:             {merged:.2f} s")
    print(f"base-weight drift after {args.repeats} merge/unmerge round trips: {drift:.2e}")
    print(f"merged/unmerged time: {merged / unmerged:.2f}x")


if __name__ == "__main__":
    main()
