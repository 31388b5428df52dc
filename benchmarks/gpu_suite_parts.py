"""The parts of gpu_suite.py: device ceilings, the config-built models and their tokenizer, the
generated data, per-step clocks, and the summary table. Nothing here imports torch at import time
(gpu_suite.py hides CUDA for --smoke before torch loads)."""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import trl_ppo

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny-llama"

# Name as torch.cuda.get_device_name() reports it -> (dense bf16 FLOP/s, HBM bytes/s), from NVIDIA's
# datasheets (the bf16 figures there are quoted with sparsity, twice these). Other devices
# (H100 PCIe/NVL, H200 NVL, ...) get ceilings measured on the spot instead.
DATASHEET = {
    "NVIDIA H100 80GB HBM3": (989e12, 3.35e12),  # H100 SXM
    "NVIDIA H200": (989e12, 4.8e12),  # H200 SXM
}
# The rest of Qwen2.5's config.json (both sizes).
QWEN_COMMON = dict(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                   use_sliding_window=False, attention_dropout=0.0)


# ---- the device -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    cuda: bool
    dtype: str  # the weights' dtype: resolve_dtype("auto"), bfloat16 on CUDA, float32 on CPU
    peak_flops: float  # the MFU denominator
    hbm_bytes_per_s: float  # the decode bound's bandwidth
    source: str  # "datasheet" or "measured"
    measured: dict  # matmul FLOP/s and copy bytes/s measured here, whatever the source

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def detect_device() -> Device:
    import torch

    from rlhf_stack.modeling import resolve_device, resolve_dtype

    device = resolve_device()
    dtype = resolve_dtype("auto", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    measured = measure_ceilings(device, dtype)
    if name in DATASHEET:
        flops, bandwidth = DATASHEET[name]
        return Device(name, device.type == "cuda", str(dtype).removeprefix("torch."), flops, bandwidth, "datasheet",
                      measured)
    return Device(name, device.type == "cuda", str(dtype).removeprefix("torch."), measured["matmul_flops"],
                  measured["copy_bytes_per_s"], "measured", measured)


def measure_ceilings(device, dtype) -> dict:
    """A square matmul in the weights' dtype (FLOP/s) and a device copy (bytes read + written / s)."""
    import torch

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n, size = (8192, 2**30) if cuda else (512, 2**26)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    matmul = 2 * n**3 * 10 / (time.perf_counter() - start)
    x = torch.ones(size, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    sync()
    start = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    sync()
    copy = 2 * size * 5 / (time.perf_counter() - start)
    del a, b, x, y
    if cuda:
        torch.cuda.empty_cache()
    return {"matmul_flops": matmul, "matmul_n": n, "copy_bytes_per_s": copy, "copy_bytes": size}


# ---- models, tokenizer, data ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Context:
    """What the stages of one shape share."""

    work: Path  # base/, data/, then each stage's output_dir
    device: Device
    params: dict  # "policy" and "rm": matmul weights (body, head, matmul), total, decode_bytes
    data: dict  # stage -> data file
    lengths: dict  # tokens per SFT example, per ranking (forwarded), per PPO prompt
    prompts: list  # the PPO prompts, for the TRL side


def prepare(shape: dict, sizes: dict, device: Device, work: Path) -> Context:
    tokenizer = padded_tokenizer(shape["vocab_size"])
    params = build_base_model(shape, tokenizer, device, work / "base")
    data, lengths, prompts = write_data(tokenizer, sizes, work / "data")
    return Context(work, device, params, data, lengths, prompts)


def padded_tokenizer(vocab_size: int):
    """The test tokenizer (586 tokens) padded with plain added tokens `<|fill_N|>` to `vocab_size`.

    Why not resize the model down to 586: the published vocabulary (151,936 rows of embedding and
    LM head, 27% of the 0.5B's matmul weights, and a 151,936-wide softmax in every pass) is part of
    what is measured. Why not constrain sampling to ids < 586: each side builds its own
    GenerationConfig, so it could not be done the same way on both. Padded, every id the random
    policy samples decodes to text that encodes back to the same id: our reward model, which scores
    decoded text, gets the same response tokens as TRL's, which scores ids. Sampling is near uniform over
    151,936 ids, so EOS almost never comes and responses run to max_new_tokens on both sides.
    Cost: transformers takes seconds to load a tokenizer with 151k added tokens, outside any
    timed step.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    tokenizer.add_tokens([f"<|fill_{i}|>" for i in range(len(tokenizer), vocab_size)])
    assert len(tokenizer) == vocab_size
    return tokenizer


def build_base_model(shape: dict, tokenizer, device: Device, out: Path) -> dict:
    """A Qwen2 causal LM of `shape` (random init, seed 0) saved to `out`; its weight counts and
    those of the reward model (the same backbone with a one-output score head)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = Qwen2Config(**shape, **QWEN_COMMON, **ids)
    torch.manual_seed(0)
    with torch.device("cuda" if device.cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, device.dtype))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    policy = weight_counts(model, model.lm_head)
    del model
    with torch.device("meta"):
        rm = AutoModelForSequenceClassification.from_config(Qwen2Config(**shape, **QWEN_COMMON, **ids, num_labels=1))
    return {"policy": policy, "rm": weight_counts(rm, rm.score)}


def weight_counts(model, head) -> dict:
    """matmul: the weights every token multiplies (each Linear layer; a tied LM head counted once, as
    the head); body = matmul - head. decode_bytes: the bytes one decode step reads, every weight
    once (the input embedding only when it is the LM head too: untied, a lookup reads b rows)."""
    import torch

    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    unique = {id(p): p for p in model.parameters()}
    embedding = model.get_input_embeddings().weight
    tied = id(embedding) in linear
    decode_bytes = sum(p.numel() * p.element_size() for p in unique.values())
    if not tied:
        decode_bytes -= embedding.numel() * embedding.element_size()
    matmul = sum(linear.values())
    return {"total": sum(p.numel() for p in unique.values()), "matmul": matmul, "head": head.weight.numel(),
            "body": matmul - head.weight.numel(), "decode_bytes": decode_bytes, "tied_embeddings": tied}


def write_data(tokenizer, sizes: dict, out: Path) -> tuple[dict, dict, list]:
    """SFT pairs, K-wise rankings and PPO prompts, every item of a stage the same number of tokens:
    texts are a first word W and then n words ' w', each one token (checked below with the
    stages' own encoders)."""
    import json

    from rlhf_stack.data import prompt_messages
    from rlhf_stack.ppo.rollout import encode_prompts
    from rlhf_stack.reward.batching import encode_rankings

    rng = random.Random(0)
    vocab = tokenizer.get_vocab()
    words = sorted(t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isalpha() and len(tokenizer(" " + t[1:])["input_ids"]) == 1)
    firsts = sorted(t for t in vocab if t.isalpha() and t[0].isupper() and len(tokenizer(t)["input_ids"]) == 1)

    def text(first: str, n: int) -> str:
        return first + "".join(" " + rng.choice(words) for _ in range(n))

    def chat_tokens(prompt: str, response: str) -> int:
        return len(tokenizer.apply_chat_template(prompt_messages(prompt, response), tokenize=True,
                                                 return_dict=True)["input_ids"])

    sft, rm, ppo = sizes["sft"], sizes["rm"], sizes["ppo"]
    prompt_words = sft["tokens"] // 4
    fill = sft["tokens"] - chat_tokens(text(firsts[0], prompt_words), firsts[1])  # words that reach the target
    sft_rows = [{"prompt": text(firsts[0], prompt_words), "response": text(firsts[1], fill)}
                for _ in range(sft["batch"] * sft["steps"])]
    rankings = [{"prompt": text(firsts[0], rm["prompt_words"]),
                 "completions": [text(firsts[k + 1], rm["completion_words"]) for k in range(rm["k"])],
                 "ranks": rng.sample(range(1, rm["k"] + 1), rm["k"]), "annotator": "suite"}
                for _ in range(rm["batch"] * rm["steps"])]
    prompts = [text(firsts[0], ppo["prompt_words"]) for _ in range(ppo["batch"] * ppo["steps"])]

    sft_lengths = {chat_tokens(r["prompt"], r["response"]) for r in sft_rows}
    encoded, _ = encode_rankings(rankings, tokenizer, max_length=10**6)
    rm_lengths = {item["prefix_length"] + sum(len(s) - item["prefix_length"] for s in item["input_ids"])
                  for item in encoded}
    ppo_lengths = {len(ids) for ids in encode_prompts([{"prompt": p} for p in prompts], tokenizer, 10**6, "suite")}
    if len(sft_lengths) != 1 or len(rm_lengths) != 1 or len(ppo_lengths) != 1:
        raise AssertionError(f"generated data is not uniform: {sft_lengths}, {rm_lengths}, {ppo_lengths}")
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for stage, rows in (("sft", sft_rows), ("rm", rankings), ("ppo", [{"prompt": p} for p in prompts])):
        files[stage] = out / f"{stage}.jsonl"
        files[stage].write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = {"sft_tokens": sft_lengths.pop(), "rm_tokens_per_ranking": rm_lengths.pop(),
               "ppo_prompt_tokens": ppo_lengths.pop()}
    return files, lengths, prompts


# ---- clocks -----------------------------------------------------------------------------------------------


def synchronize(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def step_clock(cuda: bool):
    """A TrainerCallback: `ends[0]` at train begin, `ends[k]` when optimizer step k ends (after a
    device sync), and TRL's running `num_tokens` by step (logged every step)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.num_tokens: dict[int, int] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            synchronize(cuda)
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(cuda)
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                self.num_tokens[state.global_step] = logs["num_tokens"]

    return StepClock()


@contextmanager
def timed_ppo_updates(times: list[float], cuda: bool):
    """Wall time of each step's PPO epochs, a device sync on both sides. The log's `time_train_s`
    is stamped while CUDA may still run the last micro-batch's backward (no sync there)."""
    from rlhf_stack.ppo import update

    original = update.ppo_epochs

    def timed(*args, **kwargs):
        synchronize(cuda)
        start = time.perf_counter()
        result = original(*args, **kwargs)
        synchronize(cuda)
        times.append(time.perf_counter() - start)
        return result

    update.ppo_epochs = timed
    try:
        yield times
    finally:
        update.ppo_epochs = original


@contextmanager
def stage_memory(cuda: bool):
    """{start_mb, peak_memory_mb, kind}: CUDA max allocated over the block (reset at its start), else
    the process's peak RSS so far."""
    memory: dict = {}
    if cuda:
        import torch

        torch.cuda.synchronize()
        memory["start_mb"] = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        memory["start_mb"] = trl_ppo.peak_memory(False)[0]
    yield memory
    memory["peak_memory_mb"], memory["kind"] = trl_ppo.peak_memory(cuda)


# ---- figures ---------------------------------------------------------------------------------------------------


def train_step(step: int, time_s: float, tokens: float, train_flops: float, device: Device,
               train_time_s: float | None = None) -> dict:
    """One step's numbers; MFU over `train_time_s` (the training phase) when given, else the step."""
    busy = time_s if train_time_s is None else train_time_s
    return {"step": step, "time_s": time_s, "tokens": tokens, "tokens_per_s": tokens / time_s,
            "train_flops": train_flops, "train_time_s": busy, "mfu": train_flops / busy / device.peak_flops}


FIGURES = ("tokens_per_s", "mfu", "decode_tokens_per_s", "decode_bound_tokens_per_s", "decode_of_bound")


def summary(run: str, steps: list[dict], sizes: dict, memory: dict, extra: dict) -> dict:
    """Median, min and max of each figure over the steps after the warm-up; every step kept."""
    measured = [s for s in steps if s["step"] > sizes["warmup"]]
    figures = {}
    for key in FIGURES:
        values = [s[key] for s in measured if key in s]
        if values:
            figures[key] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                            "n": len(values)}
    return {"run": run, "figures": figures, "peak_memory_mb": memory["peak_memory_mb"],
            "peak_memory_kind": memory["kind"], "memory_at_start_mb": memory["start_mb"],
            "warmup_steps": sizes["warmup"], "steps": steps, **extra}


def ratios(runs: list[dict], shapes: list[str], skipped: bool) -> dict:
    """ppo_speed_vs_trl (our response tokens/s over TRL's) and ppo_peak_memory_vs_trl per shape."""
    out: dict = {}
    for shape in shapes:
        if skipped:
            out[f"ppo_speed_vs_trl[{shape}]"] = "skipped (--skip-trl)"
            continue
        ours, trl = (next(r for r in runs if r["shape"] == shape and r["run"] == run) for run in ("ppo", "ppo-trl"))
        if "error" in trl:
            out[f"ppo_speed_vs_trl[{shape}]"] = "failed (the TRL run's error is in the JSON)"
            continue
        out[f"ppo_speed_vs_trl[{shape}]"] = (ours["figures"]["tokens_per_s"]["median"]
                                            / trl["figures"]["tokens_per_s"]["median"])
        out[f"ppo_peak_memory_vs_trl[{shape}]"] = ours["peak_memory_mb"] / trl["peak_memory_mb"]
    return out


def table(report: dict) -> str:
    device = report["suite"]["device"]
    memory = "CUDA max allocated" if device["cuda"] else "process peak RSS (CPU)"
    lines = [f"{'smoke (CPU, not a GPU figure)' if report['suite']['mode'] == 'smoke' else 'GPU suite'}: "
             f"{device['name']}, {device['dtype']} weights; peak {_si(device['peak_flops'])}FLOP/s and "
             f"{_si(device['hbm_bytes_per_s'])}B/s ({device['source']}); medians over measured steps",
             f"{'shape':<14} {'run':<8} {'tokens/s [min-max]':<30} {'train MFU':>9} {'decode tok/s':>13} "
             f"{'bound tok/s':>12} {'of bound':>8} {'peak GiB':>9}"]
    for run in report["runs"]:
        if "error" in run:
            lines.append(f"{run['shape']:<14} {run['run']:<8} failed (see the JSON)")
            continue
        fig = run["figures"]
        tps = fig["tokens_per_s"]
        cells = [f"{run['shape']:<14}", f"{run['run']:<8}",
                 f"{tps['median']:>10,.0f} [{tps['min']:,.0f}-{tps['max']:,.0f}]".ljust(30),
                 f"{fig['mfu']['median']:>9.2%}" if "mfu" in fig else f"{'-':>9}"]
        for key, width, spec in (("decode_tokens_per_s", 13, ",.0f"), ("decode_bound_tokens_per_s", 12, ",.0f"),
                                 ("decode_of_bound", 8, ".2%")):
            cells.append(f"{fig[key]['median']:>{width}{spec}}" if key in fig else f"{'-':>{width}}")
        cells.append(f"{run['peak_memory_mb'] / 1024:>9.2f}")
        lines.append(" ".join(cells))
    lines.append(f"(peak GiB: {memory}; ppo: tokens = response tokens per whole step, MFU = the PPO-epochs phase)")
    return "\n".join(lines)


def _si(value: float) -> str:
    return f"{value / 1e12:,.3g} T" if value >= 1e12 else f"{value / 1e9:,.3g} G"


def versions() -> dict:
    import platform
    from importlib.metadata import version

    return {"python": platform.python_version(),
            **{name: version(name) for name in ("torch", "transformers", "trl", "accelerate", "peft")}}
