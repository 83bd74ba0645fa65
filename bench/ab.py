"""Same-run A/B: alternate server variants under one load and compare them.

    python -m bench.ab '{}' '{"batch_workers": 1}'                 # settings against the defaults
    python -m bench.ab '{"source": "../old"}' '{}'                 # an older checkout (git worktree) against this one
    python -m bench.ab '{}' '{"max_delay_ms": 0}' --rate 400       # open loop at 400 seq/s instead of a closed loop
    python -m bench.ab '{}' '{"http_workers": 2}' --ceiling        # each against the round's in-process ceiling
    python -m bench.ab '{"runtime": "sleep"}' '{}'                 # the HTTP front's own CPU: the model stubbed out
    python -m bench.ab '{}' '{"http_workers": 2}' --model sunspots --body grpc --connections 16   # gRPC ModelInfer

Each variant is a JSON object of `seqserve serve` settings over the base
(`max_batch_size` 32, `max_batch_tokens` 8192, one HTTP process), plus an
optional `source` (a checkout whose `service` package runs instead) and `runtime`
(`sleep`: the model's computation replaced by a sleep as long, `bench.sleeping_runtime`). Rounds alternate
the variants, so the machine's drift falls on all of them alike; each round
starts a fresh server on 127.0.0.1, warms it, measures, and stops it. Load:
the benchmark's reference model and workload (one sequence per request,
lengths 10-200), closed loop at `--concurrency` or open loop at `--rate`; with `--body grpc`, gRPC
ModelInfer calls (raw contents) in a closed loop over `--connections` HTTP/2 connections.
Per phase it prints throughput, the server's event-loop and worker CPU per
sequence, the share of the machine it used, p50 and p99; then each variant's
means. With `--ceiling`, each round first measures the in-process ceiling
(`bench.ceiling`, the `window` plan at `--concurrency` in flight) and each
variant's sequences per second are also given as a share of it: the machine's
drift between rounds then cancels out of the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.client import LoadResult, closed_loop, encode_requests, open_loop
from bench.client import run as client_run
from bench.grpc_client import encode_infer_requests, grpc_closed_loop
from bench.server import Server
from bench.workload import REFERENCE_NAME, ModelInput, Workload, build_reference
from service.runtime import cpu_cores

RUNTIMES = {"real": "service", "sleep": "bench.sleeping_runtime"}
"""A variant's `runtime`: the model's own, or a sleep as long as its computation (`bench.sleeping_runtime`)."""

BODIES = {
    "json": (f"/v1/models/{REFERENCE_NAME}/predict", "json_bodies"),
    "v2json": (f"/v2/models/{REFERENCE_NAME}/infer", "v2_json_bodies"),
    "binary": (f"/v2/models/{REFERENCE_NAME}/infer", "v2_binary_bodies"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=json.loads, help="JSON objects of settings (+ optional source)")
    parser.add_argument("--body", choices=sorted([*BODIES, "grpc"]), default="json")
    parser.add_argument("--connections", type=int, default=0, help="with --body grpc: connections (0: a few)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this many sequences/s instead")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("build/ab"), help="the reference repository and logs")
    parser.add_argument(
        "--model",
        default=REFERENCE_NAME,
        help="a model of --demo-repository instead of the reference model (e.g. names)",
    )
    parser.add_argument("--demo-repository", type=Path, default=Path("repository"))
    parser.add_argument("--per-request", type=int, default=1, help="sequences per request (/predict JSON)")
    parser.add_argument(
        "--ceiling", action="store_true", help="measure the in-process ceiling each round and give each variant's share"
    )
    args = parser.parse_args(argv)

    if args.model == REFERENCE_NAME:
        repository = args.work / "repository"
        build_reference(repository)
    else:
        repository = args.demo_repository
    args.work.mkdir(parents=True, exist_ok=True)
    workload = Workload.generate(ModelInput.read(repository / args.model / "1" / "model.json"), 1024)
    grpc = args.body == "grpc"
    if grpc:  # the same calls for every server: encoded once
        grpc_requests = encode_infer_requests(args.model, workload.sequences)  # type: ignore[arg-type]
    else:
        path, bodies_of = BODIES[args.body]
        path = path.replace(REFERENCE_NAME, args.model)
        bodies = workload.json_bodies(args.per_request) if args.body == "json" else getattr(workload, bodies_of)()
    results: list[list[dict[str, float]]] = [[] for _ in args.variants]
    for round_ in range(args.rounds):
        ceiling = _ceiling(repository, args.model, args.concurrency, args.seconds / 3) if args.ceiling else None
        if ceiling is not None:
            print(
                f"round {round_ + 1} ceiling: {ceiling['throughput_seq_s']:.0f} seq/s, "
                f"runtime {ceiling['runtime_cpu_ms_per_seq']:.3f} ms/seq",
                flush=True,
            )
        for index, variant in enumerate(args.variants):
            settings: dict[str, Any] = {"max_batch_size": 32, "max_batch_tokens": 8192, "http_workers": 1, **variant}
            source = settings.pop("source", None)
            module = RUNTIMES[settings.pop("runtime", "real")]
            server = Server(
                repository,
                name=f"variant-{index}",
                log_path=args.work / f"variant-{index}.log",
                source=Path(source) if source else None,
                module=module,
                grpc=grpc,
                **settings,
            )
            try:
                server.wait_ready()
                if grpc:
                    requests = grpc_requests
                    _grpc_load(server.grpc_port, requests, args, 1.5, 0.3)  # warm
                else:
                    requests = encode_requests(path, bodies, server.port)
                    client_run(closed_loop(server.port, requests, args.concurrency, 1.5, 0.3))  # warm
                cpu0, wall0 = server.cpu(), time.perf_counter()
                if grpc:
                    load = _grpc_load(server.grpc_port, requests, args, args.seconds, 0.0)
                elif args.rate:
                    load = client_run(open_loop(server.port, requests, args.rate, args.seconds, 0.5))
                else:
                    load = client_run(closed_loop(server.port, requests, args.concurrency, args.seconds, 0.0))
                cpu, wall = server.cpu() - cpu0, time.perf_counter() - wall0
            finally:
                server.stop()
            n = max(load.sequences * args.per_request, 1)
            figures = {
                "req_s": load.throughput,
                "seq_s": load.throughput * args.per_request,
                "loop_ms": 1000 * cpu.main / n,
                "worker_ms": 1000 * cpu.others / n,
                "machine_share": cpu.total / wall / cpu_cores(),
                "p50_ms": load.percentile(50),
                "p99_ms": load.percentile(99),
                "errors": load.errors,
            }
            if ceiling is not None:
                figures["of_ceiling"] = figures["seq_s"] / ceiling["throughput_seq_s"]
            results[index].append(figures)
            print(f"round {round_ + 1} variant {index} {json.dumps(variant)}: " + _line(figures), flush=True)
    for index, variant in enumerate(args.variants):
        means = {key: statistics.fmean(r[key] for r in results[index]) for key in results[index][0]}
        print(f"variant {index} {json.dumps(variant)}, mean of {args.rounds}: " + _line(means))
    return 0


def _grpc_load(port: int, requests: list[bytes], args: argparse.Namespace, seconds: float, warmup: float) -> LoadResult:
    """A closed loop of gRPC ModelInfer calls (grpc.aio wants asyncio's own event loop, not uvloop)."""
    return asyncio.run(
        grpc_closed_loop(port, requests, args.concurrency, seconds, warmup, connections=args.connections)
    )


def _ceiling(repository: Path, model: str, in_flight: int, seconds: float) -> dict[str, Any]:
    """The in-process ceiling's `window` plan: `in_flight` sequences at a time, each window cut by the planner,
    the best of two repeats of at least `seconds` each."""
    command = [sys.executable, "-m", "bench.ceiling", "--repository", str(repository), "--model", model]
    command += ["--plans", "window", "--window", str(in_flight), "--max-batch-size", "32", "--max-batch-tokens", "8192"]
    command += ["--repeats", "2", "--min-seconds", str(seconds)]
    answer = subprocess.run(command, check=True, capture_output=True, text=True)
    window: dict[str, Any] = json.loads(answer.stdout)["window"]
    return window


def _line(f: dict[str, float]) -> str:
    share = f" ({f['of_ceiling']:.3f} of the ceiling)" if "of_ceiling" in f else ""
    return (
        f"{f['req_s']:.0f} req/s, {f['seq_s']:.0f} seq/s{share}, loop {f['loop_ms']:.3f} ms/seq, "
        f"workers {f['worker_ms']:.3f} ms/seq, "
        f"machine {f['machine_share']:.2f}, p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, "
        f"errors {f['errors']:.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
