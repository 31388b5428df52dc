"""Every stage under accelerate's FSDP2 plugin on two CPU processes (gloo), against one process.

One `accelerate launch --config_file recipes/accelerate/cpu_fsdp.yaml` runs, stage after stage:
SFT (full, LoRA), the reward model (LoRA, full), DPO (LoRA: the reference is the base with
adapters disabled; full: a frozen copy), and PPO with gae on the shared LoRA base (policy,
reference, value AND the reward model as adapters of one sharded base), gae with full tuning
(separate models), rloo, grpo and reinforce_baseline. The same configs run in this process with
the same global batch (2 x per-process batch). Then, per stage:

- the loss curve matches: every logged step's loss, and for PPO also score, KL, value loss;
- the checkpoint is a plain HF / peft directory (gathered on save: no sharded tensors, the HF
  architecture name), reloads with transformers + peft and gives the unsharded run's outputs;
  for fully tuned PPO, the unsharded run's weights but for a few isolated ones whose gradient is
  rounding noise (`assert_full_weights_match`).

Why a tolerance and which: the two runs do the same arithmetic in a different order (gradients
are reduce-scattered across the processes and averaged; one process averages over the whole
batch), so float32 rounding differs at ~1e-7 and a few AdamW steps carry it on. TOL bounds that
and is 1000x below what one wrong sample in a batch moves (measured ~1e-2). For PPO: the
sampler's draws are a function of (seed, step, global row), so each process samples what one
process would for its rows, and advantages are computed over the gathered global batch (so
whitening and reinforce_baseline's std are the global batch's); `sequence_mean`
loss aggregation and one optimizer step per epoch (a mean over responses is the same whether the
batch is split over processes or over micro-batches); gae samples greedily (top_k = 1) so every
response runs to max_new_tokens (checked), and the value loss's token mean is a mean over
responses too.

The last test SIGKILLs an FSDP2 PPO run (the whole process group) after its first checkpoint;
the re-run through `rlhf-stack ppo` resumes and ends exactly where the uninterrupted one does.
"""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FSDP_CONFIG = REPO / "recipes" / "accelerate" / "cpu_fsdp.yaml"
TOL = 1e-4
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
TIMING_KEYS = {"time_generate_s", "time_sample_s", "time_rollout_forward_s", "time_score_s", "time_train_s",
               "time_step_s", "tokens_per_s", "peak_memory_mb", "elapsed_s", "lr"}
PPO_COMPARED = ("policy_loss", "value_loss", "score", "kl", "reward", "grad_norm", "entropy")

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from rlhf_stack.config import load_config
    from rlhf_stack.pipeline.runner import seed_everything
    from rlhf_stack.pipeline.stages import STAGES
    for stage, cfg in json.load(open(sys.argv[1])):
        start = time.perf_counter()
        seed_everything(42)  # as the runner and rlhf_stack.pipeline.launch do
        STAGES[stage].entry()(load_config(STAGES[stage].config_type(), cfg))
        print(f"[fsdp] {cfg['output_dir']}: {time.perf_counter() - start:.1f} s", flush=True)
""")


def launch_env() -> dict:
    from rlhf_stack.pipeline.runner import launch_env as runner_env

    return {**runner_env(1), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def accelerate_cmd(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
            "--main_process_port", str(port), *args]


# ---- the configs: `world` processes, the same global batch -----------------------------------------


def trainer_stage(kind: str, name: str, base: str, data: Path, out: Path, world: int) -> tuple[str, dict]:
    """(stage, config) of an SFT / reward / DPO run with a global batch of 4 sequences or rankings."""
    tuning = {"tuning": "lora", "lora": LORA} if name.endswith("lora") else {"tuning": "full"}
    train = {"max_steps": 3, "batch_size": 4 // world, "learning_rate": 1e-3, "logging_steps": 1,
             "early_stopping_patience": None}
    common = {"data": {"path": str(data), "eval_fraction": 0.0}, "train": train, "max_length": 64,
              "output_dir": str(out / name)}
    if kind == "sft":
        return "sft", {**common, "model": {"name_or_path": base, **tuning}}
    if kind == "reward":
        return "reward", {**common, "model": {"name_or_path": base, **tuning}, "init_from": base}
    return "dpo", {**common, "policy": {"name_or_path": base, **tuning}}


def ppo_stage(name: str, sft: str, reward: str, prompts: Path, out: Path, world: int) -> tuple[str, dict]:
    """PPO, 2 steps of 8 rollouts (4 prompts x 2 samples for the critic-free estimators); 3 steps
    for gae-lora, the uninterrupted run the SIGKILL test compares with."""
    estimator, tuning = name.split("-")
    batch = 8 // world
    cfg = {"policy": {"name_or_path": sft, **({"tuning": "lora", "lora": LORA} if tuning == "lora" else {"tuning": "full"})},
           "prompts": {"path": str(prompts), "eval_fraction": 0.0}, "output_dir": str(out / f"ppo-{name}"),
           "rewards": [{"kind": "reward_model", "path": reward}], "advantage_estimator": estimator,
           "steps": 3 if name == "gae-lora" else 2, "batch_size": batch, "mini_batch_size": batch, "grad_accum_steps": batch // 4,
           "ppo_epochs": 2, "max_new_tokens": 5,
           "loss_aggregation": "sequence_mean", "learning_rate": 1e-2, "save_every_steps": 1,
           "eval_max_prompts": 0, "progress_bar": False, "seed": 5}
    if estimator == "gae":  # greedy: every response runs to max_new_tokens (checked), see the module doc
        cfg.update(value_init=reward, top_k=1)  # the value adapter starts as the RM's (shared base)
    else:
        cfg["samples_per_prompt"] = 2
    return "ppo", cfg


TRAINER_RUNS = [("sft", "sft-lora"), ("reward", "reward-lora"), ("reward", "reward-full"), ("dpo", "dpo-lora"),
                ("dpo", "dpo-full")]
PPO_RUNS = ["gae-lora", "gae-full", "rloo-lora", "grpo-full", "reinforce_baseline-lora"]


def plan(world: int, out: Path, files: dict) -> list[tuple[str, dict]]:
    """Every run of one side. The inputs (SFT init, reward model) are the single-process ones, so
    both sides start from identical files."""
    sft, reward = str(files["ref"] / "sft-full"), str(files["ref"] / "reward-lora")
    runs = [trainer_stage("sft", "sft-full", files["model"], files["instructions"], out, world)]
    for kind, name in TRAINER_RUNS:
        base = files["model"] if kind == "sft" else sft
        runs.append(trainer_stage(kind, name, base, files["instructions" if kind == "sft" else "rankings"], out, world))
    runs += [ppo_stage(name, sft, reward, files["prompts"], out, world) for name in PPO_RUNS]
    return runs


# ---- reading the results --------------------------------------------------------------------------


def trainer_losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def ppo_log(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "logs" / "ppo_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def outputs(checkpoint: Path) -> torch.Tensor:
    """Logits (causal LM) or scores (reward model) of a fixed batch, the checkpoint opened with
    plain transformers + peft (peft on the base named in adapter_config.json)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    info = json.loads((checkpoint / "stage.json").read_text())
    auto, kwargs = ((AutoModelForSequenceClassification, {"num_labels": 1}) if info["stage"] == "reward"
                    else (AutoModelForCausalLM, {}))
    adapter = checkpoint / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base = auto.from_pretrained(json.loads(adapter.read_text())["base_model_name_or_path"], **kwargs)
        model = PeftModel.from_pretrained(base, checkpoint)
    else:
        model = auto.from_pretrained(checkpoint, **kwargs)
    ids = torch.tensor([[5, 17, 42, 99, 7, 23, 64, 11]])
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits.float()


def check_plain_checkpoint(checkpoint: Path) -> None:
    """Gathered on save: every tensor whole (the single-process file's shapes), no FSDP class name."""
    from safetensors import safe_open

    weights = checkpoint / ("adapter_model.safetensors" if (checkpoint / "adapter_config.json").is_file()
                            else "model.safetensors")
    with safe_open(str(weights), "pt") as fh:
        assert fh.keys() and not any(k.startswith(("policy.", "_fsdp")) for k in fh.keys())
    if (checkpoint / "config.json").is_file():
        assert not json.loads((checkpoint / "config.json").read_text())["architectures"][0].startswith("FSDP")


def assert_full_weights_match(fsdp: Path, ref: Path, stray: float = 1e-3) -> None:
    """Every weight of two fully tuned checkpoints within TOL, but for at most a `stray` fraction of
    each tensor. Those are weights whose gradient is itself rounding noise (~1e-9): AdamW divides
    each gradient by its own running scale, so such a weight takes a near-full step (lr = 1e-2
    here) whose sign the rounding picks, and its outputs move by ~1e-3 (seen on one CPU, not on
    another; 6 of 37,504 embedding weights in grpo-full). A wrong gradient or a mis-gathered
    checkpoint moves nearly every weight."""
    from safetensors.torch import load_file

    got, want = load_file(str(fsdp / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    tied = got.keys() - want.keys()  # FSDP's gathered save also writes the tied LM head
    assert want.keys() <= got.keys() and tied <= {"lm_head.weight"}
    assert all(torch.equal(got[key], got["model.embed_tokens.weight"]) for key in tied)
    for key, w in want.items():
        off = ((got[key] - w).abs() > TOL + TOL * w.abs()).float().mean().item()
        assert off <= stray, f"{key}: {off:.2%} of the weights differ by more than {TOL}"


# ---- the tests --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Both sides of every run: {"ref": dir, "fsdp": dir}. The single-process side runs in this
    process while the two FSDP2 processes run theirs (after the inputs both need exist)."""
    root = tmp_path_factory.mktemp("fsdp")
    data = _data_files(root)
    files = {"model": str(tiny_model_dir), "ref": root / "ref", **data}
    ref_plan, fsdp_plan = plan(1, root / "ref", files), plan(2, root / "fsdp", files)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_in_process(ref_plan[:1] + [r for r in ref_plan if r[1]["output_dir"].endswith("reward-lora")])
        plan_file = root / "fsdp-plan.json"
        plan_file.write_text(json.dumps(fsdp_plan))
        script = root / "run_plan.py"
        script.write_text(SCRIPT)
        proc = subprocess.Popen(accelerate_cmd(29541, str(script), str(plan_file)), env=launch_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _run_in_process([r for r in ref_plan[1:] if not r[1]["output_dir"].endswith("reward-lora")])
        output, _ = proc.communicate(timeout=400)
    finally:
        torch.set_num_threads(before)
    assert proc.returncode == 0, output[-4000:]
    print("\n".join(line for line in output.splitlines() if line.startswith("[fsdp]")))
    return {"ref": root / "ref", "fsdp": root / "fsdp", "root": root, **data}


def _run_in_process(stages: list[tuple[str, dict]]) -> None:
    from rlhf_stack.config import load_config
    from rlhf_stack.pipeline.runner import seed_everything
    from rlhf_stack.pipeline.stages import STAGES

    for stage, cfg in stages:
        start = time.perf_counter()
        seed_everything(42)
        STAGES[stage].entry()(load_config(STAGES[stage].config_type(), cfg))
        print(f"[ref] {cfg['output_dir']}: {time.perf_counter() - start:.1f} s", flush=True)


def _data_files(root: Path) -> dict:
    def write_jsonl(path: Path, rows: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    topics = ["cats", "dogs", "the sky", "bread", "python", "the moon", "water", "plants"]
    instructions = [{"prompt": f"Tell me about {t} ({i}).", "response": f"{t.capitalize()} are nice. Fact {i}."}
                    for i in range(3) for t in topics]
    rankings = [{"prompt": f"Question {i}: name a fruit.", "completions": ["Apple.", "Banana is a fruit.", "no no",
                                                                        "I do not know."],
                 "ranks": [1, 2, 4, 3]} for i in range(16)]
    return {"instructions": write_jsonl(root / "sft.jsonl", instructions),
            "rankings": write_jsonl(root / "rankings.jsonl", rankings),
            "prompts": write_jsonl(root / "prompts.jsonl", [{"prompt": f"Say something nice {i}."} for i in range(32)])}


@pytest.mark.parametrize("name", ["sft-full", *[name for _, name in TRAINER_RUNS]])
def test_trainer_stage_matches_one_process(runs, name):
    ref, fsdp = runs["ref"] / name, runs["fsdp"] / name
    info = json.loads((fsdp / "stage.json").read_text())
    assert info["metrics"]["world_size"] == 2 and info["metrics"]["sharded"] is True
    want, got = trainer_losses(ref), trainer_losses(fsdp)
    assert len(got) == len(want) == 3
    assert got == pytest.approx(want, abs=TOL, rel=TOL)
    check_plain_checkpoint(fsdp)
    torch.testing.assert_close(outputs(fsdp), outputs(ref), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", PPO_RUNS)
def test_ppo_matches_one_process(runs, name):
    ref, fsdp = runs["ref"] / f"ppo-{name}", runs["fsdp"] / f"ppo-{name}"
    metrics = json.loads((fsdp / "stage.json").read_text())["metrics"]
    assert metrics["world_size"] == 2 and metrics["sharded"] is True
    if name == "gae-lora":  # the shared-base layout survives sharding: one base, four roles
        assert metrics["models"]["layout"] == "lora-shared-base"
        assert metrics["models"]["reference"] == "adapters-disabled"
        assert metrics["models"]["reward_model"] == "adapter-on-shared-base"
        assert metrics["models"]["value_init"] == "reward-model"
    want, got = ppo_log(ref), ppo_log(fsdp)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, len(want) + 1))
    for g, w in zip(got, want, strict=True):
        if name.startswith("gae"):  # the value loss's token mean is then a mean over responses
            assert g["response_length"] == w["response_length"] == 5
        for key in PPO_COMPARED:
            if key in w:
                assert g[key] == pytest.approx(w[key], abs=TOL, rel=TOL), (name, g["step"], key)
    assert got[-1]["policy_loss"] != got[0]["policy_loss"]  # the updates did something
    check_plain_checkpoint(fsdp)
    if name.endswith("-full"):
        assert_full_weights_match(fsdp, ref)
        assert torch.isfinite(outputs(fsdp)).all()  # and it reloads with plain transformers
    else:
        torch.testing.assert_close(outputs(fsdp), outputs(ref), atol=TOL, rtol=TOL)


def test_sigkilled_fsdp_ppo_resumes_exactly(runs):
    """SIGKILL every process of a two-process FSDP2 run once its step-1 checkpoint is complete; the
    same command again resumes from it and ends exactly where the uninterrupted run (the gae-lora
    run above, same config) ended: every logged value and every saved weight."""
    from safetensors.torch import load_file

    _, cfg = ppo_stage("gae-lora", str(runs["ref"] / "sft-full"), str(runs["ref"] / "reward-lora"),
                       runs["prompts"], runs["root"] / "killed", 2)
    killed = Path(cfg["output_dir"])
    config_file = runs["root"] / "killed.json"
    config_file.write_text(json.dumps(cfg))
    cmd = accelerate_cmd(29542, "-m", "rlhf_stack.cli", "ppo", "--config", str(config_file))
    proc = subprocess.Popen(cmd, env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-1" / "state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.1)
    # SIGKILL the launcher and both ranks (torchrun starts each rank in a session of its own)
    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for process in tree:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=60)
    assert len(tree) >= 3 and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    proc.wait(timeout=60)
    assert not (killed / "stage.json").exists()

    done = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    clean = runs["fsdp"] / "ppo-gae-lora"
    metrics = json.loads((killed / "stage.json").read_text())["metrics"]
    assert metrics["resumed_from_step"] in (1, 2) and metrics["sharded"] is True
    resumed_log, clean_log = ppo_log(killed), ppo_log(clean)
    assert [r["step"] for r in resumed_log] == [r["step"] for r in clean_log] == [1, 2, 3]
    for got, want in zip(resumed_log, clean_log, strict=True):
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6), (got["step"], key)
    got_weights = load_file(str(killed / "adapter_model.safetensors"))
    want_weights = load_file(str(clean / "adapter_model.safetensors"))
    assert got_weights.keys() == want_weights.keys()
    for name, tensor in want_weights.items():
        torch.testing.assert_close(got_weights[name], tensor, atol=1e-6, rtol=0)
