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

What the settings rely on, read in the trl-1.12.0 wheel (see also /work/shared/PEERS.md):
- `Accelerator(gradient_accumulation_steps=...)` is built with no mixed-precision argument
  (ppo_trainer.py:460), and transformers 5's TrainingArguments no longer exports
  ACCELERATE_MIXED_PRECISION: `bf16` changes nothing in TRL's loop. The weights' dtype is what
  the models are loaded in; `mixed_precision` is recorded from the trainer to show it is "no".
- The optimizer steps once per `gradient_accumulation_steps` micro-batches, across mini-batch
  boundaries (:810, :849), and on every micro-batch of a step that drew the dataloader's last
  batch: see `trl_batch_args`; `optimizer_steps` in the result counts the updates applied.
- Generation and the rollout forwards run `local_rollout_forward_batch_size` (64) rows at once,
  and generation keeps every step's logits (`output_scores=True`, :108): TRL's own set-up, kept.
- No gradient clipping in the loop; the learning rate decays linearly; the callbacks'
  `on_step_end` fires once per PPO step after the step's metrics are logged (:913).
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
    """One TRL PPO run; spec keys: policy, rm, tokenizer, lora, prompts, batch, mini, micro, epochs,
    new_tokens, lr, seed, steps, gradient_checkpointing, device ("cpu" | "cuda"), dtype, threads,
    float32_matmul_precision. Returns step end times (after a device sync) and what ran."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"expected trl {TRL_VERSION}, imported {trl.__version__} from {trl.__file__}")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.set_float32_matmul_precision(spec["float32_matmul_precision"])
    cuda = spec["device"] == "cuda"
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(spec["seed"])
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"], padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def reward_model():
        if spec["lora"]:
            from peft import PeftModel

            base_path = json.loads((Path(spec["rm"]) / "adapter_config.json").read_text())["base_model_name_or_path"]
            base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, dtype=dtype)
            model = PeftModel.from_pretrained(base, spec["rm"]).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(spec["rm"], num_labels=1, dtype=dtype)
        model.config.pad_token_id = tok.pad_token_id
        return model

    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=dtype)
    peft_config, ref = None, None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    else:
        ref = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=dtype)
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"] for p in spec["prompts"]]
    dataset = Dataset.from_dict({"input_ids": ids})
    args = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_ppo_"), **trl_batch_args(spec["batch"], spec["mini"], spec["micro"]),
        num_ppo_epochs=spec["epochs"], response_length=spec["new_tokens"], total_episodes=spec["batch"] * spec["steps"],
        learning_rate=spec["lr"], temperature=1.0, stop_token="eos", kl_coef=0.05, report_to="none",
        num_sample_generations=0, save_strategy="no", logging_steps=1, seed=spec["seed"], use_cpu=not cuda,
        bf16=False, fp16=False, disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=spec["gradient_checkpointing"],
    )
    step_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward_model(),
                         train_dataset=dataset, value_model=reward_model(), eval_dataset=dataset.select(range(2)),
                         peft_config=peft_config, callbacks=[Clock()])
    # Updates actually applied: accelerate's wrapper skips the inner step between accumulation boundaries.
    updates = [0]
    getattr(trainer.optimizer, "optimizer", trainer.optimizer).register_step_post_hook(
        lambda *_: updates.__setitem__(0, updates[0] + 1))
    trainer.train()
    import accelerate
    import transformers

    return {"step_ends": step_ends,
            "eos_per_step": [e["val/num_eos_tokens"] for e in trainer.state.log_history if "val/num_eos_tokens" in e],
            "mixed_precision": str(trainer.accelerator.mixed_precision), "device": str(trainer.accelerator.device),
            "param_dtype": str(next(trainer.model.parameters()).dtype).removeprefix("torch."),
            "trl_batch_args": trl_batch_args(spec["batch"], spec["mini"], spec["micro"]), "optimizer_steps": updates[0],
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                         "accelerate": accelerate.__version__, "torch": torch.__version__}}


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
    result["peak_memory_mb"], result["peak_memory_kind"] = peak_memory(spec["device"] == "cuda")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
