"""TRL 1.12's PPOTrainer (`trl.experimental.ppo`, the last TRL release with PPO) as a benchmark worker.

Shared by `ppo_vs_trl.py` (CPU) and `gpu_suite.py` (CUDA): one `run_trl(spec)`, one mapping of our
batch sizes onto TRL's, and two ways to get TRL 1.12 beside the TRL 1.16 this project runs on:

- `ensure_trl_venv`: a separate virtual environment with its own torch (ppo_vs_trl.py);
- `install_trl_layer`: the trl-1.12.0 wheel alone, installed with `pip install --no-deps --target`
  into a directory that goes first on PYTHONPATH, over the running environment's torch,
  transformers and accelerate (gpu_suite.py). Both sides then run the same torch build, CUDA
  libraries and transformers, and nothing large is installed on the GPU machine. Offline it
  installs from `benchmarks/wheels` (`make gpu-wheels`) with `--no-index --find-links`.

Run as a script it is the worker: `python benchmarks/trl_ppo.py SPEC.json` prints `RESULT {json}`.

The set-up is TRL's own example script (examples/scripts/ppo/ppo.py): a distinct `[PAD]` token
added to the tokenizer, reward model and value model both `AutoModelForSequenceClassification`
from the RM checkpoint (the value model trains in full), and with LoRA the policy gets
`peft_config` and `ref_model=None` (the reference is the policy with adapters disabled, :580).
`check_setup` asserts after construction that each setting took effect (dtype, mixed precision
"no", gradient checkpointing off, batch geometry, learning rate, LoRA r/alpha on every linear
layer, every value-model weight trainable and in the optimizer); `check_trained` that the value
model's and the policy's weights moved, and that the optimizer stepped once per mini-batch.

What the settings rely on, read in the trl-1.12.0 wheel (see also /work/shared/PEERS.md):
- `Accelerator(gradient_accumulation_steps=...)` is built with no mixed-precision argument
  (ppo_trainer.py:460), and transformers 5's TrainingArguments no longer exports
  ACCELERATE_MIXED_PRECISION: `bf16` changes nothing in TRL's loop. The weights' dtype is what
  the models are loaded in; `mixed_precision` is recorded from the trainer to show it is "no".
- `gradient_checkpointing` (default True) is never applied: the trainer does not call the
  Trainer's init or `gradient_checkpointing_enable`. It is passed as False and checked off.
- The optimizer steps once per `gradient_accumulation_steps` micro-batches, across mini-batch
  boundaries (:810, :849), and on every micro-batch of a step that drew the dataloader's last
  batch: see `trl_batch_args`; the step meter counts the updates applied (`optimizer_steps`).
- Generation and the rollout forwards run `local_rollout_forward_batch_size` (64) rows at once,
  and generation keeps every step's logits (`output_scores=True`, :108): TRL's own set-up, kept.
- Response tokens: the worker wraps the module's `batch_generation` (:115) to see each step's
  sampled ids, unchanged, and counts each row up to and including its first EOS
  (`response_tokens`), as ours counts its response mask.
- No gradient clipping in the loop; the learning rate decays linearly; the callbacks'
  `on_step_end` fires once per PPO step after the step's updates and logs (:913): the step meter
  closes each step there (`step_meter.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRL_VERSION = "1.12.0"
ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "wheels"


# ---- getting TRL 1.12 -------------------------------------------------------------------------------


def ensure_trl_venv(venv: Path, torch_wheel: Path) -> Path:
    """A virtual environment with torch 2.13.0 (`torch_wheel` when present) and trl 1.12.0; its python."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", f"import trl, torch; assert trl.__version__ == '{TRL_VERSION}', trl.__version__"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"[bench] creating {venv} (torch 2.13.0 + trl {TRL_VERSION}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [str(torch_wheel) if torch_wheel.exists() else "torch==2.13.0"], check=True)
    subprocess.run(pip + [f"trl=={TRL_VERSION}", "peft", "psutil"], check=True)
    subprocess.run(probe, check=True)
    return python


def install_trl_layer(target: Path, wheels: Path = WHEELS) -> Path:
    """trl 1.12.0 alone in `target` (put it first on PYTHONPATH); its requirements are checked
    against the running environment. From `wheels` without the network when the wheel is there."""
    dist_info = target / f"trl-{TRL_VERSION}.dist-info"
    if not dist_info.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
               f"trl=={TRL_VERSION}"]
        offline = any(wheels.glob(f"trl-{TRL_VERSION}-*.whl"))
        if offline:
            cmd += ["--no-index", "--find-links", str(wheels)]
        print(f"[bench] installing trl {TRL_VERSION} into {target} "
              f"({'from ' + str(wheels) + ', no index' if offline else 'from the package index'}) ...", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"could not install trl=={TRL_VERSION}: without network, run `make gpu-wheels` on a "
                             f"machine with network first and copy {wheels} here")
    check_trl_requirements(dist_info)
    return target


def check_trl_requirements(dist_info: Path) -> None:
    """Every unconditional requirement of trl 1.12 (accelerate, datasets, transformers, ...) is met
    by the running environment, which the layer shares."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    problems = []
    for line in (dist_info / "METADATA").read_text().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra (peft, vllm, ...): not needed for PPO
        try:
            have = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req} (not installed)")
            continue
        if not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req} (installed: {have})")
    if problems:
        raise SystemExit(f"trl {TRL_VERSION} needs, in this environment: " + "; ".join(problems))


# ---- the run ----------------------------------------------------------------------------------------


def trl_batch_args(batch: int, mini: int, micro: int) -> dict:
    """Our rollouts per step / per optimizer update / per forward pass as TRL 1.12 PPOConfig fields.

    TRL's rollout batch is per_device_train_batch_size * gradient_accumulation_steps, and its
    optimizer steps once per gradient_accumulation_steps micro-batches even across mini-batches
    (ppo_trainer.py:810/849). One update per mini-batch, as ours does, is expressible two ways:
    one mini-batch per step (accumulated over micro-batches), or no accumulation at all.
    Only the second is exact: with accumulation, accelerate also steps on every micro-batch of
    a step that drew the dataloader's last batch (`Accelerator._do_sync`, sync_with_dataloader;
    TRL builds its Accelerator without a way to turn that off). Measured with `optimizer_steps`:
    8 prompts, batches of 4 in 2 micro-batches, 4 steps of 2 epochs -> 12 updates, not 8.
    """
    if mini == batch:
        return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": batch // micro,
                "num_mini_batches": 1}
    if micro == mini:
        return {"per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
                "num_mini_batches": batch // mini}
    raise ValueError(f"TRL 1.12 cannot do one update per mini-batch of {mini} in micro-batches of {micro} "
                     f"with several mini-batches per step of {batch}: use mini == batch or micro == mini")


def run_trl(spec: dict) -> dict:
    """One TRL PPO run, set up as TRL's example script (examples/scripts/ppo/ppo.py) does, and
    checked after set-up and after training (`check_setup`, `check_trained`: a failed check exits).

    spec keys: policy, rm (a full sequence-classification checkpoint), tokenizer, lora, prompts
    (text; or prompt_ids, token ids already through the chat template), batch, mini, micro, epochs,
    new_tokens, lr, seed, steps, device ("cpu" | "cuda"), dtype, threads, float32_matmul_precision.
    Returns the per-step numbers of `step_meter.StepMeter` and what ran.
    """
    import torch
    import trl
    from datasets import Dataset
    from step_meter import StepMeter
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_module

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"expected trl {TRL_VERSION}, imported {trl.__version__} from {trl.__file__}")
    if (Path(spec["rm"]) / "adapter_config.json").exists():
        raise SystemExit(f"{spec['rm']}: a LoRA adapter; TRL's PPO takes a full reward model (save it merged)")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.set_float32_matmul_precision(spec["float32_matmul_precision"])
    cuda = spec["device"] == "cuda"
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(spec["seed"])
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"], padding_side="left")
    # TRL treats every pad id as padding (ppo_trainer.py:211, :727); its example adds a distinct
    # [PAD] (beyond the embedding: TRL zeroes pad ids before every model call).
    tok.add_special_tokens({"pad_token": "[PAD]"})
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=dtype)
    # The example: reward and value model both from the RM checkpoint; the value model trains in
    # full; with peft_config the reference is the policy with its adapters disabled (ref_model=None).
    reward_model = AutoModelForSequenceClassification.from_pretrained(spec["rm"], num_labels=1, dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(spec["rm"], num_labels=1, dtype=dtype)
    peft_config, ref = None, None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    else:
        ref = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=dtype)
    ids = spec.get("prompt_ids") or [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                return_dict=True)["input_ids"] for p in spec["prompts"]]
    dataset = Dataset.from_dict({"input_ids": ids})
    batch_args = trl_batch_args(spec["batch"], spec["mini"], spec["micro"])
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_ppo_"), **batch_args,
        num_ppo_epochs=spec["epochs"], response_length=spec["new_tokens"], total_episodes=spec["batch"] * spec["steps"],
        learning_rate=spec["lr"], temperature=1.0, stop_token="eos", kl_coef=0.05, report_to="none",
        num_sample_generations=0, save_strategy="no", logging_steps=1, seed=spec["seed"], use_cpu=not cuda,
        bf16=False, fp16=False, disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=False,  # ignored by TRL 1.12 (never applied); checked off below
    )
    meter, sampled = StepMeter(cuda), []  # sampled: (real response tokens, width) of each step
    generate = trl_module.batch_generation

    def counting_generation(model, queries, *rest, **kwargs):  # observes TRL's rollout, changes nothing
        query_responses, logits = generate(model, queries, *rest, **kwargs)
        responses = query_responses[:, queries.shape[1]:]
        sampled.append((response_tokens(responses, tok.eos_token_id), responses.shape[1]))
        return query_responses, logits

    trl_module.batch_generation = counting_generation

    class StepEnd(TrainerCallback):  # fires once per PPO step, after its updates and logs (:913)
        def on_step_end(self, *a, **k):
            meter.step_end(sampled[-1][0])

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward_model,
                         train_dataset=dataset, value_model=value_model, eval_dataset=dataset.select(range(2)),
                         peft_config=peft_config, callbacks=[StepEnd()])
    checks = check_setup(trainer, value_model, spec, dtype)
    before = {name: p.detach().clone() for name, p in watched_parameters(trainer, value_model).items()}
    trainer.train()
    checks.update(check_trained(trainer, value_model, before, meter, sampled, spec))
    import accelerate
    import transformers

    return {"steps": meter.steps, "checks": checks, "optimizer_steps": meter.updates,
            "peak_memory_mb": meter.lifetime_peak_mb(), "per_step_memory_reset": meter.per_step_reset,
            "mixed_precision": str(trainer.accelerator.mixed_precision), "device": str(trainer.accelerator.device),
            "param_dtype": spec["dtype"], "trl_batch_args": batch_args,
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                         "accelerate": accelerate.__version__, "torch": torch.__version__}}


def response_tokens(responses, eos_id: int) -> int:
    """Real response tokens in a `(b, t)` batch of sampled ids: each row up to and including its
    first EOS, or all t when it has none (generation pads rows that finished early)."""
    import torch

    is_eos = responses == eos_id
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses.shape[1])
    return int(lengths.sum())


def watched_parameters(trainer, value_model) -> dict:
    """A few weights that must move in training: the value model's head and first block, and the
    policy's first trainable tensor (a LoRA B matrix, zero at the start, under LoRA)."""
    named = dict(value_model.named_parameters())
    first_block = next(n for n in named if ".layers.0." in n or ".h.0." in n)
    policy = next(p for n, p in trainer.model.policy.named_parameters() if p.requires_grad
                  and ("lora_B" in n or trainer.ref_model is not None))
    return {"value_head": value_model.score.weight, f"value:{first_block}": named[first_block], "policy": policy}


def check_setup(trainer, value_model, spec: dict, dtype) -> dict:
    """Every setting passed took effect in TRL 1.12's objects; exit naming the ones that did not."""
    import torch

    facts, problems = {}, []

    def check(name: str, value, ok: bool) -> None:
        facts[name] = value
        if not ok:
            problems.append(f"{name} = {value!r}")

    args, policy = trainer.args, trainer.model.policy
    check("mixed_precision", str(trainer.accelerator.mixed_precision), str(trainer.accelerator.mixed_precision) == "no")
    dtypes = {str(p.dtype) for m in (trainer.model, trainer.reward_model) for p in m.parameters()}
    check("parameter_dtypes", sorted(dtypes), dtypes == {str(dtype)})
    checkpointing = [bool(getattr(m, "is_gradient_checkpointing", False)) for m in (policy, value_model)]
    check("gradient_checkpointing(policy, value)", checkpointing, not any(checkpointing))
    geometry = {"rollouts_per_step": args.batch_size, "rollouts_per_update": args.local_mini_batch_size,
                "rows_per_forward": min(args.per_device_train_batch_size, args.local_mini_batch_size),
                "steps": args.num_total_batches, "epochs": args.num_ppo_epochs, "new_tokens": args.response_length}
    want = {"rollouts_per_step": spec["batch"], "rollouts_per_update": spec["mini"], "rows_per_forward": spec["micro"],
            "steps": spec["steps"], "epochs": spec["epochs"], "new_tokens": spec["new_tokens"]}
    check("geometry", geometry, geometry == want)
    facts["rollout_forward_rows"] = args.local_rollout_forward_batch_size  # TRL's default, kept
    tok = trainer.processing_class
    check("stop_token_id", trainer.stop_token_id, trainer.stop_token_id == tok.eos_token_id != tok.pad_token_id)
    lrs = set(trainer.lr_scheduler.base_lrs)
    check("learning_rates", sorted(lrs), lrs == {spec["lr"]})
    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    if spec["lora"]:
        lora = policy.peft_config["default"]
        check("reference", "adapters-disabled" if trainer.ref_model is None else "separate-model",
              trainer.is_peft_model and trainer.ref_model is None)
        check("lora(r, alpha)", [lora.r, lora.lora_alpha], [lora.r, lora.lora_alpha] == [16, 32])
        bare = [n for n, m in policy.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n
                and not n.endswith("base_layer") and not n.endswith("lm_head")]
        check("linear_layers_without_lora", bare, not bare)
        check("policy_trainable_not_lora", [n for n in trainable if "lora_" not in n],
              bool(trainable) and all("lora_" in n for n in trainable))
    else:
        check("reference", "separate-model" if trainer.ref_model is not None else "none", trainer.ref_model is not None)
        check("policy_trainable_share", len(trainable) / len(list(policy.parameters())),
              len(trainable) == len(list(policy.parameters())))
    value_total = sum(p.numel() for p in value_model.parameters())
    value_trainable = sum(p.numel() for p in value_model.parameters() if p.requires_grad)
    check("value_trainable_parameters", value_trainable, value_total > 0 and value_trainable == value_total)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in [*value_model.named_parameters(), *trainable.items()] if id(p) not in in_optimizer]
    check("trainable_not_in_optimizer", missing[:5], not missing)
    if problems:
        raise SystemExit("TRL 1.12 set-up differs from the spec: " + "; ".join(problems))
    return facts


def check_trained(trainer, value_model, before: dict, meter, sampled: list, spec: dict) -> dict:
    """After training: the watched weights moved, every step sampled at most new_tokens, and the
    optimizer stepped once per mini-batch (our count); exit naming what failed."""
    import torch

    after = watched_parameters(trainer, value_model)
    unchanged = [name for name, p in after.items() if torch.equal(p.detach(), before[name])]
    expected = spec["steps"] * spec["epochs"] * (spec["batch"] // spec["mini"])
    widths = [width for _, width in sampled]
    problems = ([f"weights that did not change: {unchanged}"] if unchanged else []) + (
        [f"optimizer updates {meter.updates}, expected {expected} (one per mini-batch)"]
        if meter.updates != expected else []) + (
        [f"sampled widths {widths} (steps {spec['steps']}, new_tokens {spec['new_tokens']})"]
        if len(widths) != spec["steps"] or max(widths) > spec["new_tokens"] else [])
    if problems:
        raise SystemExit("TRL 1.12 run differs from the spec: " + "; ".join(problems))
    return {"weights_changed": sorted(after), "optimizer_updates": meter.updates, "sampled_widths": widths}


def peak_memory(cuda: bool) -> tuple[float, str]:
    """(MiB, kind): CUDA max allocated on a GPU, else this process's peak RSS.

    The RSS peak is Linux's VmHWM, which starts afresh at exec; ru_maxrss does not (a child
    inherits its parent's at fork, so a small worker of a big parent would read the parent's).
    """
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    status = Path("/proc/self/status")
    if status.exists():
        hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(hwm.split()[1]) / 1024, "process_max_rss"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def launch(cmd: list[str], env: dict | None = None) -> dict:
    """Run a worker command; its last `RESULT {json}` line, or exit with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"worker {' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    result = run_trl(spec)
    result["total_s"] = time.perf_counter() - started
    result["peak_memory_kind"] = "cuda_max_allocated" if spec["device"] == "cuda" else "process_max_rss"
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
