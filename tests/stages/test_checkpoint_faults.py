"""Checkpoints survive a full disk and a damaged file, in every training stage (issue 15).

Each stage runs three ways on the tiny model: uninterrupted (the reference), with the disk filling
up right before its second checkpoint (`tests/faults.DiskFull`: os.write fails with ENOSPC, the
writers that bypass Python's io routed through it), and again after space is freed. The failed
run must stop with one CheckpointWriteError naming the checkpoint, the bytes it needs and the
bytes free; leave the first checkpoint byte for byte as it was and no partial directory; and the
re-run must resume from the first checkpoint and end exactly where the reference does (weights
to 1e-6, the tolerance of tests/e2e/test_ppo_resume.py; every logged loss). SFT and PPO also
damage the newest checkpoint of a finished run (a truncated file; one flipped byte): the re-run
says which checkpoint it skipped and why, resumes from the previous one and again ends equal.
"""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from rlhf_stack import checkpointing
from rlhf_stack.config import load_config
from rlhf_stack.errors import CheckpointWriteError
from tests.conftest import write_jsonl
from tests.faults import DiskFull, flip_byte, sha256_tree, truncate

pytestmark = pytest.mark.slow
ROOM_BYTES = 3000  # what the disk still takes once full: the next checkpoint starts, then fails


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (conftest.one_thread)."""


class FillDiskAfterStep(TrainerCallback):
    """Fill the disk at the end of `step` (before that step's checkpoint, if any), noting the
    content of the checkpoints already there."""

    def __init__(self, disk: DiskFull, step: int, output_dir: Path) -> None:
        self.disk, self.step, self.root = disk, step, output_dir / "checkpoints"
        self.before: dict[str, dict[str, str]] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.before = {p.name: sha256_tree(p) for p in self.root.glob("checkpoint-*")}
            self.disk.fill(ROOM_BYTES)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (output_dir / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(output_dir / name))


def assert_same_weights(got: Path, want: Path) -> None:
    got_w, want_w = final_weights(got), final_weights(want)
    assert got_w.keys() == want_w.keys()
    for name, tensor in want_w.items():
        torch.testing.assert_close(got_w[name], tensor, atol=1e-6, rtol=0, msg=name)


def train_log(output_dir: Path) -> list[dict]:
    """The Trainer's logged losses and eval metrics per step (timings and TRL's token counter, which
    counts the tokens of this process only, left out)."""
    rows = [json.loads(line) for line in (output_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k in ("step", "loss", "grad_norm", "learning_rate")
             or (k.startswith("eval_") and not k.endswith(("_runtime", "_per_second", "num_tokens")))}
            for r in rows if "train_runtime" not in r]


def assert_same_log(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            assert g[key] == pytest.approx(w[key], abs=1e-6), (w["step"], key)


def fail_then_resume(train, cfg_for, tmp_path, monkeypatch, model_file: str):
    """The disk fills after step 3 (checkpoint-2 written, checkpoint-4 next); the run fails; the
    re-run with space freed resumes from checkpoint-2. Returns (failed output_dir, message, resumed result)."""
    disk = DiskFull(monkeypatch)
    out = tmp_path / "full"
    fill = FillDiskAfterStep(disk, 3, out)
    with pytest.raises(CheckpointWriteError) as failed:
        train(cfg_for(out), callbacks=[fill])
    message = str(failed.value)
    final = out / "checkpoints" / "checkpoint-4"
    assert message.startswith(f"could not write checkpoint {final}: No space left on device. It needs about ")
    assert "0 bytes are free there" in message and f"{out / 'checkpoints' / 'checkpoint-2'} is intact" in message
    assert disk.refused > 0
    # the previous checkpoint is exactly as it was, nothing partial is left, the stage is unfinished
    assert fill.before.keys() == {"checkpoint-2"}
    assert sha256_tree(out / "checkpoints" / "checkpoint-2") == fill.before["checkpoint-2"]
    assert checkpointing.verify(out / "checkpoints" / "checkpoint-2") is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2"]
    assert not (out / "stage.json").exists() and not (out / model_file).exists()

    disk.free()
    resumed = train(cfg_for(out))
    assert resumed.metrics["resumed_from"] == str(out / "checkpoints" / "checkpoint-2")
    return out, message, resumed


# ---- SFT: disk full, then a truncated checkpoint ---------------------------------------------------


def sft_cfg(tiny_model_dir, data, out, **extra):
    from rlhf_stack.sft import SFTConfig

    return load_config(SFTConfig, {
        "model": {"name_or_path": str(tiny_model_dir), "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"path": str(data), "eval_fraction": 0.1}, "output_dir": str(out), "max_length": 48,
        "eval_before_training": False,
        "train": {"max_steps": 4, "batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1, "eval_every_steps": 2,
                  "warmup_ratio": 0.0, "early_stopping_patience": None},
        **extra})


def test_sft_survives_a_full_disk_and_a_truncated_checkpoint(tmp_path, tiny_model_dir, instructions_file,
                                                             monkeypatch, capsys):
    from rlhf_stack.sft import train_sft

    def cfg_for(out, **extra):
        return sft_cfg(tiny_model_dir, instructions_file, out, **extra)

    clean = train_sft(cfg_for(tmp_path / "clean", keep_checkpoints=True))
    out, _, resumed = fail_then_resume(train_sft, cfg_for, tmp_path, monkeypatch, "adapter_model.safetensors")
    assert_same_weights(out, clean.checkpoint)
    assert_same_log(train_log(out), train_log(clean.checkpoint))
    assert resumed.metrics["eval_loss"] == pytest.approx(clean.metrics["eval_loss"], abs=1e-6)
    assert checkpointing.verify(out) is None  # the final output carries its manifest too

    # A finished run whose stage.json is gone (killed before the end) and whose newest checkpoint
    # lost half of its weights file: the re-run skips it, says why, and resumes from checkpoint-2.
    damaged = tmp_path / "clean"
    # the best model was picked and reloaded from its committed checkpoint, never from the staging one
    best = json.loads((damaged / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["best_model_checkpoint"]
    assert Path(best).parent == damaged / "checkpoints" and Path(best).is_dir()
    (damaged / "stage.json").unlink()
    truncate(damaged / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    capsys.readouterr()
    again = train_sft(cfg_for(damaged))
    printed = capsys.readouterr().out
    skipped = damaged / "checkpoints" / "checkpoint-4"
    assert f"[sft] skipping checkpoint {skipped}: adapter_model.safetensors is " in printed
    assert "were written (truncated or overwritten)" in printed
    assert f"[sft] resuming from {damaged / 'checkpoints' / 'checkpoint-2'}" in printed
    assert again.metrics["resumed_from"].endswith("checkpoint-2")
    assert_same_weights(damaged, out)
    assert_same_log(train_log(damaged), train_log(out))


# ---- reward model and DPO: disk full ------------------------------------------------------------------


@pytest.fixture
def rankings(tmp_path):
    completions = ["Apple.", "Banana is a fruit.", "no no no no", "I do not know."]
    rows = [{"prompt": f"Question {i}: name a fruit.", "completions": completions, "ranks": [1, 2, 4, 3]}
            for i in range(16)]
    return write_jsonl(tmp_path / "rankings.jsonl", rows)


def ranking_train(**extra) -> dict:
    return {"max_steps": 4, "batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1, "eval_every_steps": 2,
            "warmup_ratio": 0.0, "early_stopping_patience": None, **extra}


def test_reward_model_survives_a_full_disk(tmp_path, tiny_model_dir, rankings, monkeypatch):
    from rlhf_stack.reward.stage import RewardConfig, train_reward

    def cfg_for(out, **extra):
        return load_config(RewardConfig, {
            "model": {"name_or_path": str(tiny_model_dir), "tuning": "full"},
            "data": {"path": str(rankings), "eval_fraction": 0.0}, "train": ranking_train(),
            "output_dir": str(out), "max_length": 48, **extra})

    clean = train_reward(cfg_for(tmp_path / "clean"))
    out, message, resumed = fail_then_resume(train_reward, cfg_for, tmp_path, monkeypatch, "model.safetensors")
    assert_same_weights(out, clean.checkpoint)
    assert_same_log(train_log(out), train_log(clean.checkpoint))
    # the estimate: full weights + AdamW's two moments, about 3x the weights file
    weights = (clean.checkpoint / "model.safetensors").stat().st_size
    needed = float(message.split("It needs about ")[1].split(" MiB")[0]) * 2**20
    assert 2.5 * weights < needed < 4 * weights


def test_dpo_survives_a_full_disk(tmp_path, tiny_model_dir, rankings, monkeypatch):
    from rlhf_stack.dpo.stage import DPOConfig, train_dpo

    def cfg_for(out, **extra):
        return load_config(DPOConfig, {
            "policy": {"name_or_path": str(tiny_model_dir), "tuning": "lora",
                       "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "data": {"path": str(rankings), "eval_fraction": 0.0}, "train": ranking_train(),
            "output_dir": str(out), "max_length": 48, "beta": 0.5, **extra})

    clean = train_dpo(cfg_for(tmp_path / "clean"))
    out, _, _ = fail_then_resume(train_dpo, cfg_for, tmp_path, monkeypatch, "adapter_model.safetensors")
    assert_same_weights(out, clean.checkpoint)
    assert_same_log(train_log(out), train_log(clean.checkpoint))


# ---- PPO: disk full through the CLI, then a flipped byte -------------------------------------------------

REWARD_MODULE = textwrap.dedent('''
    """A reward for the PPO fault test: share of words starting with t; `at_call` hooks in."""
    calls = 0
    at_call = {}

    def t_share(prompts, responses):
        global calls
        calls += 1
        if calls in at_call:
            at_call[calls]()
        return [sum(w.startswith("t") for w in r.split()) / max(len(r.split()), 1) for r in responses]
''')

PPO_TIMING = ("time_", "tokens_per_s", "peak_memory_mb", "elapsed_s")


def ppo_log(output_dir: Path) -> list[dict]:
    lines = (output_dir / "logs" / "ppo_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(PPO_TIMING)} for line in lines]


def test_ppo_survives_a_full_disk_and_a_flipped_byte(tmp_path, tiny_model_dir, prompts_file, monkeypatch, capsys):
    import yaml

    from rlhf_stack import cli
    from rlhf_stack.ppo import PPOConfig, train_ppo

    (tmp_path / "fault_reward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import fault_reward

    def raw(out, **extra) -> dict:
        return {"policy": {"name_or_path": str(tiny_model_dir), "tuning": "lora",
                           "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                "prompts": {"path": str(prompts_file), "eval_fraction": 0.0},
                "rewards": [{"kind": "python", "path": "fault_reward:t_share"}],
                "output_dir": str(out), "steps": 4, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 6,
                "learning_rate": 5e-3, "save_every_steps": 1, "progress_bar": False, "adaptive_kl": True,
                "kl_target": 0.5, "score_norm": "running", "seed": 3, "eval_max_prompts": 0, **extra}

    clean = train_ppo(load_config(PPOConfig, raw(tmp_path / "clean", keep_checkpoints=True)))

    # 1. through the CLI: the disk fills while step 3 scores its samples; step-3 cannot be written
    out = tmp_path / "full"
    config = tmp_path / "ppo.yaml"
    config.write_text(yaml.safe_dump(raw(out)))
    disk = DiskFull(monkeypatch)
    before = {}

    def fill():
        before.update({p.name: sha256_tree(p) for p in (out / "checkpoints").glob("step-*")})
        disk.fill(ROOM_BYTES)

    fault_reward.calls, fault_reward.at_call = 0, {3: fill}
    monkeypatch.setattr(sys, "argv", ["rlhf-stack", "ppo", "--config", str(config)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: could not write checkpoint {out / 'checkpoints' / 'step-3'}: No space left")
    assert f"{out / 'checkpoints' / 'step-2'} is intact" in lines[0]
    assert before.keys() == {"step-1", "step-2"}
    for name, content in before.items():
        assert sha256_tree(out / "checkpoints" / name) == content
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert not (out / "stage.json").exists()

    # 2. space freed, the same command again: it resumes from step 2 and ends where the clean run does
    disk.free()
    fault_reward.at_call = {}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 0
    assert f"[ppo] resuming from {out / 'checkpoints' / 'step-2'} (step 2)" in capsys.readouterr().out
    assert_same_weights(out, clean.checkpoint)
    resumed_log, clean_log = ppo_log(out), ppo_log(clean.checkpoint)
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4]
    assert_same_log(resumed_log, clean_log)

    # 3. the clean run, unfinished again, with one byte of its newest checkpoint (step-3) flipped
    damaged = clean.checkpoint
    (damaged / "stage.json").unlink()
    flip_byte(damaged / "checkpoints" / "step-3" / "trainable.safetensors")
    capsys.readouterr()
    again = train_ppo(load_config(PPOConfig, raw(damaged, keep_checkpoints=True)))
    printed = capsys.readouterr().out
    assert (f"[ppo] skipping checkpoint {damaged / 'checkpoints' / 'step-3'}: trainable.safetensors does not match "
            "its recorded sha256") in printed
    assert f"[ppo] resuming from {damaged / 'checkpoints' / 'step-2'} (step 2)" in printed
    assert (damaged / "checkpoints" / "corrupt" / "step-3" / "trainable.safetensors").is_file()  # kept to inspect
    assert checkpointing.verify(damaged / "checkpoints" / "step-3") is None  # written anew
    assert again.metrics["resumed_from_step"] == 2
    assert_same_weights(damaged, out)
    assert_same_log(ppo_log(damaged), clean_log)


# ---- the runner: the final output is whole or absent, and verified before it is reused -------------------


def test_runner_final_output_is_whole_or_absent_and_verified(tmp_path, tiny_model_dir, instructions_file,
                                                             monkeypatch, capsys):
    from rlhf_stack.pipeline import runner

    sft = {"model": {"name_or_path": str(tiny_model_dir), "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
           "data": {"path": str(instructions_file), "eval_fraction": 0.0}, "max_length": 48,
           "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 5e-3, "eval_every_steps": 2, "warmup_ratio": 0.0}}
    recipe = {"sft": sft, "report": False}
    disk = DiskFull(monkeypatch)
    reference = runner.run_recipe(recipe, run_dir=tmp_path / "reference").run_dir / "sft"
    total = disk.written  # every byte of the run through os.write: checkpoint-2, then the final model

    # 1. the disk is full 200 bytes before the end: the final output's last write (its manifest) fails
    run_dir, disk.written = tmp_path / "run", 0
    disk.fill(total - 200)
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint .*/sft/checkpoints/final: No space"):
        runner.run_recipe(recipe, run_dir=run_dir)
    out = run_dir / "sft"
    entry = json.loads((run_dir / "manifest.json").read_text())["stages"]["sft"]
    assert entry["status"] == "failed" and entry["error"].startswith("CheckpointWriteError: could not write")
    assert not (out / "stage.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2"]  # no partial
    assert checkpointing.verify(out / "checkpoints" / "checkpoint-2") is None

    # 2. space freed: the re-run resumes the stage, ends equal to the reference; a 3rd run reuses it
    disk.free()
    second = runner.run_recipe(recipe, run_dir=run_dir)
    assert second.ran == ["sft"] and second.manifest["stages"]["sft"]["status"] == "done"
    assert second.manifest["stages"]["sft"]["metrics"]["resumed_from"].endswith("checkpoint-2")
    assert_same_weights(out, reference)
    assert checkpointing.verify(out) is None
    assert runner.run_recipe(recipe, run_dir=run_dir).reused == ["sft"]

    # 3. a byte of the finished output rots: the runner does not hand it on, it runs the stage again
    flip_byte(out / "adapter_model.safetensors")
    capsys.readouterr()
    third = runner.run_recipe(recipe, run_dir=run_dir)
    assert (f"[runner] sft: the finished checkpoint in {out} is damaged (adapter_model.safetensors does not match "
            "its recorded sha256") in capsys.readouterr().out
    assert third.ran == ["sft"] and third.manifest["stages"]["sft"]["status"] == "done"
    assert checkpointing.verify(out) is None
    assert_same_weights(out, reference)


# ---- a real full disk: a small tmpfs (root only) ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted under tmp_path: its ENOSPC comes from the kernel, to every writer."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (the os.write-level tests above run everywhere)")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mount(2) is not permitted in this container (the os.write-level tests above run everywhere)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_ppo_on_a_really_full_disk(small_disk, tmp_path, tiny_model_dir, prompts_file, capsys):
    """The kernel's ENOSPC reaches torch.save as a RuntimeError ("unexpected pos ..."), not an
    OSError: the free space tells the checkpoint writer what happened."""
    import os

    from rlhf_stack.ppo import PPOConfig, train_ppo

    filler = small_disk / "filler"
    calls = []

    def t_share(prompts, responses):
        calls.append(1)
        if len(calls) == 3:  # someone else fills the disk while step 3 runs, leaving 32 KiB
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            os.posix_fallocate(fd, 0, os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize - 32768)
            os.close(fd)
        return [sum(w.startswith("t") for w in r.split()) / max(len(r.split()), 1) for r in responses]

    def cfg(out):
        return load_config(PPOConfig, {
            "policy": {"name_or_path": str(tiny_model_dir), "tuning": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "prompts": {"path": str(prompts_file), "eval_fraction": 0.0}, "output_dir": str(out), "steps": 4,
            "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 6, "learning_rate": 5e-3, "save_every_steps": 1,
            "progress_bar": False, "seed": 3, "eval_max_prompts": 0})

    out = small_disk / "ppo"
    with pytest.raises(CheckpointWriteError) as failed:
        train_ppo(cfg(out), reward_fns=[t_share])
    message = str(failed.value)
    assert message.startswith(f"could not write checkpoint {out / 'checkpoints' / 'step-3'}: No space left on device")
    assert f"{out / 'checkpoints' / 'step-2'} is intact" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert checkpointing.verify(out / "checkpoints" / "step-2") is None

    filler.unlink()  # space freed
    resumed = train_ppo(cfg(out), reward_fns=[t_share])
    clean = train_ppo(cfg(tmp_path / "clean"), reward_fns=[t_share])
    assert resumed.metrics["resumed_from_step"] == 2
    assert_same_weights(out, clean.checkpoint)
    assert_same_log(ppo_log(out), ppo_log(clean.checkpoint))
