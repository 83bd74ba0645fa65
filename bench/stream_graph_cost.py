"""What a stream graph costs beside the whole-sequence graph of the same model.

    python -m bench.stream_graph_cost                  # 2-layer LSTM, 32 features, hidden 128
    python -m bench.stream_graph_cost --hidden 48 --features 1 --layers 1   # the sunspots demo's shape

Exports one unidirectional model (random weights) with ``seqserve export``'s
``export_model`` into a scratch repository, then times, in the same process and
alternating the two graphs call by call (best of ``--repeats``), ONNX Runtime
and TorchScript on the CPU:

- same call: ``[B, T]`` through the whole graph (``input, lengths``) and through
  the stream graph (``input, lengths, state_in``); the ratio is the price of the
  state input and output and the packing around each layer.
- per step: a sequence of ``T`` steps sent as one chunk, as chunks of 10, and one
  step at a time, against the whole graph on all ``T`` at once; per-call overhead
  is what a client pays for answers at every step.

Figures are ratios measured in one run; absolute times vary by machine and load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.export import export_model
from models.spec import ModelSpec
from models.stack import SequenceModel


def best_of(repeats: int, calls: list[Callable[[], object]]) -> list[float]:
    """Seconds per call of each, alternating them, best of ``repeats``."""
    best = [float("inf")] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def warm_up(*calls: Callable[[], object]) -> None:
    """A few runs each: TorchScript's profiling executor specialises a graph on its second run of a shape."""
    for call in calls:
        for _ in range(5):
            call()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_graph_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--steps", type=int, default=200, help="sequence length T")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    spec = ModelSpec(
        name="cost",
        task="classification",
        cell=args.cell,
        num_layers=args.layers,
        hidden_size=args.hidden,
        input_size=args.features,
        num_outputs=4,
        labels=("a", "b", "c", "d"),
        max_length=args.steps,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        entry = export_model(SequenceModel(spec), Path(scratch), batches=8)
        whole_ort = ort.InferenceSession(str(entry / "model.onnx"), providers=["CPUExecutionProvider"])
        stream_ort = ort.InferenceSession(str(entry / "stream.onnx"), providers=["CPUExecutionProvider"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            whole_ts = torch.jit.load(str(entry / "model.pt"))  # type: ignore[no-untyped-call]
            stream_ts = torch.jit.load(str(entry / "stream.pt"))  # type: ignore[no-untyped-call]
        state_size = stream_ort.get_inputs()[2].shape[1]

        def runners(batch: int, steps: int) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch, steps, args.features)).astype(np.float32)
            lengths = np.full(batch, steps, np.int64)
            state = np.zeros((batch, state_size), np.float32)
            xt, lt, st = torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(state)

            def ts(module: torch.jit.ScriptModule, *inputs: torch.Tensor) -> Callable[[], object]:
                def call() -> object:
                    with torch.inference_mode():
                        return module(*inputs)

                return call

            return {
                "onnx": (
                    lambda: whole_ort.run(None, {"input": x, "lengths": lengths}),
                    lambda: stream_ort.run(None, {"input": x, "lengths": lengths, "state_in": state}),
                ),
                "torchscript": (ts(whole_ts, xt, lt), ts(stream_ts, xt, lt, st)),
            }

        print(
            f"{args.cell.upper()} {args.layers} layer(s), {args.features} features, hidden {args.hidden}; "
            f"ORT threads default, torch threads {torch.get_num_threads()}"
        )
        print("\nsame call, stream graph / whole graph (best of each, alternated):")
        print("| runtime | B | T | whole ms | stream ms | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for batch, steps in ((1, 1), (1, 10), (1, args.steps), (16, 10), (16, args.steps)):
            for runtime, (whole, stream) in runners(batch, steps).items():
                warm_up(whole, stream)
                w, s = best_of(args.repeats, [whole, stream])
                print(f"| {runtime} | {batch} | {steps} | {w * 1e3:.3f} | {s * 1e3:.3f} | {s / w:.2f} |")

        print(f"\nper step of one sequence of {args.steps} steps, vs the whole graph on all of it at once:")
        print("| runtime | chunking | us per step | ratio |")
        print("| --- | --- | --- | --- |")
        for runtime in ("onnx", "torchscript"):
            whole, _ = runners(1, args.steps)[runtime]
            warm_up(whole)
            per_step = {"whole graph": best_of(args.repeats, [whole])[0] / args.steps}
            for chunk in (args.steps, 10, 1):
                _, stream = runners(1, chunk)[runtime]
                warm_up(stream)
                per_step[f"stream, chunks of {chunk}"] = best_of(args.repeats, [stream])[0] / chunk
            base = per_step["whole graph"]
            for label, seconds in per_step.items():
                print(f"| {runtime} | {label} | {seconds * 1e6:.1f} | {seconds / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
