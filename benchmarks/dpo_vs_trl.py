"""DPO: ours (K-wise, each completion scored once per ranking) vs TRL's DPOTrainer on the same rankings as pairs.

    HF_HUB_OFFLINE=1 nice python benchmarks/dpo_vs_trl.py [--seeds 1 2 3] [--n-train 120] [--epochs 1] [--lr 1e-4]
    python benchmarks/dpo_vs_trl.py --smoke     # tiny test model, generated rankings: runs the script, measures nothing

Both sides train LoRA on the same base model from the same K=4 rankings: ours takes whole rankings
(`train_dpo`, loss `sigmoid` over every strictly ordered pair, the prompt encoded once); TRL gets
the rankings expanded to their pairs (ties dropped, the same pair rule) as conversational
{prompt, chosen, rejected} rows. Settings, each checked in TRL 1.16's source:

- model and precision: the same base loaded float32 by `rlhf_stack.modeling` on both sides. The
  Trainer flags come from one `training.trainer_arguments` dict for both, which sets `bf16` only
  on CUDA; passing it matters, since TRL's config otherwise turns bf16 on (`trainer/base_config.py`,
  `__post_init__`: `bf16 = not fp16` when unset). On CPU both run fp32.
- gradient checkpointing off: TRL defaults it to True (`base_config.py`); the shared dict passes
  False (transformers maps it to `activation_checkpointing`), and both trained models are checked
  to have it off afterwards.
- LoRA: ours from `policy.lora`; TRL through its documented `peft_config` argument with a
  `LoraConfig` naming the same modules, layers, r, alpha, dropout 0 (trainable parameter counts are
  printed side by side). With a fresh `peft_config` TRL's reference is the model with adapters
  disabled (`dpo_trainer.py`: `use_adapter(model, None)`, no "ref" copy), as ours (`adapters-disabled`).
- loss and beta: TRL `loss_type=["sigmoid"]`, the same `beta`. Per pair the two losses are the same
  -log sigmoid(beta * log-ratio gap); TRL averages over the pairs of a batch, ours over a ranking's
  pairs, then over rankings (a ranking weighs the same whatever its number of pairs).
- dropout off on both (TRL `disable_dropout=True`, its default; ours always).
- max_length the same; TRL keeps the start (`truncation_mode="keep_start"`) and drops pairs whose
  prompt alone fills max_length, ours cuts the prompt's start: both counts are printed.
- work per optimizer step (`--trl-batches`): ours B rankings. `same` (the default): TRL's step k
  holds exactly the pairs of the rankings our step k held (recorded from our run's collator and
  handed to TRL's DataLoader as its batch sampler), so both sides see the same preferences in the
  same steps and differ only in how a step computes and weighs them. `shuffled` (before
  2026-12-03): TRL's own random sampler, round(pairs x epochs / steps) pairs a step. Both: TRL's
  max_steps = ours' step count; same learning rate, schedule, warmup, seed.
  TRL computes the reference log-probs every step (`precompute_ref_log_probs=False`, its default), as ours.

Speed: rankings per second of each Trainer's train loop (one timer callback on both; model loading
and tokenisation are outside it). Accuracy: held-out implicit-reward pairwise accuracy (ties
excluded), both trained adapters scored by the same function: beta * (log pi - log pi_ref) of each
completion, summed over its tokens, with the adapter on and off. Each seed trains both sides; the
last line is the median over seeds, `speed: N.NNx (accuracy ours A% vs TRL B%)`; raw per-seed
numbers go to a JSON (default `benchmarks/dpo_vs_trl.json`, `..._smoke.json` with --smoke).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dpo_batch_replay import pair_batches, recorded_batches, replaying_trainer  # noqa: E402 - sibling module
from reward_vs_trl import load_rankings, timer_callback, to_pairs  # noqa: E402 - the sibling benchmark

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "data" / "quickstart"
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"
SMOKE = {"n_train": 24, "n_eval": 8, "epochs": 1.0, "batch_rankings": 4, "lr": 5e-3, "lora_r": 8, "last_n_layers": 2,
         "max_length": 128, "beta": 0.5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="the SFT policy (alias, hub id or directory)")
    p.add_argument("--train", default=str(DEMO / "rankings_train.jsonl"))
    p.add_argument("--eval", default=str(DEMO / "rankings_eval.jsonl"))
    p.add_argument("--n-train", type=int, default=120, help="training rankings (first N with K completions and a preference)")
    p.add_argument("--n-eval", type=int, default=60, help="held-out rankings scored for accuracy")
    p.add_argument("--k", type=int, default=4, help="keep rankings with exactly K completions")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-rankings", type=int, default=4, help="rankings per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--last-n-layers", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--trl-batches", choices=["same", "shuffled"], default="same",
                   help="same: TRL's step k holds the pairs of the rankings ours' step k held; "
                        "shuffled: TRL's own sampler, round(pairs / steps) pairs a step")
    p.add_argument("--smoke", action="store_true",
                   help="the tiny test model on generated rankings (checks that the script runs; not a measurement)")
    p.add_argument("--json", default=None, help="where the raw per-seed numbers go")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.json = args.json or str(ROOT / "benchmarks" / ("dpo_vs_trl_smoke.json" if args.smoke else "dpo_vs_trl.json"))
    return args


def smoke_rankings(n: int, start: int, seed: int) -> list[dict]:
    """K=4 rankings with a learnable preference (the apple first, two tied stones, the box last)."""
    rng = random.Random(seed)
    words = ["red", "blue", "green", "small", "big", "old", "new", "warm", "cold", "soft"]
    rows = []
    for i in range(start, start + n):
        w = rng.sample(words, 4)
        rows.append({"prompt": f"Question {i}: what is it?", "ranks": [1, 2, 2, 3],
                     "completions": [f"The {w[0]} apple.", f"The {w[1]} stone.", f"The {w[2]} stone.", f"The {w[3]} box."]})
    return rows


def model_config(args, model_path: str) -> dict:
    return {"name_or_path": model_path, "tuning": "lora", "dtype": "float32",
            "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0, "last_n_layers": args.last_n_layers}}


def run_ours(args, seed: int, model_path: str, train_file: Path, out: Path) -> dict:
    from rlhf_stack.config import load_config
    from rlhf_stack.dpo.stage import DPOConfig, train_dpo

    cfg = load_config(DPOConfig, {
        "policy": model_config(args, model_path), "data": {"path": str(train_file), "eval_fraction": 0},
        "train": {"epochs": args.epochs, "batch_size": args.batch_rankings, "learning_rate": args.lr,
                  "logging_steps": 10, "seed": seed, "early_stopping_patience": None},
        "output_dir": str(out), "max_length": args.max_length, "loss": "sigmoid", "beta": args.beta})
    timer = timer_callback()
    with recorded_batches() as batches:
        result = train_dpo(cfg, callbacks=[timer, checkpointing_probe(found := [])])
    return {"batches": batches, "checkpoint": result.checkpoint, "wall": timer.wall, "cpu": timer.cpu, "steps": result.metrics["steps"],
            "n_truncated": result.metrics["n_truncated"], "n_pairs": result.metrics["n_train_pairs"],
            "reference": result.metrics["models"]["reference"], "cfg": cfg, "checkpointing": found[0]}


def checkpointing_probe(found: list):
    """A callback that records, at the end of training, whether gradient checkpointing was on."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            found.append(bool(getattr(base, "is_gradient_checkpointing", False)))

    return Probe()


def trl_lora_config(args, model):
    """The LoraConfig ours builds (`modeling.apply_tuning`): explicit module names with the layer list."""
    from peft import LoraConfig

    from rlhf_stack import modeling

    n_layers = model.config.num_hidden_layers
    return LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=modeling.linear_module_names(model),
                      layers_to_transform=list(range(max(0, n_layers - args.last_n_layers), n_layers)))


def run_trl(args, seed: int, ours_cfg, rows: list[dict], out: Path, steps: int,
            batches: list[list[int]] | None) -> dict:
    """TRL's DPOTrainer on `to_pairs(rows)`; `batches` (pair indices per step) replaces its sampler."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from rlhf_stack import modeling, training

    tokenizer = modeling.load_tokenizer(ours_cfg.policy.name_or_path)
    set_seed(seed)
    model = modeling.load_causal_lm(ours_cfg.policy)  # float32, no adapter: TRL applies peft_config itself
    pairs = to_pairs(rows)
    base = training.trainer_arguments(ours_cfg.train, out, has_eval=False, metric="", greater_is_better=True)
    # Ours took `steps` optimizer steps over the rankings; TRL takes as many over the pairs, with the
    # pairs of a step's rankings in each (rounded: pairs per ranking vary with ties) and max_steps
    # pinned, so that rounding can neither add nor drop a step.
    pairs_per_step = max(1, round(len(pairs) * args.epochs / steps))  # with `batches`: their mean size
    base.update(per_device_train_batch_size=pairs_per_step, save_strategy="no", load_best_model_at_end=False,
                metric_for_best_model=None, greater_is_better=None, max_steps=steps)
    trl_args = TRLDPOConfig(**base, max_length=args.max_length, truncation_mode="keep_start", beta=args.beta,
                            loss_type=["sigmoid"], disable_dropout=True, precompute_ref_log_probs=False)
    timer = timer_callback()
    trainer_class = replaying_trainer(batches) if batches else DPOTrainer
    trainer = trainer_class(model=model, args=trl_args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                            peft_config=trl_lora_config(args, model), callbacks=[timer, checkpointing_probe(found := [])])
    kept = trainer.train_dataset
    if batches and len(kept) != len(pairs):
        raise SystemExit(f"[bench] TRL dropped {len(pairs) - len(kept)} pairs: the replayed batch indices would shift")
    n_cut = sum(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > args.max_length for r in kept)
    trainable, _ = modeling.count_parameters(trainer.model)
    trainer.train()
    return {"model": trainer.model.eval(), "tokenizer": tokenizer, "wall": timer.wall, "cpu": timer.cpu,
            "steps": trainer.state.global_step, "n_pairs": len(pairs), "n_pairs_kept": len(kept),
            "n_pairs_truncated": n_cut, "pairs_per_step": pairs_per_step,
            "pairs_seen": (sum(trainer.batch_sizes) if batches else pairs_per_step * trainer.state.global_step),
            "batches": "same as ours" if batches else "TRL's sampler",
            "replayed_as_planned": trainer.batch_sizes == [len(b) for b in batches] if batches else None,
            "trainable": trainable,
            "bf16": trl_args.bf16, "checkpointing": found[0], "loss_type": list(trainer.loss_types),
            "beta": trainer.beta, "reference": reference_kind(trainer),
            "tokens": sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in kept)}


def reference_kind(trainer) -> str:
    """How TRL computed pi_ref (`dpo_trainer.py`, `_compute_loss`)."""
    if trainer.ref_model is not None:
        return "ref-model"
    return "ref-adapter-copy" if "ref" in trainer.model.peft_config else "adapters-disabled"


def ours_tokens(rows: list[dict], tokenizer, max_length: int) -> int:
    """Tokens one epoch sends through each model on our side: per ranking the shared prompt once,
    then each completion (with the prompt's last token)."""
    from rlhf_stack.dpo.batching import encode_preferences

    items, _ = encode_preferences(rows, tokenizer, max_length)
    return sum(i["prefix_length"] + sum(len(ids) - i["prefix_length"] for ids in i["input_ids"]) for i in items)


def implicit_accuracy(peft_model, tokenizer, rows: list[dict], beta: float, max_length: int) -> float:
    """Held-out pairwise accuracy of beta * (log pi - log pi_ref), pi_ref = the adapters disabled."""
    import torch

    from rlhf_stack.dpo.batching import PreferenceCollator, encode_preferences
    from rlhf_stack.dpo.trainer import completion_logprobs
    from rlhf_stack.metrics.ranking import pairwise_accuracy

    items, _ = encode_preferences(rows, tokenizer, max_length)
    collate = PreferenceCollator(tokenizer.pad_token_id, share_prompt=False)
    device = next(peft_model.parameters()).device
    rewards = []
    with torch.no_grad():
        for start in range(0, len(items), 8):
            batch = {k: v.to(device) for k, v in collate(items[start:start + 8]).items()}
            logprobs = completion_logprobs(peft_model, batch)
            with peft_model.disable_adapter():
                ref_logprobs = completion_logprobs(peft_model, batch)
            flat = (beta * (logprobs - ref_logprobs)).tolist()
            for item in items[start:start + 8]:
                rewards.append(flat[:len(item["ranks"])])
                flat = flat[len(item["ranks"]):]
    return pairwise_accuracy(rewards, [r["ranks"] for r in rows])["pairwise_accuracy"]


def reload_ours(checkpoint: Path):
    from rlhf_stack import modeling
    from rlhf_stack.config import ModelConfig

    model = modeling.load_causal_lm(ModelConfig(name_or_path=str(checkpoint), dtype="float32"), merge=False)
    return model.eval(), modeling.load_tokenizer(str(checkpoint))


def one_seed(args, seed: int, model_path: str, train_rows, eval_rows, work: Path) -> dict:
    from rlhf_stack.data import write_jsonl

    train_file = work / "train.jsonl"
    keys = ("prompt", "completions", "ranks", "annotator", "id")  # annotator: two labelers' rows are not duplicates
    write_jsonl([{k: r[k] for k in keys if k in r} for r in train_rows], train_file)
    ours = run_ours(args, seed, model_path, train_file, work / f"ours_{seed}")
    model, tokenizer = reload_ours(ours["checkpoint"])
    ours["accuracy"] = implicit_accuracy(model, tokenizer, eval_rows, args.beta, args.max_length)
    ours["trainable"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    ours["tokens"] = ours_tokens(train_rows, tokenizer, args.max_length)
    del model
    replay = pair_batches(train_rows, ours["batches"], tokenizer, args.max_length) if args.trl_batches == "same" else None
    trl = run_trl(args, seed, ours["cfg"], train_rows, work / f"trl_{seed}", ours["steps"], replay)
    trl["accuracy"] = implicit_accuracy(trl["model"], trl["tokenizer"], eval_rows, args.beta, args.max_length)
    n = len(train_rows) * args.epochs
    record = {"seed": seed, "speedup": trl["wall"] / ours["wall"],
              "ours": {k: ours[k] for k in ("wall", "cpu", "steps", "accuracy", "n_pairs", "n_truncated", "trainable",
                                            "reference", "checkpointing", "tokens")},
              "trl": {k: trl[k] for k in ("wall", "cpu", "steps", "accuracy", "n_pairs", "n_pairs_kept",
                                          "n_pairs_truncated", "pairs_per_step", "pairs_seen", "batches", "replayed_as_planned", "trainable", "bf16", "checkpointing",
                                          "loss_type", "beta", "reference", "tokens")}}
    print(f"seed {seed}: ours {ours['wall']:.1f} s wall ({ours['cpu']:.1f} s CPU), {ours['steps']} steps, "
          f"{n / ours['wall']:.3f} rankings/s, accuracy {100 * ours['accuracy']:.1f}% | TRL {trl['wall']:.1f} s wall "
          f"({trl['cpu']:.1f} s CPU), {trl['steps']} steps, {n / trl['wall']:.3f} rankings/s, accuracy "
          f"{100 * trl['accuracy']:.1f}% | speed {record['speedup']:.2f}x", flush=True)
    check_like_for_like(args, record)
    return record


def check_like_for_like(args, record: dict) -> None:
    """Stop when a setting did not take effect on either side (the numbers would not compare)."""
    ours, trl = record["ours"], record["trl"]
    problems = []
    if ours["checkpointing"] or trl["checkpointing"]:
        problems.append(f"gradient checkpointing on (ours {ours['checkpointing']}, TRL {trl['checkpointing']})")
    if trl["loss_type"] != ["sigmoid"] or trl["beta"] != args.beta:
        problems.append(f"TRL loss {trl['loss_type']} beta {trl['beta']}")
    if ours["steps"] != trl["steps"]:
        problems.append(f"steps differ: ours {ours['steps']}, TRL {trl['steps']}")
    if ours["trainable"] != trl["trainable"]:
        problems.append(f"trainable LoRA parameters differ: ours {ours['trainable']}, TRL {trl['trainable']}")
    if ours["n_pairs"] != trl["n_pairs"] or trl["n_pairs_kept"] != trl["n_pairs"]:
        problems.append(f"pairs: ours {ours['n_pairs']}, TRL {trl['n_pairs']} ({trl['n_pairs_kept']} kept)")
    if trl["batches"] == "same as ours" and (not trl["replayed_as_planned"]
                                             or trl["pairs_seen"] != round(ours["n_pairs"] * args.epochs)):
        problems.append(f"TRL replayed {trl['pairs_seen']} pairs (as planned: {trl['replayed_as_planned']}), "
                        f"ours saw {ours['n_pairs']} x {args.epochs} epochs")
    if ours["reference"] != trl["reference"]:
        problems.append(f"references differ: ours {ours['reference']}, TRL {trl['reference']}")
    if problems:
        raise SystemExit("[bench] not like for like: " + "; ".join(problems))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.smoke:
        model_path, model_desc = str(TINY), "tiny test model (2 layers, width 64, random init) -- SMOKE, not a measurement"
        train_rows, eval_rows = smoke_rankings(args.n_train, 0, seed=0), smoke_rankings(args.n_eval, 100, seed=1)
    else:
        from rlhf_stack.modeling import resolve_model_path

        for f in (args.train, args.eval):
            if not Path(f).is_file():
                print(f"[bench] {f} is missing: generate the demo data (python -m data_tools.demo) or pass --train/--eval")
                return 2
        model_path, model_desc = resolve_model_path(args.model), f"{args.model} (pretrained) + LoRA"
        train_rows, eval_rows = load_rankings(args.train, args.n_train, args.k), load_rankings(args.eval, args.n_eval, args.k)
    n_pairs = sum(a < b for r in train_rows for a in r["ranks"] for b in r["ranks"])
    print(f"model: {model_desc}  [{model_path}]")
    print(f"data: {len(train_rows)} train rankings (K={args.k}, {n_pairs} pairs), {len(eval_rows)} eval rankings; "
          f"epochs {args.epochs}; LoRA r={args.lora_r} on the last {args.last_n_layers} layers; lr {args.lr}; "
          f"beta {args.beta}; {args.batch_rankings} rankings per step; max_length {args.max_length}; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="dpo_vs_trl_"))
    records = [one_seed(args, seed, model_path, train_rows, eval_rows, work) for seed in args.seeds]
    speed = [r["speedup"] for r in records]
    ours_acc = statistics.median(r["ours"]["accuracy"] for r in records)
    trl_acc = statistics.median(r["trl"]["accuracy"] for r in records)
    first = records[0]
    print(f"settings checked: TRL loss {first['trl']['loss_type']}, beta {first['trl']['beta']}, bf16 "
          f"{first['trl']['bf16']}, gradient checkpointing ours {first['ours']['checkpointing']} / TRL "
          f"{first['trl']['checkpointing']}, reference {first['trl']['reference']} on both, trainable LoRA "
          f"parameters {first['ours']['trainable']} each; pairs ours {first['ours']['n_pairs']} / TRL "
          f"{first['trl']['n_pairs_kept']} kept of {first['trl']['n_pairs']} ({first['trl']['n_pairs_truncated']} "
          f"truncated; ours cut {first['ours']['n_truncated']} completions); {first['trl']['pairs_per_step']} pairs "
          f"per TRL step ({'on average; the pairs of the rankings ours had in the same step' if args.trl_batches == 'same' else 'from its own sampler'}); tokens through each model per epoch: ours {first['ours']['tokens']}, TRL "
          f"{first['trl']['tokens']} ({first['trl']['tokens'] / first['ours']['tokens']:.2f}x, the arithmetic bound "
          "before padding and per-sequence overheads)")
    print(f"speed over {len(records)} seeds: median {statistics.median(speed):.2f}x, range {min(speed):.2f}-{max(speed):.2f}x; "
          f"load average now {os.getloadavg()[0]:.1f}")
    Path(args.json).write_text(json.dumps({
        "model": model_desc, "smoke": args.smoke, "n_train": len(train_rows), "n_eval": len(eval_rows),
        "epochs": args.epochs, "lr": args.lr, "beta": args.beta, "lora_r": args.lora_r,
        "last_n_layers": args.last_n_layers, "batch_rankings": args.batch_rankings, "max_length": args.max_length, "trl_batches": args.trl_batches,
        "seeds": records, "median_speedup": statistics.median(speed),
        "median_accuracy": {"ours": ours_acc, "trl": trl_acc}}, indent=2, default=str))
    print(f"raw numbers: {args.json}")
    print(f"speed: {statistics.median(speed):.2f}x (accuracy ours {100 * ours_acc:.1f}% vs TRL {100 * trl_acc:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
