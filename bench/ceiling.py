"""The ceiling: the same exported graph and runtime, in-process, no HTTP.

Run as a child process (`python -m bench.ceiling ...`, JSON on stdout) so
that nothing else shares its CPU accounting. It opens the model with
seqserve's own `OnnxRuntime`, pads every batch up front and times only the
runtime calls, made from as many threads as the runtime runs batches at once
(as the server's batch workers do). Each plan is measured with every thread
layout in `--layouts` and keeps the best, so the ceiling is what the runtime
can reach however the server chose to run it:

- `per-core`: one batch per core at a time, each single-threaded (the server's default);
- `shared`: one batch at a time on all cores (intra-op threads).

Plans:

- `sorted`: all sequences sorted by length and cut into the largest batches
  the server's limits allow (`max_batch_size`, `max_batch_tokens`): what a
  perfect server could reach;
- `window`: the sequences in arrival order, `window` at a time (as many as a
  closed loop keeps in flight), each window cut by the server's own planner;
- `single`: each sequence alone (batch 1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.workload import ModelInput, Workload
from service.batching.planner import BatchPolicy, capacity, plan_batch
from service.repository import scan_repository
from service.runtime import cpu_cores
from service.runtime.onnx import OnnxRuntime
from service.tokenizer import CharTokenizer


def sorted_plan(lengths: np.ndarray, policy: BatchPolicy) -> list[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start + 1 <= capacity(policy, int(lengths[order[stop]])):
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def window_plan(lengths: np.ndarray, policy: BatchPolicy, window: int) -> list[np.ndarray]:
    batches = []
    for first in range(0, len(lengths), window):
        pending = np.arange(first, min(first + window, len(lengths)))
        while len(pending):
            plan = plan_batch(lengths[pending], policy)
            batches.append(pending[plan.indices])
            pending = np.delete(pending, plan.indices)
    return batches


def measure(
    runtime: OnnxRuntime,
    inputs: list[np.ndarray],
    lengths: np.ndarray,
    batches: list[np.ndarray],
    pad_value: float | int,
    repeats: int,
    min_seconds: float,
) -> dict[str, float]:
    feeds = []
    for rows in batches:
        longest = int(lengths[rows].max())
        padded = np.full((len(rows), longest, *inputs[0].shape[1:]), pad_value, dtype=inputs[0].dtype)
        for i, row in enumerate(rows):
            padded[i, : lengths[row]] = inputs[row]
        feeds.append((padded, lengths[rows].astype(np.int64)))
    for padded, lens in feeds[: runtime.concurrency]:
        runtime.predict(padded, lens)  # warm
    best: dict[str, float] = {}
    for _ in range(repeats):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        sequences = _drive(runtime, feeds, min_seconds)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        result = {
            "throughput_seq_s": sequences / wall,
            "runtime_cpu_ms_per_seq": 1000.0 * cpu / sequences,
            "batches": len(batches),
            "mean_batch": len(lengths) / len(batches),
            "padding_efficiency": float(lengths.sum() / sum(len(r) * lengths[r].max() for r in batches)),
        }
        if result["throughput_seq_s"] > best.get("throughput_seq_s", 0.0):
            best = result
    best["throughput_seq_s"] = round(best["throughput_seq_s"], 1)
    best["runtime_cpu_ms_per_seq"] = round(best["runtime_cpu_ms_per_seq"], 4)
    best["padding_efficiency"] = round(best["padding_efficiency"], 4)
    return best


def _drive(runtime: OnnxRuntime, feeds: list[tuple[np.ndarray, np.ndarray]], min_seconds: float) -> int:
    """Run the feeds round and round from `runtime.concurrency` threads, each taking the next
    batch when it is free, for at least `min_seconds` and whole rounds; the sequences run."""
    order = itertools.count()
    lock = threading.Lock()
    stop_at = time.perf_counter() + min_seconds
    done, stopping = [0], [False]

    def worker() -> None:
        while True:
            with lock:
                if stopping[0]:
                    return
                i = next(order)
                # Whole rounds only: stop taking batches once the time is up and a round is complete.
                if i and i % len(feeds) == 0 and time.perf_counter() >= stop_at:
                    stopping[0] = True
                    return
            padded, lens = feeds[i % len(feeds)]
            runtime.predict(padded, lens)
            with lock:
                done[0] += len(lens)

    threads = [threading.Thread(target=worker) for _ in range(runtime.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0]


LAYOUTS = {"per-core": lambda cores: (cores, 1), "shared": lambda cores: (1, cores)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--layouts", default="per-core,shared")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--plans", default="sorted,window,single")
    args = parser.parse_args(argv)

    entry = next(e for e in scan_repository(args.repository) if e.name == args.model)
    assert entry.spec is not None and "onnx" in entry.files
    spec = entry.spec
    cores = cpu_cores()
    runtimes = {}
    for layout in args.layouts.split(","):
        concurrency, threads = LAYOUTS[layout](cores)
        runtimes[layout] = OnnxRuntime(
            entry.files["onnx"], spec, device="cpu", threads=threads, concurrency=concurrency
        )
    workload = Workload.generate(ModelInput.read(entry.path / "model.json"), args.count)
    pad_value: float | int = 0.0
    if spec.input.tokenizer is not None:
        tokenizer = CharTokenizer(spec.input.tokenizer)
        inputs = [tokenizer.encode(tokenizer.normalise(str(t))) for t in workload.sequences]
        pad_value = spec.input.tokenizer.padding_id
    else:
        inputs = [np.asarray(s) for s in workload.sequences]
    lengths = np.array([len(x) for x in inputs], dtype=np.int64)
    policy = BatchPolicy(args.max_batch_size, args.max_batch_tokens, 0.0, 1 << 20)
    plans = {
        "sorted": lambda: sorted_plan(lengths, policy),
        "window": lambda: window_plan(lengths, policy, args.window),
        "single": lambda: [np.array([i]) for i in range(len(lengths))],
    }
    out: dict[str, dict[str, object]] = {}
    for name in args.plans.split(","):
        batches = plans[name]()
        by_layout = {
            layout: measure(runtime, inputs, lengths, batches, pad_value, args.repeats, args.min_seconds)
            for layout, runtime in runtimes.items()
        }
        layout, best = max(by_layout.items(), key=lambda kv: kv[1]["throughput_seq_s"])
        out[name] = {
            **best,
            "layout": layout,
            "cores": cores,
            "by_layout": {k: v["throughput_seq_s"] for k, v in by_layout.items()},
        }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
