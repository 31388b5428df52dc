"""Decoding-sized products on CPU: torch's default GEMM against oneDNN-packed weights (`ppo/packed.py`).

    .venv/bin/python benchmarks/packed_linear.py [--threads 2] [--repeats 8]

The weight shapes of SmolLM2-135M (30 blocks x q, k, v, o, gate, up, down; the 49,152 x 576 LM
head), random float32, at 1-256 rows. `F.linear` against `mkldnn._linear_pointwise` on weights
reordered once (`mkldnn._reorder_linear_weight`), the two timed in turn; medians of `--repeats`
passes over all 210 block weights (which do not fit in cache, as in decoding) and over the LM
head. Prints a table and the largest difference between the two outputs; writes
benchmarks/packed_linear.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

BLOCK = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
LM_HEAD = (49152, 576)


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def one_size(rows: int, blocks: list, head, repeats: int) -> dict:
    """Both products at `rows` rows: times (ms) of each pass and the largest output difference."""
    linear = torch.ops.mkldnn._linear_pointwise
    packed_blocks = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in blocks]
    packed_head = torch.ops.mkldnn._reorder_linear_weight(head, rows)
    x = {576: torch.randn(rows, 576), 1536: torch.randn(rows, 1536)}
    runs = {
        "blocks_linear": timed(lambda: [F.linear(x[w.shape[1]], w) for w in blocks], repeats),
        "blocks_packed": timed(lambda: [linear(x[w.shape[1]], p, None, "none", [], "")
                                        for w, p in zip(blocks, packed_blocks, strict=True)], repeats),
        "head_linear": timed(lambda: F.linear(x[576], head), repeats),
        "head_packed": timed(lambda: linear(x[576], packed_head, None, "none", [], ""), repeats),
    }
    diff = max((F.linear(x[w.shape[1]], w) - linear(x[w.shape[1]], p, None, "none", [], "")).abs().max().item()
               for w, p in zip([*blocks[:7], head], [*packed_blocks[:7], packed_head], strict=True))
    return {"rows": rows, "medians_ms": {key: statistics.median(t) for key, t in runs.items()}, "runs_ms": runs,
            "max_abs_diff": diff}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 64, 256])
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("packed_linear.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    blocks = [torch.randn(*shape) * 0.05 for _ in range(30) for shape in BLOCK]
    head = torch.randn(*LM_HEAD) * 0.05
    results = []
    print(f"{'rows':>5} {'blocks F.linear':>16} {'blocks packed':>14} {'head F.linear':>14} {'head packed':>12}"
          f" {'max |diff|':>11}  (ms, medians of {args.repeats})")
    for rows in args.rows:
        result = one_size(rows, blocks, head, args.repeats)
        results.append(result)
        m = result["medians_ms"]
        print(f"{rows:>5} {m['blocks_linear']:>16.1f} {m['blocks_packed']:>14.1f} {m['head_linear']:>14.2f} "
              f"{m['head_packed']:>12.2f} {result['max_abs_diff']:>11.1e}")
    args.json.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                                     "results": results}, indent=1))


if __name__ == "__main__":
    main()
