"""Streaming benchmark: what a stream costs, and chunk latency with many streams live.

    python -m bench.streaming                                   # a sample LSTM, figures to stdout
    python -m bench.streaming --repository repository --model sunspots --readme README.md

1. Cost. A stream of N steps sent in chunks of k costs about N steps of compute: each chunk runs
   only its own steps from the kept state. Without streams a client resends the whole sequence so far
   after each new chunk, N/k requests of k, 2k, ... N steps: about N^2/(2k) steps. Both are measured
   on one server, alternated, from its own metrics (`seqserve_batch_padded_tokens`: padded steps
   computed) and the client's wall-clock time.
2. Load. L streams live at once (1, 64, 512), each client sending its next chunk as soon as the last
   is answered (closed loop), for a fixed time: chunks per second and p50/p99 latency per chunk.

Writes docs/bench/streaming.json; with --readme a summary between the README's `streaming:start` and
`streaming:end` markers, with --doc the tables between the same markers in docs/streaming.md. Client
and server share the machine's cores: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.client import Connection
from bench.server import Server

OUTPUT = Path("docs/bench/streaming.json")
START, END = "<!-- streaming:start -->", "<!-- streaming:end -->"


def sample_repository(root: Path, max_length: int) -> tuple[Path, str]:
    """A 2-layer LSTM (hidden 64) forecaster with its stream graph, written like an exported entry."""
    from tests.service.streams.graphs import write_stream_entry

    write_stream_entry(
        root,
        "sample-lstm",
        cell="lstm",
        readout="last",
        inputs=8,
        hidden=64,
        layers=2,
        outputs=1,
        max_length=max_length,
        seed=3,
    )
    return root, "sample-lstm"


def padded_steps(port: int, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pattern = rf'^seqserve_batch_padded_tokens_sum{{model="{re.escape(model)}",version="\d+"}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def features_of(repository: Path, model: str) -> tuple[int, int]:
    [meta_path] = sorted(repository.glob(f"{model}/*/model.json"))[-1:]
    meta = json.loads(meta_path.read_text())
    return meta["input"]["features"], meta["input"]["max_length"]


def stream_once(client: httpx.Client, model: str, sequence: np.ndarray, k: int, stream: str) -> None:
    for offset in range(0, len(sequence), k):
        body = {
            "steps": sequence[offset : offset + k].tolist(),
            "start": offset == 0,
            "end": offset + k >= len(sequence),
            "offset": offset,
        }
        response = client.post(f"/v1/models/{model}/streams/{stream}", json=body)
        response.raise_for_status()


def resend_once(client: httpx.Client, model: str, sequence: np.ndarray, k: int) -> None:
    for stop in range(k, len(sequence) + k, k):
        response = client.post(f"/v1/models/{model}/predict", json={"inputs": [sequence[:stop].tolist()]})
        response.raise_for_status()


def cost(server: Server, model: str, features: int, n: int, chunks: list[int], rounds: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    sequence = rng.normal(size=(n, features)).round(4).astype(np.float32)
    rows = []
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120) as client:
        for k in chunks:
            seconds = {"stream": [], "resend": []}
            steps = {"stream": 0.0, "resend": 0.0}
            for r in range(rounds):  # alternated, best of `rounds`
                for how in ("stream", "resend"):
                    before, started = padded_steps(server.port, model), time.perf_counter()
                    if how == "stream":
                        stream_once(client, model, sequence, k, f"cost-{k}-{r}")
                    else:
                        resend_once(client, model, sequence, k)
                    seconds[how].append(time.perf_counter() - started)
                    steps[how] = padded_steps(server.port, model) - before
            rows.append(
                {
                    "steps": n,
                    "chunk": k,
                    "stream_steps_computed": int(steps["stream"]),
                    "resend_steps_computed": int(steps["resend"]),
                    "stream_seconds": round(min(seconds["stream"]), 3),
                    "resend_seconds": round(min(seconds["resend"]), 3),
                    "resend_over_stream_time": round(min(seconds["resend"]) / min(seconds["stream"]), 2),
                }
            )
            print(rows[-1], flush=True)
    return rows


def _raw(path: str, body: Any) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(data)}\r\n\r\n".encode() + data


async def load(port: int, model: str, features: int, live: int, k: int, seconds: float) -> dict[str, Any]:
    """`live` streams at once, closed loop, chunks of `k` steps, for `seconds`; one keep-alive connection each
    (bench.client's lean HTTP/1.1 client, so that the client costs the shared cores little)."""
    rng = np.random.default_rng(live)
    steps = rng.normal(size=(64, k, features)).round(4).tolist()
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        nonlocal failed
        path, offset = f"/v1/models/{model}/streams/load-{live}-{i}", 0
        connection = await Connection.open(port)
        try:
            while time.monotonic() < deadline:
                body = {"steps": steps[(i + offset) % 64], "start": offset == 0, "offset": offset}
                started = time.perf_counter()
                status, _ = await connection.request(_raw(path, body))
                if status != 200:
                    failed += 1
                    return
                latencies.append(time.perf_counter() - started)
                offset += k
            await connection.request(_raw(path, {"steps": steps[0], "offset": offset, "end": True}))
        finally:
            connection.close()

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(live)))
    elapsed = time.monotonic() - started
    values = np.asarray(latencies) * 1000
    return {
        "live_streams": live,
        "chunk_steps": k,
        "chunks": len(latencies),
        "failed": failed,
        "chunks_per_second": round(len(latencies) / elapsed, 1),
        "steps_per_second": round(len(latencies) * k / elapsed, 1),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| stream of N steps in chunks of k | steps computed: streamed | resent whole each time | "
        "time: resent / streamed |",
        "| --- | --- | --- | --- |",
    ]
    for row in results["cost"]:
        lines.append(
            f"| N={row['steps']}, k={row['chunk']} | {row['stream_steps_computed']:,} | "
            f"{row['resend_steps_computed']:,} | {row['resend_over_stream_time']}x |"
        )
    lines += [
        "",
        "| live streams | chunks/s | steps/s | p50 per chunk | p99 per chunk |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in results["load"]:
        lines.append(
            f"| {row['live_streams']} | {row['chunks_per_second']:,} | {row['steps_per_second']:,} | "
            f"{row['p50_ms']} ms | {row['p99_ms']} ms |"
        )
    setup = results["setup"]
    lines += [
        "",
        f"<sub>{setup['model']}, chunks of {setup['load_chunk_steps']} steps under load, "
        f"{setup['cpu_cores']} CPU cores shared by client and server; `python -m bench.streaming`.</sub>",
    ]
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> str:
    """The README's lines: the cost at the middle chunk size, and each load level."""
    rows = results["cost"]
    row = rows[len(rows) // 2]
    load = "; ".join(
        f"{r['live_streams']} live: {r['chunks_per_second']:,} chunks/s, p99 {r['p99_ms']} ms" for r in results["load"]
    )
    return (
        f"A stream of {row['steps']} steps in chunks of {row['chunk']}: {row['stream_steps_computed']:,} steps "
        f"computed, against {row['resend_steps_computed']:,} when each chunk resends the sequence so far "
        f"({row['resend_over_stream_time']}x the time). Chunks of {results['setup']['load_chunk_steps']} steps, "
        f"closed loop: {load} ({results['setup']['cpu_cores']} cores shared by client and server; "
        "[docs/streaming.md](docs/streaming.md#cost-and-speed))."
    )


def write_between_markers(path: Path, text: str, *, inline: bool = False) -> None:
    """Replace what is between the markers with `text`: on lines of their own, or `inline` on the markers' line."""
    content = path.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    middle = text if inline else f"\n{text}\n"
    path.write_text(f"{head}{START}{middle}{END}{rest.split(END, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, help="a repository with a stream-capable model (default: a sample)")
    parser.add_argument("--model", help="its name (with --repository)")
    parser.add_argument("--steps", type=int, default=256, help="N, the stream's length in the cost comparison")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--live", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--load-chunk", type=int, default=4)
    parser.add_argument(
        "--http-workers", type=int, default=1, help="HTTP processes of the server (more: the first holds the streams)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per load level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--readme", type=Path, help="rewrite the summary between the README's streaming markers")
    parser.add_argument("--doc", type=Path, help="rewrite the tables between docs/streaming.md's streaming markers")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="seqserve-bench-streams-"))
    if args.repository is None:
        repository, model = sample_repository(work / "repository", max_length=max(args.steps, 64))
    else:
        repository, model = args.repository, args.model
        if model is None:
            parser.error("--model is required with --repository")
    features, max_length = features_of(repository, model)
    server = Server(
        repository,
        name="streams",
        log_path=work / "server.log",
        max_streams=max(args.live) + 64,
        max_queued_tokens=1 << 22,
        http_workers=args.http_workers,  # the recorded figures': 1, one process holding the streams, none forwarded
    )
    try:
        server.wait_ready()
        results = {
            "setup": {
                "model": f"{model} ({features} features)",
                "cpu_cores": os.cpu_count(),
                "load_chunk_steps": args.load_chunk,
                "load_seconds": args.seconds,
            },
            "cost": cost(server, model, features, min(args.steps, max_length), args.chunks, args.rounds),
            "load": [],
        }
        for live in args.live:
            row = asyncio.run(load(server.port, model, features, live, args.load_chunk, args.seconds))
            print(row, flush=True)
            results["load"].append(row)
    finally:
        server.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(summary(results))
    if args.readme is not None:
        write_between_markers(args.readme, summary(results), inline=True)  # README: one line
    if args.doc is not None:
        write_between_markers(args.doc, table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
