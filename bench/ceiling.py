"""The ceiling: the same exported graph and runtime, in-process, no HTTP.

Run as a child process (`python -m bench.ceiling ...`, JSON on stdout) so
that nothing else shares its CPU accounting. It opens the model with
seqserve's own `OnnxRuntime` (same session options and threads as the
server), pads every batch up front and times only the runtime calls:

- `sorted`: all sequences sorted by length and cut into the largest batches
  the server's limits allow (`max_batch_size`, `max_batch_tokens`): what a
  perfect server could reach;
- `window`: the sequences in arrival order, `window` at a time (as many as a
  closed loop keeps in flight), each window cut by the server's own planner;
- `single`: each sequence alone (batch 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.workload import ModelInput, Workload
from service.batching.planner import BatchPolicy, capacity, plan_batch
from service.repository import scan_repository
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


def measure(runtime: OnnxRuntime, inputs: list[np.ndarray], lengths: np.ndarray, batches: list[np.ndarray],
            pad_value: float | int, repeats: int, min_seconds: float) -> dict[str, float]:
    feeds = []
    for rows in batches:
        longest = int(lengths[rows].max())
        padded = np.full((len(rows), longest, *inputs[0].shape[1:]), pad_value, dtype=inputs[0].dtype)
        for i, row in enumerate(rows):
            padded[i, : lengths[row]] = inputs[row]
        feeds.append((padded, lengths[rows].astype(np.int64)))
    runtime.predict(*feeds[0])  # warm
    best: dict[str, float] = {}
    for _ in range(repeats):
        sequences, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while True:
            for padded, lens in feeds:
                runtime.predict(padded, lens)
            sequences += len(lengths)
            if time.perf_counter() - wall0 >= min_seconds:
                break
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--plans", default="sorted,window,single")
    args = parser.parse_args(argv)

    entry = next(e for e in scan_repository(args.repository) if e.name == args.model)
    assert entry.spec is not None and "onnx" in entry.files
    spec = entry.spec
    runtime = OnnxRuntime(entry.files["onnx"], spec, device="cpu", threads=args.threads)
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
    out = {}
    for name in args.plans.split(","):
        out[name] = measure(runtime, inputs, lengths, plans[name](), pad_value, args.repeats, args.min_seconds)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
