"""Conversion speed and memory: `python benchmarks/convert_speed.py [--rows 100000]`.

Generates a rankings-style source file in a temp dir (UltraFeedback-shaped: 4 rated completions
per instruction, with the per-aspect annotations; and TRL preference pairs), converts it with
`data_tools.convert.convert`, and prints rows/s plus the peak-RSS growth of the conversion.
Memory: the resident-set peak during the conversion minus the RSS just before it (sampled by a
thread); the same conversion on a 5x smaller file shows whether memory grows with the input (it
should not, beyond the de-duplication set of 16-byte digests, ~100 bytes a row).

Target (issue 7): >= 50k rows/s on a 100k-row rankings file, in bounded memory. `rows_per_s` is
wall-clock; `rows_per_cpu_s` divides by this process's CPU time (the sampler thread included), the
figure to compare on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.convert import convert  # noqa: E402

WORDS = ("the model answer helps users with clear short steps about water light cooking travel code music "
         "history numbers plants weather maps stories colour sound energy").split()
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def ultrafeedback_record(rng: random.Random, i: int) -> dict:
    completions = []
    for m in range(4):
        rating = rng.randint(1, 5)
        completions.append({
            "model": f"model-{m}", "response": f"{sentence(rng, 30)} ({i}.{m})",
            "annotations": {a: {"Rating": str(rating), "Rationale": "ok"} for a in ASPECTS},
            "fine-grained_score": float(rating), "overall_score": float(rng.randint(1, 10)),
        })
    return {"source": "bench", "instruction": f"{sentence(rng, 12)} #{i}", "models": [f"model-{m}" for m in range(4)],
            "completions": completions}


def trl_record(rng: random.Random, i: int) -> dict:
    return {"prompt": f"{sentence(rng, 12)} #{i}", "chosen": sentence(rng, 30), "rejected": f"{sentence(rng, 30)} ({i})"}


def write_source(path: Path, make, rows: int) -> int:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps(make(rng, i)) + "\n")
    return path.stat().st_size


class RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 5 ms by a thread)."""

    def __init__(self):
        import psutil

        self.process, self.peak, self.stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.start_rss = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start_rss) / 2**20


def bench(name: str, source: str, make, rows: int, tmp: Path) -> dict:
    src = tmp / f"{name}-{rows}.jsonl"
    size = write_source(src, make, rows)
    gc.collect()
    with RssSampler() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = convert(source, src, "rankings", tmp / f"{name}-{rows}.out.jsonl")
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"source": name, "rows": rows, "MB": round(size / 1e6, 1), "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds), "rows_per_cpu_s": round(rows / cpu_seconds),
            "MB_per_s": round(size / 1e6 / seconds, 1),
            "written": result.rows_written, "peak_rss_growth_MiB": round(rss.growth_mib, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    try:
        import orjson  # noqa: F401

        parser_name = "orjson"
    except ImportError:
        parser_name = "json (stdlib)"
    print(f"JSON backend: {parser_name}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for rows in (args.rows // 5, args.rows):
            for name, source, make in (("trl-pairs", "trl", trl_record),
                                       ("ultrafeedback", "ultrafeedback", ultrafeedback_record)):
                print(json.dumps(bench(f"{name}", source, make, rows, tmp)))


if __name__ == "__main__":
    main()
