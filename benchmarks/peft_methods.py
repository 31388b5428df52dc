"""PEFT methods side by side: SFT and the reward model on the demo's data, one method at a time.

    python benchmarks/peft_methods.py            # the demo model and data (recipes/quickstart.yaml): 21.6 min measured, 2 quiet CPU cores
    python benchmarks/peft_methods.py --smoke    # the tiny test model, a few steps, in-process: seconds

The fine-tuning material's exercise ("experiment with both LoRA and adapter methods on the same
dataset ... analyse the efficiency of each"): full fine-tuning, freeze-last-N (transfer learning),
LoRA, DoRA, IA3, bottleneck adapters (Houlsby) and prompt tuning, each trained by the real stage
(`train_sft`, `train_reward`) on the same rows for the same number of steps, from the base model
(the reward model here does not start from an SFT checkpoint, so every method starts alike).
Adapter methods and freeze sit on the quickstart's last 4 blocks (its LoRA setting); prompt
tuning has no layers to choose. Each method runs at a learning rate from its usual range (table
`METHODS` below; one rate for all would favour one family).

Per run: trainable parameters, peak resident memory (ru_maxrss of a fresh process per run), training
tokens per second (SFT: the tokens TRL counted; RM: the tokens the model processed, each ranking's
shared prompt once plus its K completions, as the stage runs them) and the held-out metric (SFT:
eval loss on the demo's held-out demonstrations; RM: pairwise accuracy on held-out rankings).
Writes benchmarks/peft_methods.json (every run's raw numbers), benchmarks/peft_methods.png (the
plot) and prints the markdown table for RESULTS.md. `--smoke` writes *_smoke.* instead and runs
in-process (its RSS is then the process's running peak, marked so in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"
LAST_N = 4  # the quickstart's adapters sit on its top 4 blocks

# name -> (model section, SFT learning rate, RM learning rate)
METHODS = {
    "full": ({"tuning": "full"}, 2e-5, 2e-5),
    "freeze": ({"tuning": "freeze", "freeze_trainable_layers": LAST_N}, 5e-5, 5e-5),
    "lora": ({"tuning": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "last_n_layers": LAST_N}}, 3e-4, 1e-3),
    "dora": ({"tuning": "peft", "peft": {"method": "dora", "last_n_layers": LAST_N,
                                         "options": {"r": 16, "lora_alpha": 32}}}, 3e-4, 1e-3),
    "ia3": ({"tuning": "peft", "peft": {"method": "ia3", "last_n_layers": LAST_N}}, 3e-3, 3e-3),
    "bottleneck": ({"tuning": "peft", "peft": {"method": "bottleneck", "last_n_layers": LAST_N,
                                               "options": {"placement": "houlsby", "reduction_factor": 16}}},
                   1e-3, 1e-3),
    "prompt_tuning": ({"tuning": "peft", "peft": {"method": "prompt_tuning",
                                                  "options": {"num_virtual_tokens": 16}}}, 3e-2, None),
}
SIZES = {"full": {"steps": 12, "batch": 8, "rm_steps": 12, "rm_batch": 4, "eval_rows": 32, "eval_rankings": 40,
                  "max_length": 192},
         "smoke": {"steps": 2, "batch": 4, "rm_steps": 2, "rm_batch": 2, "eval_rows": 4, "eval_rankings": 4,
                   "max_length": 128}}


def demo_setup(smoke: bool, work: Path) -> dict:
    """Model and data paths from recipes/quickstart.yaml (the tiny model under --smoke), with
    held-out subsets written to `work` so that evaluation stays a small share of each run."""
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    size = SIZES["smoke" if smoke else "full"]
    subsets = {}
    for name, key, n in (("sft_eval", "sft", size["eval_rows"]), ("rm_eval", "reward", size["eval_rankings"])):
        rows = (ROOT / recipe[key]["data"]["eval_path"]).read_text().splitlines()[:n]
        subsets[name] = work / f"{name}.jsonl"
        subsets[name].write_text("\n".join(rows) + "\n")
    return {"model": str(TINY) if smoke else recipe["sft"]["model"]["name_or_path"],
            "sft_train": str(ROOT / recipe["sft"]["data"]["path"]), "rm_train": str(ROOT / recipe["reward"]["data"]["path"]),
            "sft_eval": str(subsets["sft_eval"]), "rm_eval": str(subsets["rm_eval"]), **size}


def run_one(stage: str, method: str, setup: dict, out: Path) -> dict:
    """Train one method in one stage; the row of the table (raw numbers)."""
    import torch

    from rlhf_stack.config import load_config

    section, sft_lr, rm_lr = METHODS[method]
    model = {"name_or_path": setup["model"], "dtype": "float32", **section}
    if setup["model"] == str(TINY) and method in ("freeze",):
        model["freeze_trainable_layers"] = 1
    if setup["model"] == str(TINY) and "peft" in model and "last_n_layers" in model["peft"]:
        model["peft"] = {**model["peft"], "last_n_layers": 1}
    if setup["model"] == str(TINY) and "lora" in model:
        model["lora"] = {**model["lora"], "last_n_layers": 1}
    steps = setup["steps"] if stage == "sft" else setup["rm_steps"]
    batch = setup["batch"] if stage == "sft" else setup["rm_batch"]
    train = {"max_steps": steps, "batch_size": batch, "learning_rate": sft_lr if stage == "sft" else rm_lr,
             "warmup_ratio": 0.0, "logging_steps": steps, "early_stopping_patience": None, "eval_every_steps": steps}
    torch.manual_seed(0)
    if stage == "sft":
        from rlhf_stack.sft import SFTConfig, train_sft

        cfg = load_config(SFTConfig, {"model": model, "train": train, "output_dir": str(out), "max_length": setup["max_length"],
                                      "data": {"path": setup["sft_train"], "eval_path": setup["sft_eval"],
                                               "max_rows": steps * batch}, "eval_before_training": True})
        metrics = train_sft(cfg).metrics
        row = {"tokens_per_s": metrics["train_tokens_per_s"], "heldout": metrics["eval_loss"],
               "heldout_before": metrics["eval_loss_before"]}
    else:
        from rlhf_stack.reward.stage import RewardConfig, train_reward

        cfg = load_config(RewardConfig, {"model": model, "train": train, "output_dir": str(out),
                                         "max_length": setup["max_length"],
                                         "data": {"path": setup["rm_train"], "eval_path": setup["rm_eval"],
                                                  "max_rows": steps * batch}})
        metrics = train_reward(cfg).metrics
        tokens = _ranking_tokens(cfg, steps * batch)
        row = {"tokens_per_s": tokens / metrics["train_runtime_s"], "heldout": metrics["eval_pairwise_accuracy"]}
    info = json.loads((out / "stage.json").read_text())
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"stage": stage, "method": method, "trainable": info["parameters"]["trainable"],
            "total": info["parameters"]["total"], "peak_rss_mb": rss_kb / 1024, "steps": metrics["steps"],
            "train_runtime_s": metrics["train_runtime_s"], "learning_rate": train["learning_rate"], **row}


def _ranking_tokens(cfg, n_rankings: int) -> float:
    """Tokens the RM processed for n_rankings: per ranking, the shared prompt once + each completion."""
    from rlhf_stack.data import load_rows
    from rlhf_stack.modeling import load_tokenizer
    from rlhf_stack.reward.batching import encode_rankings

    rows = load_rows(cfg.data.path, "rankings", max_rows=cfg.data.max_rows)
    items, _ = encode_rankings(rows, load_tokenizer(cfg.model.name_or_path), cfg.max_length)
    per = [it["prefix_length"] + sum(len(s) - it["prefix_length"] for s in it["input_ids"]) for it in items]
    return sum(per) / len(per) * n_rankings


def plan(methods: list[str]) -> list[tuple[str, str]]:
    """(stage, method) runs: every method in SFT, and in the RM where the reward stage takes it."""
    return [(stage, m) for stage in ("sft", "reward") for m in methods if stage == "sft" or METHODS[m][2] is not None]


def table(rows: list[dict]) -> str:
    from rlhf_stack.peft_methods import METHODS as PEFT

    lines = ["| method | trainable params | SFT peak RSS | SFT tokens/s | SFT held-out loss (before) | "
             "RM peak RSS | RM tokens/s | RM held-out pairwise accuracy |", "|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        sft = next((r for r in rows if r["stage"] == "sft" and r["method"] == method), None)
        rm = next((r for r in rows if r["stage"] == "reward" and r["method"] == method), None)
        cells = [method, f"{sft['trainable']:,} ({100 * sft['trainable'] / sft['total']:.2g}%)" if sft else "-"]
        cells += [f"{sft['peak_rss_mb']:.0f} MB", f"{sft['tokens_per_s']:.0f}",
                  f"{sft['heldout']:.3f} ({sft['heldout_before']:.3f})"] if sft else ["-"] * 3
        if rm:
            cells += [f"{rm['peak_rss_mb']:.0f} MB", f"{rm['tokens_per_s']:.0f}", f"{100 * rm['heldout']:.1f}%"]
        else:
            cells += ["-", "-", "refused: " + PEFT[method].refused.get("reward", "not run").split(";")[0]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["method"] for r in rows))
    panels = [("trainable parameters", "trainable", True), ("peak RSS (MB)", "peak_rss_mb", False),
              ("training tokens/s", "tokens_per_s", False), ("held-out", "heldout", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    for ax, (title, key, log) in zip(axes, panels, strict=True):
        for offset, stage, label in ((-0.2, "sft", "SFT"), (0.2, "reward", "RM")):
            if key == "heldout":  # one metric per stage: SFT loss (lower is better), RM accuracy (higher)
                label = "SFT eval loss" if stage == "sft" else "RM pairwise accuracy"
            values = [next((r[key] for r in rows if r["stage"] == stage and r["method"] == m), 0) for m in names]
            ax.bar([i + offset for i in range(len(names))], values, width=0.4, label=label)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny test model, a few steps, in-process (seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="where the JSON and PNG go")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--one", nargs=3, metavar=("STAGE", "METHOD", "SETUP_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {', '.join(sorted(unknown))} (known: {', '.join(METHODS)})")
    if args.one:  # a child process: one run, its row as the last stdout line
        stage, method, setup_file = args.one
        setup = json.loads(Path(setup_file).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(stage, method, setup, Path(tmp) / "out")))
        return
    suffix = "_smoke" if args.smoke else ""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        setup = demo_setup(args.smoke, work)
        (work / "setup.json").write_text(json.dumps(setup))
        for stage, method in plan(args.methods.split(",")):
            print(f"[peft_methods] {stage} {method}", flush=True)
            if args.smoke:  # in-process: seconds, but RSS is the process's running peak
                rows.append({**run_one(stage, method, setup, work / f"{stage}-{method}"), "rss_isolated": False})
                continue
            done = subprocess.run([sys.executable, __file__, "--one", stage, method, str(work / "setup.json")],
                                  check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "rss_isolated": True})
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model": setup["model"], "sizes": {k: setup[k] for k in SIZES["full"]}, "last_n_layers": LAST_N,
              "runs": rows}
    (args.out / f"peft_methods{suffix}.json").write_text(json.dumps(result, indent=2))
    plot(rows, args.out / f"peft_methods{suffix}.png")
    print(table(rows))


if __name__ == "__main__":
    main()
