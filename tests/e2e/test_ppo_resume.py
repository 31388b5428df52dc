"""Kill -9 in the middle of a PPO run, resume, and finish exactly where an uninterrupted run does.

The interrupted run is a subprocess whose reward function SIGKILLs its own process during step 5
(after the step-4 checkpoint), which is a kill -9 at a known point. Resume must restore weights,
AdamW, LR schedule, KL controller, score moments, RNG and data position: every logged metric of
the resumed run then equals the uninterrupted run's (CPU, tiny model) to 1e-6.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

TIMING_KEYS = {"time_generate_s", "time_sample_s", "time_rollout_forward_s", "time_score_s", "time_train_s",
               "time_step_s", "tokens_per_s", "peak_memory_mb", "elapsed_s"}


def ppo_config(tiny_model_dir, prompts_file, corpus_file, output_dir) -> dict:
    return {
        "policy": {"name_or_path": str(tiny_model_dir), "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "prompts": {"path": str(prompts_file), "eval_fraction": 0.0},
        "ptx_data": {"path": str(corpus_file)}, "ptx_coef": 0.5,
        "output_dir": str(output_dir), "steps": 6, "batch_size": 4, "mini_batch_size": 2, "grad_accum_steps": 2,
        "max_new_tokens": 6, "learning_rate": 5e-3, "save_every_steps": 2, "progress_bar": False,
        "adaptive_kl": True, "kl_target": 0.5, "kl_horizon": 100, "score_norm": "running", "seed": 3,
    }


def t_share(prompts, responses):
    """Share of words starting with t: learnable and cheap."""
    return [sum(w.startswith("t") for w in r.split()) / max(len(r.split()), 1) for r in responses]


SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {tests_dir!r})
    from e2e.test_ppo_resume import t_share
    from rlhf_stack.config import load_config
    from rlhf_stack.ppo import PPOConfig, train_ppo

    calls = 0
    def killing_reward(prompts, responses):
        global calls
        calls += 1
        if calls == 5:  # inside step 5: the step-4 checkpoint exists, step 5 is half done
            os.kill(os.getpid(), signal.SIGKILL)
        return t_share(prompts, responses)
    killing_reward.__name__ = "t_share"

    cfg = load_config(PPOConfig, json.loads(sys.argv[1]))
    train_ppo(cfg, reward_fns=[killing_reward])
""")


def read_log(output_dir: Path) -> list[dict]:
    lines = (output_dir / "logs" / "ppo_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


@pytest.mark.parametrize("extra", [{}, {"policy_ema": 0.6}], ids=["last_weights", "policy_ema"])
def test_kill_9_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, prompts_file, corpus_file, extra):
    """With policy_ema the saved policy is the weight average: it matches only if the step-4
    checkpoint carried the average and the resume restored it."""
    from safetensors.torch import load_file

    from rlhf_stack.config import load_config
    from rlhf_stack.ppo import PPOConfig, train_ppo

    tests_dir = str(Path(__file__).resolve().parents[1])
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    raw = {**ppo_config(tiny_model_dir, prompts_file, corpus_file, killed_dir), **extra}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": tests_dir}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests_dir=tests_dir), json.dumps(raw)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (killed_dir / "stage.json").exists()  # an interrupted stage never looks finished
    checkpoints = sorted(p.name for p in (killed_dir / "checkpoints").iterdir())
    assert "step-4" in checkpoints and not any(name.endswith(".partial") for name in checkpoints)
    assert [r["step"] for r in read_log(killed_dir)] == [1, 2, 3, 4]

    resumed = train_ppo(load_config(PPOConfig, raw), reward_fns=[t_share])
    clean = train_ppo(load_config(PPOConfig, {**raw, "output_dir": str(clean_dir)}), reward_fns=[t_share])

    assert resumed.metrics["resumed_from_step"] == 4 and clean.metrics["resumed_from_step"] is None
    resumed_log, clean_log = read_log(killed_dir), read_log(clean_dir)
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(resumed_log, clean_log, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6), (got["step"], key)
    assert clean_log[-1]["ptx_loss"] > 0 and clean_log[-1]["kl_coef"] != clean_log[0]["kl_coef"]
    for key in ("score", "kl", "kl_coef", "policy_loss", "value_loss", "ptx_loss"):
        assert resumed.metrics[key] == pytest.approx(clean.metrics[key], abs=1e-6)
    got_weights = load_file(str(killed_dir / "adapter_model.safetensors"))
    want_weights = load_file(str(clean_dir / "adapter_model.safetensors"))
    for name, tensor in want_weights.items():
        torch.testing.assert_close(got_weights[name], tensor, atol=1e-6, rtol=0)


def test_kill_9_then_resume_matches_uninterrupted_with_rloo(tmp_path, tiny_model_dir, prompts_file, corpus_file):
    """The same kill -9 at step 5 with the critic-free RLOO estimator: 2 prompts a step, each sampled
    twice in adjacent rows, no value model. The prompt order, the samples and the group baselines
    must all come back, and no checkpoint may hold a value parameter."""
    from safetensors.torch import load_file

    from rlhf_stack.config import load_config
    from rlhf_stack.ppo import PPOConfig, train_ppo

    tests_dir = str(Path(__file__).resolve().parents[1])
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    raw = {**ppo_config(tiny_model_dir, prompts_file, corpus_file, killed_dir),
           "advantage_estimator": "rloo", "samples_per_prompt": 2}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": tests_dir}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests_dir=tests_dir), json.dumps(raw)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [r["step"] for r in read_log(killed_dir)] == [1, 2, 3, 4]
    step4 = load_file(str(killed_dir / "checkpoints" / "step-4" / "trainable.safetensors"))
    assert step4 and not any("value" in name for name in step4)  # the policy adapter only

    resumed = train_ppo(load_config(PPOConfig, raw), reward_fns=[t_share])
    clean = train_ppo(load_config(PPOConfig, {**raw, "output_dir": str(clean_dir)}), reward_fns=[t_share])

    assert resumed.metrics["resumed_from_step"] == 4 and clean.metrics["resumed_from_step"] is None
    assert resumed.metrics["models"]["value_init"] == "none"
    resumed_log, clean_log = read_log(killed_dir), read_log(clean_dir)
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(resumed_log, clean_log, strict=True):
        assert got.keys() == want.keys() and "value_loss" not in want
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6), (got["step"], key)
    assert clean_log[-1]["ptx_loss"] > 0 and clean_log[-1]["kl_coef"] != clean_log[0]["kl_coef"]
    got_weights = load_file(str(killed_dir / "adapter_model.safetensors"))
    want_weights = load_file(str(clean_dir / "adapter_model.safetensors"))
    for name, tensor in want_weights.items():
        torch.testing.assert_close(got_weights[name], tensor, atol=1e-6, rtol=0)
