"""Stage 3 under the faults users hit (issue 15): a NaN score, a NaN gradient, a reward function
that raises. Faults are injected into the real run (a reward function's output, a tensor hook on a
real parameter), never by mocking the code under test."""

import json
import math
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf_stack import checkpointing
from rlhf_stack.config import load_config
from rlhf_stack.errors import NonFiniteError, RewardFunctionError
from rlhf_stack.ppo import PPOConfig, train_ppo
from rlhf_stack.ppo.checkpoint import rng_state

pytestmark = pytest.mark.slow

TIMING_KEYS = {"time_generate_s", "time_sample_s", "time_rollout_forward_s", "time_score_s", "time_train_s",
               "time_step_s", "tokens_per_s", "peak_memory_mb", "elapsed_s"}


def ppo_raw(tiny_model_dir, prompts_file, output_dir, **extra) -> dict:
    """4 steps of 4 rollouts, 2 mini-batches x 2 epochs = 4 updates a step, a checkpoint after step 2.
    Running score statistics and an adaptive KL coefficient make every piece of state matter."""
    return {"policy": {"name_or_path": str(tiny_model_dir), "tuning": "lora",
                       "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "prompts": {"path": str(prompts_file), "eval_fraction": 0.0}, "output_dir": str(output_dir),
            "steps": 4, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 6, "learning_rate": 5e-3,
            "save_every_steps": 2, "progress_bar": False, "eval_max_prompts": 0, "adaptive_kl": True,
            "kl_target": 0.5, "kl_horizon": 100, "score_norm": "running", "seed": 3, **extra}


def t_share(prompts, responses):
    """Share of words starting with t: cheap and learnable."""
    return [sum(w.startswith("t") for w in r.split()) / max(len(r.split()), 1) for r in responses]


def log_records(output_dir) -> list[dict]:
    lines = (output_dir / "logs" / "ppo_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def adapter(output_dir) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / "adapter_model.safetensors"))


def test_nan_score_stops_or_drops_the_step_as_if_never_taken(tmp_path, tiny_model_dir, prompts_file, one_thread):
    """A reward function returns NaN for one response of step 3 (the issue's live bug: that run used
    to finish with exit 0 and a NaN checkpoint).

    `stop`: NonFiniteError at step 3 naming the step, the source, the prompt, the response and the
    last good checkpoint (step-2); nothing after step 2 is saved, no stage.json.

    `skip_step`: the run finishes, and its final weights EQUAL those of a run in which the batch of
    step 3 was never taken. In PPO the batch is the policy's own samples, so "never taken" means:
    step 3's sampling happened (the random stream moves on, as it must for step 4 to draw the same
    samples) but nothing downstream of its scores did: no update, and the KL controller, the
    running score statistics, AdamW and the LR schedule are those after step 2. That run is built
    from the stopped one: its step-2 checkpoint, relabelled step 3 and given the RNG state captured
    when step 3 was scored (just after its sampling), resumed to the end with a clean function.
    """
    captured = {}

    def nan_at_step_3(prompts, responses):
        nan_at_step_3.calls += 1
        if nan_at_step_3.calls == 3:
            captured["rng"] = rng_state()
            return [math.nan if i == 1 else v for i, v in enumerate(t_share(prompts, responses))]
        return t_share(prompts, responses)

    # stop: the message, the last good checkpoint, nothing saved after it
    stopped = tmp_path / "stopped"
    nan_at_step_3.calls = 0
    with pytest.raises(NonFiniteError) as caught:
        train_ppo(load_config(PPOConfig, ppo_raw(tiny_model_dir, prompts_file, stopped)), reward_fns=[nan_at_step_3])
    message = str(caught.value)
    assert message.startswith("ppo step 3: non-finite scores: reward 'nan_at_step_3' returned nan for response 1")
    assert f"{prompts_file}:" in message and str(stopped / "checkpoints" / "step-2") in message
    assert "\n" not in message and "on_nonfinite: skip_step" in message
    assert not (stopped / "stage.json").exists()
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["step-2"]
    assert [r["step"] for r in log_records(stopped)] == [1, 2]

    # the reference: step 3 never taken (see the docstring), then step 4 with a clean function
    root = stopped / "checkpoints"
    step3 = checkpointing.start(root / "step-3")  # written as any checkpoint is, so its manifest matches
    shutil.copytree(root / "step-2", step3, dirs_exist_ok=True)
    (step3 / checkpointing.MANIFEST_FILE).unlink()
    state = json.loads((step3 / "state.json").read_text())
    (step3 / "state.json").write_text(json.dumps({**state, "step": 3}))
    torch.save(captured["rng"], step3 / "rng-0.pt")
    checkpointing.commit(step3, root / "step-3")
    reference = train_ppo(load_config(PPOConfig, ppo_raw(tiny_model_dir, prompts_file, stopped)), reward_fns=[t_share])
    assert reference.metrics["resumed_from_step"] == 3

    # skip_step: one run through the NaN
    skipped = tmp_path / "skipped"
    nan_at_step_3.calls = 0
    result = train_ppo(load_config(PPOConfig, ppo_raw(tiny_model_dir, prompts_file, skipped, on_nonfinite="skip_step")),
                       reward_fns=[nan_at_step_3])
    records = log_records(skipped)
    assert [r["skipped_updates"] for r in records] == [0, 0, 4, 0] and result.metrics["skipped_updates"] == 4
    assert records[2]["nonfinite"].startswith("scores: reward 'nan_at_step_3' returned nan for response 1")
    assert "policy_loss" not in records[2] and math.isfinite(result.metrics["score"])
    want, got = adapter(stopped), adapter(skipped)
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert torch.isfinite(got[name]).all()
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0)
    step4 = log_records(stopped)[-1]
    for key in ("score", "score_processed", "kl", "kl_coef", "policy_loss", "value_loss"):
        assert records[3][key] == pytest.approx(step4[key], abs=1e-6), key


def test_nan_gradient_names_the_param_group(tmp_path, tiny_model_dir, prompts_file, one_thread, monkeypatch):
    """A NaN enters the value head's gradient in the 2nd update of step 2 (a tensor hook on the real
    parameter; the losses stay finite). `stop` names the value group and its parameter; `skip_step`
    drops that one update and the run ends with finite weights."""
    from rlhf_stack.ppo import setup

    real_build_run = setup.build_run

    def build_run_with_fault(cfg, reward_fns):
        run = real_build_run(cfg, reward_fns)
        weight = run.actor_critic.value_head.summary.weight
        calls = {"n": 0}

        def poison(grad):
            calls["n"] += 1
            return grad * math.nan if calls["n"] == 6 else grad  # step 2 (4 updates a step), update 2

        weight.register_hook(poison)
        return run

    monkeypatch.setattr(setup, "build_run", build_run_with_fault)
    raw = ppo_raw(tiny_model_dir, prompts_file, tmp_path / "stop", steps=3, save_every_steps=None)
    with pytest.raises(NonFiniteError, match=r"^ppo step 2: non-finite grad of param group 'value' \(first: "
                                              r"value_head\.summary\.weight\); stopped before that update\. ") as caught:
        train_ppo(load_config(PPOConfig, raw), reward_fns=[t_share])
    assert "no checkpoint was written before: a re-run starts from the beginning" in str(caught.value)
    assert not (tmp_path / "stop" / "stage.json").exists()

    out = tmp_path / "skip"
    result = train_ppo(load_config(PPOConfig, {**raw, "output_dir": str(out), "on_nonfinite": "skip_step"}),
                       reward_fns=[t_share])
    records = log_records(out)
    assert [r["skipped_updates"] for r in records] == [0, 1, 0] and result.metrics["skipped_updates"] == 1
    assert records[1]["nonfinite"].startswith("grad of param group 'value'")
    assert all(math.isfinite(r["policy_loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert all(torch.isfinite(t).all() for t in adapter(out).values())


def test_reward_function_that_raises_stops_cleanly_and_a_fixed_rerun_resumes(tmp_path, tiny_model_dir, prompts_file,
                                                                              one_thread):
    """A reward function raises from step 3 on: RewardFunctionError naming the function, the prompt,
    the response and the last good checkpoint; the run leaves only the step-2 checkpoint (no
    stage.json, no half-written directory). Re-run with the fixed function: it resumes from step 2
    and ends with the weights of a run that never failed."""

    def flaky(prompts, responses):
        flaky.calls += 1
        if flaky.calls >= 3:
            raise KeyError("no score for this one")
        return t_share(prompts, responses)

    flaky.calls = 0
    out = tmp_path / "flaky"
    raw = ppo_raw(tiny_model_dir, prompts_file, out)
    with pytest.raises(RewardFunctionError) as caught:
        train_ppo(load_config(PPOConfig, raw), reward_fns=[flaky])
    message = str(caught.value)
    assert message.startswith("ppo step 3: reward 'flaky' raised KeyError: 'no score for this one' at ")
    assert __file__ in message  # the raising line of the function
    assert "on response 0 of the batch: '" in message and f"{prompts_file}:" in message
    assert f"last good checkpoint: {out / 'checkpoints' / 'step-2'}" in message and "\n" not in message
    assert caught.value.source == "flaky" and caught.value.index == 0
    assert not (out / "stage.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]

    resumed = train_ppo(load_config(PPOConfig, raw), reward_fns=[t_share])
    clean = train_ppo(load_config(PPOConfig, {**raw, "output_dir": str(tmp_path / "clean")}), reward_fns=[t_share])
    assert resumed.metrics["resumed_from_step"] == 2 and (out / "stage.json").exists()
    assert [r["step"] for r in log_records(out)] == [1, 2, 3, 4]
    want = adapter(tmp_path / "clean")
    for name, tensor in adapter(out).items():
        torch.testing.assert_close(tensor, want[name], atol=1e-6, rtol=0)
    assert resumed.metrics["score"] == pytest.approx(clean.metrics["score"], abs=1e-6)


def test_cli_prints_one_line_for_a_raising_reward_function(tmp_path, tiny_model_dir, prompts_file, one_thread,
                                                           monkeypatch, capsys):
    """`rlhf-stack ppo` with a `kind: python` reward source that raises: exit code 2 and one line on
    stderr naming the function and the response, no traceback."""
    import yaml

    from rlhf_stack import cli

    (tmp_path / "my_rewards.py").write_text("def broken(prompts, responses):\n"
                                            "    return [1 / 0 for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = ppo_raw(tiny_model_dir, prompts_file, tmp_path / "out", steps=1, save_every_steps=None,
                  rewards=[{"kind": "python", "path": "my_rewards:broken"}])
    config = tmp_path / "ppo.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(sys, "argv", ["rlhf-stack", "ppo", "--config", str(config)])
    with pytest.raises(SystemExit) as caught:
        cli.main()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (stderr also has progress bars)
    assert caught.value.code == 2 and len(errors) == 1 and "Traceback" not in err
    assert err.rstrip().endswith(errors[0])
    assert errors[0].startswith("error: ppo step 1: reward 'broken' raised ZeroDivisionError: division by zero at ")
    assert "my_rewards.py:2 on response 0 of the batch" in errors[0]
    assert errors[0].endswith("no checkpoint was written before: a re-run starts from the beginning")
