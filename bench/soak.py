"""`python -m bench.soak`: a long open-loop run at a share of saturation, sampled every 30 s.

Not part of CI. It builds (or reuses) the benchmark's reference model, starts seqserve on
127.0.0.1, measures saturation with a short closed loop at concurrency 64 (or takes `--rate`),
then offers `--rate-share` of it for `--minutes`. Per window: the answered rate, p50 and p99
latency of the answers that arrived in it (from their scheduled start), errors, and the server's
resident memory (VmRSS of the PID it started). Writes JSON and prints a markdown table with the
first-versus-last-window drift. It stops by itself and ends its server, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.client import LoadResult, closed_loop, encode_requests, open_loop
from bench.client import run as client_run
from bench.run import Config, _meta
from bench.server import Server
from bench.workload import REFERENCE_NAME, ModelInput, Workload, build_reference

SATURATION_CONCURRENCY = 64


@dataclass(frozen=True)
class Window:
    index: int
    start_s: float  # since the open loop began
    end_s: float
    answered: int  # answered 200
    errors: int  # any other status, refused starts and failed connections
    error_statuses: dict[str, int]  # by HTTP status; "0": the connection failed, "-1": connection cap reached
    p50_ms: float
    p99_ms: float
    rss_mib: float  # server VmRSS at the window's end

    @property
    def answered_per_s(self) -> float:
        return self.answered / max(self.end_s - self.start_s, 1e-9)


@dataclass
class WindowRecorder:
    """Sorts each answer of the open loop into the window in which it arrived."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def answer(self, scheduled: float, done: float, status: int) -> None:
        if status == 200:
            self.latencies_s.append(done - scheduled)
        else:
            self.errors[str(status)] += 1

    def close(self, index: int, start_s: float, end_s: float, rss_mib: float) -> Window:
        latencies_ms = np.asarray(self.latencies_s) * 1000.0
        p50, p99 = np.percentile(latencies_ms, [50, 99]) if len(latencies_ms) else (math.nan, math.nan)
        window = Window(
            index,
            round(start_s, 2),
            round(end_s, 2),
            len(latencies_ms),
            self.errors.total(),
            dict(sorted(self.errors.items())),
            round(float(p50), 2),
            round(float(p99), 2),
            round(rss_mib, 1),
        )
        self.latencies_s, self.errors = [], Counter()
        return window


def rss_mib(pid: int) -> float:
    """Resident memory of a process from /proc/<pid>/status (VmRSS), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def soak(
    server: Server,
    requests: list[bytes],
    rate: float,
    seconds: float,
    window_seconds: float,
    on_tick: Callable[[float, Window | None], None],
) -> tuple[list[Window], LoadResult]:
    """The open loop, with a sampler closing a window every `window_seconds`; `on_tick` gets the
    elapsed seconds about once a second and each window as it closes."""
    loop = asyncio.get_running_loop()
    recorder = WindowRecorder()
    start = loop.time()
    load = asyncio.ensure_future(open_loop(server.port, requests, rate, seconds, 0.0, on_answer=recorder.answer))
    windows: list[Window] = []
    boundary = min(window_seconds, seconds)
    try:
        while not load.done() and boundary > (windows[-1].end_s if windows else 0.0):
            await asyncio.wait({load}, timeout=max(0.0, min(1.0, start + boundary - loop.time())))
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited with {server.process.returncode} during the soak")
            elapsed = loop.time() - start
            closed = None
            if elapsed >= boundary:
                closed = recorder.close(
                    len(windows), windows[-1].end_s if windows else 0.0, boundary, rss_mib(server.process.pid)
                )
                windows.append(closed)
                boundary = min(boundary + window_seconds, seconds)
            on_tick(min(elapsed, seconds), closed)
        return windows, await load
    finally:
        if not load.done():
            load.cancel()


def drift(windows: list[Window]) -> dict[str, Any]:
    """Last window against the first: p50, p99 (ratio) and RSS (MiB added)."""
    if not windows:
        return {}
    first, last = windows[0], windows[-1]

    def ratio(a: float, b: float) -> float | None:
        return round(b / a, 3) if a > 0 and math.isfinite(a) and math.isfinite(b) else None

    return {
        "p50_ms": [first.p50_ms, last.p50_ms],
        "p50_ratio": ratio(first.p50_ms, last.p50_ms),
        "p99_ms": [first.p99_ms, last.p99_ms],
        "p99_ratio": ratio(first.p99_ms, last.p99_ms),
        "rss_mib": [first.rss_mib, last.rss_mib],
        "rss_added_mib": round(last.rss_mib - first.rss_mib, 1),
    }


def _errors(window: dict[str, Any]) -> str:
    statuses = ", ".join(f"{status}: {count}" for status, count in window["error_statuses"].items())
    return f"{window['errors']} ({statuses})" if statuses else "0"


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| window | seconds | answered/s | p50 ms | p99 ms | errors | server RSS MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in results["windows"]:
        rows.append(
            f"| {w['index'] + 1} | {w['start_s']:.0f}-{w['end_s']:.0f} | {w['answered_per_s']:.1f} "
            f"| {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | {_errors(w)} | {w['rss_mib']:.1f} |"
        )
    d = results["drift"]
    if d:
        rows.append("")
        rows.append(
            f"Drift, last window vs first: p50 {d['p50_ms'][0]:.2f} -> {d['p50_ms'][1]:.2f} ms "
            f"(x{d['p50_ratio']}), p99 {d['p99_ms'][0]:.2f} -> {d['p99_ms'][1]:.2f} ms (x{d['p99_ratio']}), "
            f"RSS {d['rss_mib'][0]:.1f} -> {d['rss_mib'][1]:.1f} MiB ({d['rss_added_mib']:+.1f} MiB)."
        )
    s = results["settings"]
    rows.append(
        f"Offered {s['rate_seq_s']:.1f} req/s ({s['rate_source']}) for {s['minutes']:g} min; "
        f"{results['total']['errors']} errors in all."
    )
    return "\n".join(rows)


def run(args: argparse.Namespace, progress: Callable[[str], None], make_bar: Callable[[float], Any]) -> dict[str, Any]:
    c = Config(out=args.work)  # the benchmark's own server limits
    repository = args.work / "repository"
    progress("building the reference model")
    build_reference(repository)
    model = ModelInput.read(repository / REFERENCE_NAME / "1" / "model.json")
    workload = Workload.generate(model, c.count)
    progress("starting seqserve")
    server = Server(
        repository,
        name="soak",
        log_path=args.work / "soak-server.log",
        max_batch_size=c.max_batch_size,
        max_batch_tokens=c.max_batch_tokens,
        http_workers=1,
    )
    try:
        server.wait_ready()
        requests = encode_requests(f"/v1/models/{REFERENCE_NAME}/predict", workload.json_bodies(), server.port)
        saturation: dict[str, Any] | None = None
        if args.rate is not None:
            rate, source = args.rate, "--rate"
        else:
            progress(f"saturation: closed loop at c={SATURATION_CONCURRENCY} for {args.saturation_seconds:g} s")
            closed = client_run(
                closed_loop(server.port, requests, SATURATION_CONCURRENCY, args.saturation_seconds, c.warmup_seconds)
            )
            saturation = closed.summary()
            rate, source = (
                max(1.0, args.rate_share * closed.throughput),
                (f"{args.rate_share:g} x saturation {closed.throughput:.1f} req/s"),
            )
        rss_before = rss_mib(server.process.pid)
        seconds = args.minutes * 60.0
        progress(f"soak: {rate:.1f} req/s for {args.minutes:g} min")
        bar = make_bar(seconds)
        try:

            def on_tick(elapsed: float, window: Window | None) -> None:
                bar.update(round(elapsed - bar.n, 1))
                if window is not None:
                    bar.set_postfix(
                        p50_ms=window.p50_ms, p99_ms=window.p99_ms, rss_mib=window.rss_mib, errors=window.errors
                    )

            windows, total = client_run(soak(server, requests, rate, seconds, args.window_seconds, on_tick))
        finally:
            bar.close()
    finally:
        server.stop()
    meta = _meta(c)
    meta["settings"] = {"max_batch_size": c.max_batch_size, "max_batch_tokens": c.max_batch_tokens}
    results: dict[str, Any] = {
        "meta": meta,
        "settings": {
            "minutes": args.minutes,
            "rate_share": args.rate_share if args.rate is None else None,
            "rate_seq_s": round(rate, 2),
            "rate_source": source,
            "window_seconds": args.window_seconds,
            "sequences": c.count,
            "model": REFERENCE_NAME,
        },
        "saturation": saturation,
        "server_rss_mib_before_load": round(rss_before, 1),
        "windows": [{**asdict(w), "answered_per_s": round(w.answered_per_s, 1)} for w in windows],
        "total": total.summary(),
        "drift": drift(windows),
    }
    return results


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that the server is ended on the way out."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the open-loop soak [10]")
    parser.add_argument(
        "--rate-share", type=float, default=0.5, help="offered rate as a share of the measured saturation [0.5]"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="offered requests per second; skips the saturation phase"
    )
    parser.add_argument(
        "--saturation-seconds",
        type=float,
        default=5.0,
        help=f"measured seconds of the closed loop at c={SATURATION_CONCURRENCY} [5]",
    )
    parser.add_argument("--window-seconds", type=float, default=30.0, help="sampling window [30]")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/bench/soak.json"),
        help="where the JSON results go [docs/bench/soak.json]",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("build/soak"),
        help="scratch: the reference repository (reused) and the server log [build/soak]",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.window_seconds <= 0 or args.saturation_seconds <= 0:
        parser.error("--minutes, --window-seconds and --saturation-seconds must be positive")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if not 0 < args.rate_share <= 2:
        parser.error("--rate-share must be in (0, 2]")

    from tqdm import tqdm

    _stop_on_sigterm()
    args.work.mkdir(parents=True, exist_ok=True)

    def progress(label: str) -> None:
        print(f"[{dt.datetime.now():%H:%M:%S}] {label}", file=sys.stderr, flush=True)

    def make_bar(seconds: float) -> Any:
        return tqdm(
            total=seconds, unit="s", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}", dynamic_ncols=True
        )

    try:
        results = run(args, progress, make_bar)
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")
    return 0 if results["total"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
