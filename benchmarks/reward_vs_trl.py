"""Reward model: ours (K-wise, InstructGPT) vs TRL's RewardTrainer on the same rankings as pairs.

    HF_HUB_OFFLINE=1 nice python benchmarks/reward_vs_trl.py [--n-train 120] [--epochs 2] [--lr 1e-3]

Same model and initialisation (same seed -> same random score head, same LoRA adapters), same
rankings, same epochs, learning rate and schedule, and the same number of optimizer steps: one
step covers B rankings, i.e. B rankings for ours and the B*C(K,2) pairs they expand to for TRL
(`--trl-batch-pairs` overrides; B*K/2 pairs would give equal memory instead, and TRL 3x the
steps). Ours scores each completion once (K sequences a ranking, the prompt tokens they share
encoded once); TRL gets the rankings expanded to their C(K,2) pairs (2*C(K,2) sequences a
ranking: 12 vs 4 at K=4, so 3x is the arithmetic limit without prompt sharing). Speed is rankings
per second of the Trainer's train loop (both report `train_runtime`; model loading and
tokenisation are outside it); accuracy is held-out pairwise accuracy (ties excluded) of each
trained model on the same eval rankings, scored the same way.

Model: the demo model (SmolLM2-135M-Instruct via `rlhf_stack.provision`) when it resolves,
else a config-built 4-layer Llama on the test tokenizer (printed either way).
The last line printed is `speed: N.NNx (accuracy ours A% vs TRL B%)`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "data" / "quickstart"
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--train", default=str(DEMO / "rankings_train.jsonl"))
    p.add_argument("--eval", default=str(DEMO / "rankings_eval.jsonl"))
    p.add_argument("--n-train", type=int, default=120, help="training rankings (first N with a preference)")
    p.add_argument("--n-eval", type=int, default=120, help="held-out rankings scored for accuracy")
    p.add_argument("--k", type=int, default=4, help="keep rankings with exactly K completions")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-rankings", type=int, default=4, help="rankings per optimizer step")
    p.add_argument("--trl-batch-pairs", type=int, default=None,
                   help="TRL pairs per step (default: the pairs of --batch-rankings rankings, same step count)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--last-n-layers", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--no-share-prompt", action="store_true",
                   help="ours without prompt sharing: each completion re-encodes its prompt (K-wise effect alone)")
    p.add_argument("--also-unshared", action="store_true",
                   help="also time ours without prompt sharing (printed as an extra line)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def pick_model(name: str) -> tuple[str, str]:
    from rlhf_stack.errors import ModelNotFoundError
    from rlhf_stack.modeling import resolve_model_path

    try:
        return resolve_model_path(name), f"{name} (pretrained)"
    except ModelNotFoundError as exc:
        print(f"[bench] {exc}; using a config-built model instead")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(tempfile.mkdtemp(prefix="bench_model_"))
    config = AutoConfig.from_pretrained(TINY, num_hidden_layers=4, hidden_size=256, intermediate_size=688,
                                        num_attention_heads=8, num_key_value_heads=4, head_dim=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(TINY).save_pretrained(out)
    return str(out), "config-built Llama, 4 layers, width 256 (random init)"


def load_rankings(path: str, n: int, k: int) -> list[dict]:
    from rlhf_stack.data import load_rows

    rows = [r for r in load_rows(path, "rankings") if len(set(r["ranks"])) > 1 and len(r["ranks"]) == k]
    return rows[:n]


def timer_callback():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """Wall and process CPU seconds of the train loop (CPU time is steadier on a shared machine)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0

    return Timer()


def run_ours(args, model_path: str, train_file: Path, out: Path, share_prompt: bool) -> dict:
    from rlhf_stack.config import load_config
    from rlhf_stack.reward.stage import RewardConfig, train_reward

    cfg = load_config(RewardConfig, {
        "model": model_config(args, model_path), "data": {"path": str(train_file), "eval_fraction": 0},
        "train": train_config(args), "output_dir": str(out), "max_length": args.max_length,
        "share_prompt": share_prompt})
    timer = timer_callback()
    result = train_reward(cfg, callbacks=[timer])
    return {"checkpoint": result.checkpoint, "wall": timer.wall, "cpu": timer.cpu,
            "steps": result.metrics["steps"], "n_truncated": result.metrics["n_truncated"], "cfg": cfg}


def model_config(args, model_path: str) -> dict:
    return {"name_or_path": model_path, "tuning": "lora",
            "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0, "last_n_layers": args.last_n_layers}}


def train_config(args) -> dict:
    return {"epochs": args.epochs, "batch_size": args.batch_rankings, "learning_rate": args.lr,
            "logging_steps": 10, "seed": args.seed, "early_stopping_patience": None}


def to_pairs(rows: list[dict]) -> list[dict]:
    """Rankings -> TRL conversational preference rows, one per pair with a strict preference."""
    pairs = []
    for row in rows:
        prompt = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
        for i, j in combinations(range(len(row["ranks"])), 2):
            if row["ranks"][i] == row["ranks"][j]:
                continue
            win, lose = (i, j) if row["ranks"][i] < row["ranks"][j] else (j, i)
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": row["completions"][win]}],
                          "rejected": [{"role": "assistant", "content": row["completions"][lose]}]})
    return pairs


def run_trl(args, ours_cfg, rows: list[dict], out: Path) -> dict:
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    from rlhf_stack import modeling, training
    from rlhf_stack.reward.stage import load_reward_model

    tokenizer = modeling.load_tokenizer(ours_cfg.model.name_or_path)
    set_seed(args.seed)
    model = load_reward_model(ours_cfg, tokenizer)  # the same initialisation as ours
    pairs = to_pairs(rows)
    base = training.trainer_arguments(ours_cfg.train, out, has_eval=False, metric="", greater_is_better=True)
    pairs_per_step = args.trl_batch_pairs or max(1, round(args.batch_rankings * len(pairs) / len(rows)))
    base.update(per_device_train_batch_size=pairs_per_step, save_strategy="no",
                load_best_model_at_end=False, metric_for_best_model=None, greater_is_better=None)
    trl_args = TRLRewardConfig(**base, max_length=args.max_length,  # gradient_checkpointing=False in base
                               disable_dropout=True, center_rewards_coefficient=None)
    timer = timer_callback()
    trainer = RewardTrainer(model=model, args=trl_args, train_dataset=Dataset.from_list(pairs),
                            processing_class=tokenizer, callbacks=[timer])
    kept = len(trainer.train_dataset)
    trainer.train()
    return {"model": trainer.model.eval(), "tokenizer": tokenizer, "wall": timer.wall, "cpu": timer.cpu,
            "steps": trainer.state.global_step, "n_pairs": len(pairs), "n_pairs_kept": kept,
            "pairs_per_step": pairs_per_step}


def accuracy(model, tokenizer, rows: list[dict], max_length: int) -> float:
    from rlhf_stack.metrics.ranking import pairwise_accuracy
    from rlhf_stack.reward.batching import encode_conversation
    from rlhf_stack.reward.scorer import score_sequences

    seqs = [encode_conversation(tokenizer, r["prompt"], c, max_length)[0] for r in rows for c in r["completions"]]
    device = next(model.parameters()).device
    flat = score_sequences(model, seqs, tokenizer.pad_token_id, 16, device).tolist()
    scores, n = [], 0
    for r in rows:
        scores.append(flat[n:n + len(r["completions"])])
        n += len(r["completions"])
    return pairwise_accuracy(scores, [r["ranks"] for r in rows])["pairwise_accuracy"]


def main(argv=None) -> int:
    args = parse_args(argv)
    from rlhf_stack.data import write_jsonl
    from rlhf_stack.reward.scorer import RewardScorer

    for f in (args.train, args.eval):
        if not Path(f).is_file():
            print(f"[bench] {f} is missing: generate the demo data (python -m data_tools.demo) or pass --train/--eval")
            return 2
    model_path, model_desc = pick_model(args.model)
    train_rows, eval_rows = load_rankings(args.train, args.n_train, args.k), load_rankings(args.eval, args.n_eval, args.k)
    work = Path(tempfile.mkdtemp(prefix="reward_vs_trl_"))
    train_file = work / "train.jsonl"
    keys = ("prompt", "completions", "ranks", "annotator", "id")  # annotator: two labelers' rows are not duplicates
    write_jsonl([{k: r[k] for k in keys if k in r} for r in train_rows], train_file)
    n_pairs = sum(a < b for r in train_rows for a in r["ranks"] for b in r["ranks"])
    print(f"model: {model_desc}  [{model_path}]")
    print(f"data: {len(train_rows)} train rankings (K={args.k}, {n_pairs} pairs), {len(eval_rows)} eval rankings; "
          f"epochs {args.epochs}; LoRA r={args.lora_r} on the last {args.last_n_layers} layers + score head; "
          f"lr {args.lr}; {args.batch_rankings} rankings per optimizer step; "
          f"torch threads {__import__('torch').get_num_threads()}, load average {os.getloadavg()[0]:.1f}")

    ours = run_ours(args, model_path, train_file, work / "ours", share_prompt=not args.no_share_prompt)
    unshared = run_ours(args, model_path, train_file, work / "ours_unshared", False) if args.also_unshared else None
    scorer = RewardScorer(ours["checkpoint"], device="cpu", apply_bias=False, max_length=args.max_length)
    ours["accuracy"] = accuracy(scorer.model, scorer.tokenizer, eval_rows, args.max_length)
    del scorer
    trl = run_trl(args, ours["cfg"], train_rows, work / "trl")
    trl["accuracy"] = accuracy(trl["model"], trl["tokenizer"], eval_rows, args.max_length)

    n = len(train_rows) * args.epochs
    rate_ours, rate_trl = n / ours["wall"], n / trl["wall"]
    sharing = "prompt encoded once" if not args.no_share_prompt else "no prompt sharing"
    print(f"ours (K-wise, {args.k} seqs/ranking, {sharing}): {ours['wall']:.1f} s wall, {ours['cpu']:.1f} s CPU, "
          f"{ours['steps']} steps, {rate_ours:.3f} rankings/s, eval pairwise accuracy {100 * ours['accuracy']:.1f}%"
          f" ({ours['n_truncated']} completions truncated)")
    print(f"TRL RewardTrainer ({trl['n_pairs']} pairs, {trl['n_pairs_kept']} within max_length, "
          f"{trl['pairs_per_step']} pairs per step): "
          f"{trl['wall']:.1f} s wall, {trl['cpu']:.1f} s CPU, {trl['steps']} steps, {rate_trl:.3f} rankings/s, "
          f"eval pairwise accuracy {100 * trl['accuracy']:.1f}%")
    if unshared:
        print(f"ours without prompt sharing: {unshared['wall']:.1f} s wall, {unshared['cpu']:.1f} s CPU, "
              f"{n / unshared['wall']:.3f} rankings/s = {trl['wall'] / unshared['wall']:.2f}x TRL (K-wise batching alone)")
    print(f"CPU-time ratio (TRL / ours): {trl['cpu'] / ours['cpu']:.2f}x; load average now {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": model_desc, "n_train": len(train_rows), "n_eval": len(eval_rows), "epochs": args.epochs,
            "ours": {k: ours[k] for k in ("wall", "cpu", "steps", "accuracy")},
            "trl": {k: trl[k] for k in ("wall", "cpu", "steps", "accuracy", "n_pairs")},
            "speedup": rate_ours / rate_trl}, indent=2))
    print(f"speed: {rate_ours / rate_trl:.2f}x (accuracy ours {100 * ours['accuracy']:.1f}% "
          f"vs TRL {100 * trl['accuracy']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
