"""The distributed path is real: 2 CPU processes (gloo) under `accelerate launch` stay in sync.

Each rank rolls out its own prompts; DDP all-reduces the gradients, so after the updates both
ranks must hold identical policy and value weights, different from the initial ones.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    import torch
    from rlhf_stack.config import load_config
    from rlhf_stack.ppo import PPOConfig, setup, trainer

    out = Path(sys.argv[2])

    def digest(model):
        h = hashlib.sha256()
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad:
                h.update(name.encode()); h.update(p.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    original_setup, original_finish = setup.build_run, trainer._finish

    def build_run(cfg, reward_fns):  # record the initial weights and this rank's first prompts
        run = original_setup(cfg, reward_fns)
        rank = run.accelerator.process_index
        first = run.data.prompt_stream.take(rank * cfg.prompts_per_step, cfg.prompts_per_step)
        (out / f"init-{rank}.json").write_text(json.dumps({"digest": digest(run.actor_critic),
                                                           "prompts": first, "world": run.accelerator.num_processes}))
        return run

    def finish(run, cfg, unwrapped, runtime):
        rank = run.accelerator.process_index
        (out / f"final-{rank}.json").write_text(json.dumps({"digest": digest(unwrapped)}))
        return original_finish(run, cfg, unwrapped, runtime)

    setup.build_run, trainer._finish = build_run, finish

    def length_reward(prompts, responses):
        return [len(r) / 50.0 for r in responses]

    trainer.train_ppo(load_config(PPOConfig, json.loads(sys.argv[1])), reward_fns=[length_reward])
""")


# gae as configured by default; a value-only warm-up step (the policy gets no gradient, which DDP
# must be told about); the critic-free rloo (no value model, 2 prompts x 2 samples per rank); gae
# with full tuning, where the value model has a decoder of its own and its forward and backward run
# before the policy's (two backward passes per micro-batch, one all-reduce).
@pytest.mark.parametrize("estimator_settings", [
    {}, {"value_warmup_steps": 1}, {"advantage_estimator": "rloo", "samples_per_prompt": 2}, {"tuning": "full"}],
    ids=["gae", "gae-value-warmup", "rloo", "gae-full-tuning"])
def test_two_cpu_processes_hold_identical_weights(tmp_path, tiny_model_dir, prompts_file, estimator_settings):
    settings = dict(estimator_settings)
    tuning = ({"tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}} if settings.pop("tuning", "lora") == "lora"
              else {"tuning": "full"})
    cfg = {
        "policy": {"name_or_path": str(tiny_model_dir), **tuning},
        "prompts": {"path": str(prompts_file), "eval_fraction": 0.0}, "output_dir": str(tmp_path / "ppo"),
        "steps": 2, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 6, "learning_rate": 1e-2,
        "save_every_steps": 1, "progress_bar": False, **settings,
    }
    script = tmp_path / "run_ppo.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # --multi_gpu selects the torchrun launcher; on a machine without CUDA, Accelerator(cpu=True)
    # then joins a gloo process group (accelerate rejects --cpu together with --multi_gpu).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(script), json.dumps(cfg), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    init = [json.loads((tmp_path / f"init-{r}.json").read_text()) for r in (0, 1)]
    final = [json.loads((tmp_path / f"final-{r}.json").read_text()) for r in (0, 1)]
    assert init[0]["world"] == init[1]["world"] == 2
    assert init[0]["digest"] == init[1]["digest"]  # same start
    assert init[0]["prompts"] != init[1]["prompts"]  # each rank rolls out its own prompts
    assert final[0]["digest"] == final[1]["digest"]  # in sync after the updates
    assert final[0]["digest"] != init[0]["digest"]  # and the updates did something
    assert json.loads((Path(cfg["output_dir"]) / "stage.json").read_text())["metrics"]["world_size"] == 2
