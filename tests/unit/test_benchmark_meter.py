"""benchmarks/step_meter.py and trl_ppo.response_tokens: what the PPO side-by-side
(benchmarks/ppo_vs_trl.py) counts on both sides, checked on real optimizers and real memory."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import step_meter  # noqa: E402
import trl_ppo  # noqa: E402


def test_response_tokens_count_each_row_to_its_first_eos_or_the_full_width():
    eos = 2
    responses = torch.tensor([[5, 2, 0, 0],    # EOS at index 1 -> 2 tokens (EOS included)
                              [5, 5, 5, 5],    # no EOS -> all 4
                              [2, 7, 2, 0]])   # first EOS at index 0 -> 1 token
    assert trl_ppo.response_tokens(responses, eos) == 2 + 4 + 1


def test_step_meter_counts_real_updates_and_resets_the_peak_every_step():
    from accelerate import Accelerator

    meter = step_meter.StepMeter(cuda=False)
    try:
        model = torch.nn.Linear(4, 4)
        acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
        model, optimizer = acc.prepare(model, torch.optim.AdamW(model.parameters()))
        for _ in range(4):  # 4 micro-batches, accumulation 2 -> 2 real updates
            with acc.accumulate(model):
                acc.backward(model(torch.ones(2, 4)).sum())
                optimizer.step()
                optimizer.zero_grad()
        meter.step_end(response_tokens=10)
        block = bytearray(300 * 2**20)  # 300 MiB, touched, then freed within step 2
        block[::4096] = b"\1" * len(block[::4096])
        del block
        meter.step_end(response_tokens=20)
        meter.step_end(response_tokens=30)
    finally:
        meter.close()
    s1, s2, s3 = meter.steps
    assert (s1["updates"], s2["updates"], s3["updates"]) == (2, 0, 0) and meter.updates == 2
    assert s1["time_s"] is None and s2["time_s"] > 0 and s2["tokens_per_s"] == 20 / s2["time_s"]
    assert meter.per_step_reset, "/proc/self/clear_refs not writable: peaks would not be per step"
    assert s2["peak_memory_mb"] - s3["peak_memory_mb"] > 250  # step 3's window no longer holds the block
    assert meter.lifetime_peak_mb() >= s2["peak_memory_mb"]
    figures = step_meter.medians(meter.steps, warmup=1)
    assert figures["response_tokens"] == {"median": 25, "min": 20, "max": 30, "n": 2}
    assert "tokens_per_s" in figures and figures["tokens_per_s"]["n"] == 2
