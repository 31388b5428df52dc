"""PPO: ours vs TRL 1.12's PPOTrainer (`trl.experimental.ppo`, the last TRL release that had one), side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ppo_vs_trl.py           # both rows; ~13 min on a quiet 2-core CPU
    HF_HUB_OFFLINE=1 nice .venv/bin/python benchmarks/ppo_vs_trl.py --smoke  # same code path, tiny model (5-12 min
                                                                             # on the loaded shared 2-core machine)

TRL 1.12 needs its own environment: the script creates `benchmarks/.venv-trl112` (gitignored) with
torch 2.13.0 (the CPU wheel from /opt/wheels when present, else the index) and trl==1.12.0 (+ the
transformers/peft/accelerate versions pip picks for it), once. The TRL side is `trl_ppo.py`
(shared with `gpu_suite.py`); both sides measure with the same `step_meter.StepMeter`.

Rows (each side in its own process, TRL first, then ours; with `--rounds N` N times, the order
alternating so that a drift of the machine's speed lands on both sides; CPU, float32 on both):
1. real model (PRIMARY): SmolLM2-135M-Instruct (`resolve_model_path("smollm2-135m-instruct")`,
   offline) with LoRA r=16, alpha=32, dropout 0 on every linear layer of the blocks, on both sides.
   The reward model is the same full checkpoint on both sides: SmolLM2-135M-Instruct as a sequence
   classifier with a seeded random score head, saved once. A full RM is what TRL's PPO takes as is;
   a LoRA RM would have to be merged for TRL while ours would host it on the shared base, a set-up
   TRL cannot mirror, so the full RM is the one set-up that is the same on both sides.
   - TRL, as its example script: policy + `peft_config`; reference = the policy with adapters
     disabled; reward model and a value model initialised from the RM, the value model trained in
     full; a distinct `[PAD]`. Checked in the worker (`trl_ppo.check_setup`/`check_trained`): fp32
     and mixed precision "no", gradient checkpointing off, geometry, learning rate, LoRA on every
     linear layer, every value weight trainable and in the optimizer and moved by training.
   - ours: `train_ppo` with `tuning: lora` (one shared base: policy = adapter, reference =
     adapters disabled), `value_init` = the RM, which becomes a value model of its own (the RM's
     copy with LoRA of the policy's shape; adapters and head train), and the RM as reward, scored
     on that copy with the value's adapters disabled. Checked: the stage's `models` metrics say
     layout `lora-shared-base+lora-value-model`, value_init `reward-model`, reference
     `adapters-disabled`, reward model `value-model-adapters-disabled`, trunk_blocks 0 (adapters on
     every block).
   Where the sides differ, each by its own docs: the value model trains in full on TRL (its
   example), with LoRA on ours; TRL runs the rollout forwards on all 16 rollouts at once
   (`local_rollout_forward_batch_size` 64) and keeps the generation logits, `(b, t, V)`, ours runs
   them in micro-batches of 8 and records log-probs while sampling, one `(b, V)` row at a time;
   TRL's RM scores the policy's token ids, ours decodes the responses and applies the chat
   template again; TRL runs its forwards over padded `[prompt | response]` batches, ours over
   each micro-batch packed into one row (`ppo/flat.py`: no padding, the chat template's shared
   system turn once per micro-batch, the LM head only at the response tokens read;
   `--ours-set packed_passes=false` gives the padded layout).
2. config-built (second, labelled, NOT representative): a Llama of 4 layers x 256 (random init,
   the SmolLM2 tokenizer: 49,152 tokens, so the LM head is ~80% of the compute) and a reward
   model of the same shape with a random head; full fine-tuning on both sides, separate reference,
   value initialised from the RM and trained in full on both sides.

Same on both sides, in both rows: the 16 prompts (through the same chat template: TRL gets the
token ids ours encodes), 16 rollouts a step (all 16 prompts, once each), mini-batches of 8 (one
optimizer update each, no gradient accumulation: the only geometry TRL 1.12 reproduces exactly,
`trl_ppo.trl_batch_args`), 2 PPO epochs, 48 new tokens at temperature 1, stop at EOS, kl_coef 0.05
(k1), vf_coef 0.1, no gradient clipping, a linearly decaying learning rate (TRL's loop), gradient
checkpointing off (TRL 1.12 cannot turn it on). Optimizer updates are counted by a hook on every
optimizer step on both sides and must equal steps x epochs x 2 (else the script exits).

Figures, per side and row, each the MEDIAN over the measured steps (6 steps a run by default; step 1
is warm-up and dropped, so steps 2-6; min, max and every per-step number in the JSON):
- response tokens/s: the response tokens the side actually sampled in the step (each response up
  to and including its first EOS, or max_new_tokens when it has none), over the step's wall time
  (between the ends of consecutive steps, so sampling, scoring and updates all count). Counting
  real tokens keeps a side that stops earlier at EOS from looking faster per step;
- steps/s: 1 / the step's wall time;
- peak RSS: the process's peak resident memory within the step (Linux VmHWM, reset at every
  step end): everything the process holds at that moment (weights, gradients, optimizer state,
  activations, allocator caches). The whole process's peak, model loading included, is printed
  beside it in parentheses. glibc keeps freed heap blocks resident, so this is above the live
  tensors' peak; `--malloc-mmap-threshold 1048576` sets the same allocator setting on both sides
  to show the live peak (a diagnostic: slower steps, not the headline figure).
The last two lines are `speed: N.NNx` (our median response tokens/s over TRL's) and `peak_rss: N.NNx`
(our median per-step peak RSS over TRL's), both from the real-model row. Every per-step number goes
to benchmarks/ppo_vs_trl.json (`--smoke`: benchmarks/out/ppo_vs_trl_smoke.json).

`--smoke` runs the same code path with tests/fixtures/tiny-llama as the "real" model and its
586-token tokenizer for the config-built row, 3 steps of 8 rollouts, 12 new tokens: a check of
the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import step_meter  # benchmarks/, this script's directory
import trl_ppo
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"
TRL_VENV = ROOT / "benchmarks" / ".venv-trl112"
TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
PROMPTS = [f"{verb} {topic} in one sentence." for verb in ("Explain", "Describe", "Praise", "Summarise")
           for topic in ("the sky", "bread", "cats", "the moon")]
SIZES = {"batch": 16, "mini": 8, "micro": 8, "epochs": 2, "new_tokens": 48, "steps": 6}
SMOKE_SIZES = {"batch": 8, "mini": 4, "micro": 4, "epochs": 2, "new_tokens": 12, "steps": 3}
WARMUP_STEPS = 1
# What ours' stage metrics must say it assembled (`models` in stage.json), per row.
OURS_LORA = {"layout": "lora-shared-base+lora-value-model", "reference": "adapters-disabled",
             "value_init": "reward-model", "reward_model": "value-model-adapters-disabled", "trunk_blocks": 0}
OURS_FULL = {"layout": "separate-models", "reference": "frozen-copy", "value_init": "reward-model",
             "reward_model": "separate-model", "trunk_blocks": 0}


# ---- models both sides load -----------------------------------------------------------------------


def build_real_row(out: Path, smoke: bool) -> dict:
    """The demo model (tiny-llama with --smoke) as policy; itself as a sequence classifier with a
    seeded random head as the RM, saved once (full weights)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf_stack.errors import ModelNotFoundError
    from rlhf_stack.modeling import load_tokenizer, resolve_model_path

    if smoke:
        base, name = str(TINY), "tests/fixtures/tiny-llama (smoke)"
    else:
        try:
            base, name = resolve_model_path("smollm2-135m-instruct"), "SmolLM2-135M-Instruct"
        except ModelNotFoundError as exc:
            raise SystemExit(f"the real-model row needs the demo model: {exc}") from exc
    rm_dir = out / "rm-real"
    marker = rm_dir / "built_from.json"
    if not marker.exists() or json.loads(marker.read_text()) != {"base": base, "seed": 1}:
        torch.manual_seed(1)  # the random score head
        rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
        rm.save_pretrained(rm_dir)
        load_tokenizer(base).save_pretrained(rm_dir)
        marker.write_text(json.dumps({"base": base, "seed": 1}))
    return {"row": "real", "policy": base, "rm": str(rm_dir), "tokenizer": base, "lora": True, "lr": 1e-4,
            "expect_ours": OURS_LORA,
            "model": f"{name} + LoRA r16/alpha32 on all linear layers; RM: the same model as a sequence "
                     "classifier (random head, full weights); TRL value model trained in full, ours LoRA"}


def build_config_row(out: Path, smoke: bool) -> dict:
    """A config-built Llama policy and reward model (4 layers x 256, random, seeded), saved.

    The tokenizer (and so the vocabulary, 49,152 tokens) is the demo model's when it resolves, else
    (and with --smoke) the 586-token test tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_stack.errors import ModelNotFoundError
    from rlhf_stack.modeling import load_tokenizer, resolve_model_path

    source, vocab_name = str(TINY), "test tokenizer (586 tokens)"
    if not smoke:
        try:
            source = resolve_model_path("smollm2-135m-instruct")
            vocab_name = "SmolLM2 tokenizer (49,152 tokens: the LM head is ~80% of the compute)"
        except ModelNotFoundError:
            pass
    tokenizer = load_tokenizer(source)
    config = AutoConfig.from_pretrained(source, num_hidden_layers=4, hidden_size=256, intermediate_size=688,
                                        num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                                        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out / "policy")
    torch.manual_seed(1)
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out / "rm")
    for name in ("policy", "rm"):
        tokenizer.save_pretrained(out / name)
    return {"row": "config", "policy": str(out / "policy"), "rm": str(out / "rm"), "tokenizer": str(out / "policy"),
            "lora": False, "lr": 1e-5, "expect_ours": OURS_FULL,
            "model": f"config-built Llama 4 layers x 256 (random init), {vocab_name}, full fine-tuning: "
                     "a toy shape, NOT representative"}


def prompt_ids(tokenizer_path: str) -> list[list[int]]:
    """The prompts through ours' chat-template encoding: the very token ids TRL is given."""
    from rlhf_stack.modeling import load_tokenizer
    from rlhf_stack.ppo.rollout import encode_prompts

    return encode_prompts([{"prompt": p} for p in PROMPTS], load_tokenizer(tokenizer_path), 4096, "prompts")


# ---- our worker (TRL's is trl_ppo.py; each in its own process: peak RSS is per process) ------------


def run_ours(spec: dict) -> dict:
    from rlhf_stack.config import load_config
    from rlhf_stack.modeling import configure_torch
    from rlhf_stack.ppo import PPOConfig, logs, train_ppo

    configure_torch(spec["threads"])
    meter = step_meter.StepMeter(cuda=False)
    write = logs.RunLog.write

    def step_end(self, record: dict) -> None:  # RunLog.write runs once per step, after its updates
        meter.step_end(round(record["response_length"] * spec["batch"]))  # mean real tokens (EOS incl.)
        write(self, record)

    logs.RunLog.write = step_end
    work = Path(tempfile.mkdtemp(prefix="ours_ppo_"))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in spec["prompts"]))
    cfg = load_config(PPOConfig, {
        "policy": {"name_or_path": spec["policy"], "tuning": "lora" if spec["lora"] else "full", "dtype": "float32",
                   "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear",
                            "last_n_layers": None},
                   "gradient_checkpointing": False},
        "prompts": {"path": str(work / "prompts.jsonl"), "eval_fraction": 0.0},
        "rewards": [{"kind": "reward_model", "path": spec["rm"]}], "value_init": spec["rm"],
        "steps": spec["steps"], "batch_size": spec["batch"], "mini_batch_size": spec["mini"],
        "grad_accum_steps": spec["mini"] // spec["micro"], "ppo_epochs": spec["epochs"],
        "max_new_tokens": spec["new_tokens"], "max_prompt_length": 4096, "temperature": 1.0, "kl_coef": 0.05,
        "kl_estimator": "k1", "vf_coef": 0.1, "learning_rate": spec["lr"], "lr_scheduler": "linear",
        "max_grad_norm": None, "output_dir": str(work / "out"), "save_every_steps": None, "resume": False,
        "progress_bar": False, "eval_max_prompts": 0, "seed": spec["seed"], **spec.get("ours_overrides", {}),
    })
    models = train_ppo(cfg).metrics["models"]
    problems = [f"models.{key} = {models.get(key)!r}, expected {want!r}"
                for key, want in spec["expect_ours"].items() if models.get(key) != want]
    expected = spec["steps"] * spec["epochs"] * (spec["batch"] // spec["mini"])
    if meter.updates != expected:
        problems.append(f"optimizer updates {meter.updates}, expected {expected} (one per mini-batch)")
    if problems:
        raise SystemExit("our set-up differs from the spec: " + "; ".join(problems))
    from importlib.metadata import version

    return {"steps": meter.steps, "optimizer_steps": meter.updates, "models": models,
            "versions": {name: version(name) for name in ("torch", "transformers", "peft", "accelerate")},
            "peak_memory_mb": meter.lifetime_peak_mb(), "per_step_memory_reset": meter.per_step_reset,
            "checks": {"models": models, "optimizer_updates": meter.updates, "gradient_checkpointing": False}}


def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    result = run_ours(spec)
    result["total_s"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result), flush=True)


# ---- the comparison ----------------------------------------------------------------------------------


def run_row(row: dict, sizes: dict, trl_python: str, out: Path, threads: int | None,
            mmap_threshold: int | None = None, rounds: int = 1) -> dict:
    """Both sides on one row, `rounds` times in alternating order (TRL first, then ours first, ...);
    each side's medians over the measured steps of all its runs, and the per-step numbers.
    Alternating spreads a drift of the shared machine's speed over both sides.
    mmap_threshold: glibc's MALLOC_MMAP_THRESHOLD_ for both workers (None: glibc's default)."""
    spec = {**sizes, **row, "prompts": PROMPTS[:sizes["batch"]], "seed": 0, "device": "cpu", "dtype": "float32",
            "threads": threads, "float32_matmul_precision": "highest"}
    spec["prompt_ids"] = prompt_ids(row["tokenizer"])[:sizes["batch"]]
    spec_path = out / f"spec-{row['row']}.json"
    spec_path.write_text(json.dumps(spec))
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    commands = {"trl": [trl_python, str(Path(trl_ppo.__file__)), str(spec_path)],
                "ours": [sys.executable, __file__, "--worker", str(spec_path)]}
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    for round_ in range(rounds):
        for side in ("trl", "ours") if round_ % 2 == 0 else ("ours", "trl"):
            print(f"[bench] {row['row']}: {side} (round {round_ + 1}/{rounds}) ...", flush=True)
            result = trl_ppo.launch(commands[side], env=env)
            runs[side].append(result)
            fig = step_meter.medians(result["steps"], WARMUP_STEPS)
            times = ", ".join(f"{s['time_s']:.2f}" for s in result["steps"] if s["time_s"] is not None)
            print(f"[bench] {row['row']}: {side}: {fig['tokens_per_s']['median']:.1f} response tokens/s, "
                  f"{fig['steps_per_s']['median']:.4f} steps/s, step peak RSS {fig['peak_memory_mb']['median']:.0f} "
                  f"MB (step times after the first: {times} s; whole run {result['total_s']:.1f} s)", flush=True)
    sides = {side: {**results[-1], "steps": [s for r in results for s in r["steps"]],
                    "peak_memory_mb": max(r["peak_memory_mb"] for r in results),
                    "total_s": [r["total_s"] for r in results]}
             for side, results in runs.items()}
    for result in sides.values():
        result["figures"] = step_meter.medians(result["steps"], WARMUP_STEPS)
    ratio = {key: sides["ours"]["figures"][key]["median"] / sides["trl"]["figures"][key]["median"]
             for key in ("tokens_per_s", "steps_per_s", "peak_memory_mb")}
    per_round = [{key: step_meter.medians(o["steps"], WARMUP_STEPS)[key]["median"]
                  / step_meter.medians(t["steps"], WARMUP_STEPS)[key]["median"] for key in ratio}
                 for o, t in zip(runs["ours"], runs["trl"], strict=True)]
    return {"row": row["row"], "model": row["model"], "spec": {k: v for k, v in spec.items() if k != "prompt_ids"},
            "ratios": ratio, "rounds": rounds, "ratios_per_round": per_round, **sides}


def table(rows: list[dict]) -> str:
    lines = [f"medians over steps {WARMUP_STEPS + 1}..N (step 1 = warm-up); peak RSS = per step (process peak, "
             "loading included)",
             f"{'row':<7} {'side':<5} {'tokens/s':>9} {'steps/s':>8} {'peak RSS MB':>22} {'updates':>7}  model"]
    for row in rows:
        for side in ("trl", "ours"):
            res, fig = row[side], row[side]["figures"]
            rss = f"{fig['peak_memory_mb']['median']:,.0f} ({res['peak_memory_mb']:,.0f})"
            lines.append(f"{row['row']:<7} {side:<5} {fig['tokens_per_s']['median']:>9.1f} "
                         f"{fig['steps_per_s']['median']:>8.4f} {rss:>22} {res['optimizer_steps']:>7}  "
                         + (row["model"] if side == "trl" else ""))
        r = row["ratios"]
        lines.append(f"{row['row']:<7} ratio {r['tokens_per_s']:>8.2f}x {r['steps_per_s']:>7.2f}x "
                     f"{r['peak_memory_mb']:>21.2f}x")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the same code path on the tiny test model, 3 steps")
    p.add_argument("--steps", type=int, default=None, help=f"PPO steps per run (default {SIZES['steps']}; "
                                                           f"the first is warm-up)")
    p.add_argument("--skip-config-row", action="store_true", help="only the real-model row")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads on both sides (default: torch's choice; --smoke: 1)")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="one of our PPOConfig settings changed from its default on every row (YAML value), "
                        "e.g. pack_weights_for_sampling=false; recorded in the JSON")
    p.add_argument("--rounds", type=int, default=1,
                   help="run both sides this many times, alternating which goes first; the figures are "
                        "the medians over every measured step of a side's runs")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="set glibc's MALLOC_MMAP_THRESHOLD_ in BOTH workers: blocks of at least BYTES are "
                        "mapped and unmapped one by one, so the RSS follows the live tensors instead of what "
                        "glibc's heap keeps after frees (slower: every large tensor is faulted in afresh). "
                        "A diagnostic of live memory; the default figures use glibc's defaults")
    p.add_argument("--json", type=Path, default=None,
                   help="per-step numbers (default benchmarks/ppo_vs_trl.json; --smoke: benchmarks/out/...)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    sizes = dict(SMOKE_SIZES if args.smoke else SIZES)
    # One thread for the smoke run: on a shared, loaded machine two threads of a tiny model mostly
    # wait for each other (measured: a smoke step took ~60 s with two threads, ~2 s with one).
    threads = args.threads or (1 if args.smoke else None)
    if args.steps:
        sizes["steps"] = args.steps
    if sizes["steps"] < WARMUP_STEPS + 1:
        raise SystemExit(f"--steps must be at least {WARMUP_STEPS + 1} (step 1 is warm-up)")
    out = ROOT / "benchmarks" / "out" / ("ppo_vs_trl_smoke" if args.smoke else "ppo_vs_trl")
    out.mkdir(parents=True, exist_ok=True)
    json_path = args.json or (out.parent / "ppo_vs_trl_smoke.json" if args.smoke
                              else ROOT / "benchmarks" / "ppo_vs_trl.json")
    trl_python = str(trl_ppo.ensure_trl_venv(TRL_VENV, TORCH_WHEEL))
    started = time.perf_counter()
    row_specs = [build_real_row(out, args.smoke)]
    if not args.skip_config_row:
        row_specs.append(build_config_row(out, args.smoke))
    report = {"mode": "smoke" if args.smoke else "measurement", "sizes": sizes, "warmup_steps": WARMUP_STEPS,
              "threads": threads, "malloc_mmap_threshold": args.malloc_mmap_threshold, "rounds": args.rounds,
              "rows": []}
    overrides = {}
    for item in args.ours_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--ours-set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    report["ours_overrides"] = overrides
    for row in row_specs:
        row["ours_overrides"] = overrides
        report["rows"].append(run_row(row, sizes, trl_python, out, threads, args.malloc_mmap_threshold, args.rounds))
        report["wall_s"] = time.perf_counter() - started
        json_path.write_text(json.dumps(report, indent=2))  # rewritten after each row: a crash keeps what ran
    real = report["rows"][0]["ratios"]
    report["speed"], report["peak_rss"] = real["tokens_per_s"], real["peak_memory_mb"]
    json_path.write_text(json.dumps(report, indent=2))
    print(table(report["rows"]))
    print(f"[bench] per-step numbers: {json_path}; wall time {report['wall_s']:.0f} s")
    print(f"speed: {report['speed']:.2f}x")
    print(f"peak_rss: {report['peak_rss']:.2f}x")


if __name__ == "__main__":
    main()
