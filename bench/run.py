"""`seqserve bench`: run every phase in one go and write the results.

One run measures, back to back on the same machine: the ceiling (in-process
ONNX Runtime, `bench.ceiling`), seqserve, and the floor (the same server with
`max_batch_size=1`). Every figure is divided by the ceiling and the floor of
that same run; the machine's load from other processes is recorded per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import LoadResult, closed_loop, encode_requests, open_loop
from bench.client import run as client_run
from bench.grpc_client import encode_infer_requests, grpc_closed_loop
from bench.server import CpuSample, Server
from bench.workload import REFERENCE_NAME, ModelInput, Workload, build_reference
from service.runtime import cpu_cores


@dataclass(frozen=True)
class Config:
    out: Path
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    load_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.1)
    seconds: float = 8.0
    warmup_seconds: float = 1.0
    rounds: int = 2
    count: int = 1024
    ceiling_repeats: int = 3
    ceiling_seconds: float = 2.0
    demo_repository: Path | None = None
    demo_concurrency: int = 64
    demo_seconds: float = 5.0
    binary_check: bool = True
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    server_env: dict[str, str] = field(default_factory=dict)
    http_workers: int | str = "auto"
    """HTTP processes of the seqserve server and the floor in the reference and demo phases; auto: what `seqserve
    serve` chooses for the bench's repository (recorded with its reason)."""
    scaling_model: str = "names"
    """The demo model of the scaling phase: the same closed loop with 1, 2, ... HTTP worker processes."""
    scaling_workers: tuple[int, ...] = field(default_factory=lambda: scaling_counts(cpu_cores()))
    scaling_per_request: tuple[int, ...] = (1, 8)
    """Sequences per request in the scaling phase (one name per request; eight)."""

    @classmethod
    def targets(cls, out: Path, **overrides: Any) -> Config:
        """Minutes, not many: only what the targets read (the reference at c=1 and c=64 with its ceiling, the demo
        models at c=64, the scaling phase), 3 rounds of 5 s."""
        settings: dict[str, Any] = dict(
            out=out,
            concurrency=(1, 64),
            load_fractions=(),
            seconds=5.0,
            rounds=3,
            binary_check=False,
            ceiling_repeats=2,
            demo_seconds=5.0,
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def quick(cls, out: Path, **overrides: Any) -> Config:
        """Seconds, not minutes: for the smoke test and a first look."""
        settings: dict[str, Any] = dict(
            out=out,
            concurrency=(1, 8),
            load_fractions=(0.5,),
            seconds=1.0,
            warmup_seconds=0.3,
            rounds=1,
            count=64,
            ceiling_repeats=1,
            ceiling_seconds=0.3,
            demo_seconds=1.0,
            scaling_per_request=(1,),
        )
        settings.update(overrides)
        return cls(**settings)


class _Machine:
    """CPU time of the whole machine (/proc/stat), to tell how busy other processes kept it."""

    @staticmethod
    def busy_idle() -> tuple[float, float]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        tick = os.sysconf("SC_CLK_TCK")
        return (sum(values) - idle) / tick, idle / tick


class Bench:
    def __init__(self, config: Config, progress: Callable[[str], None]) -> None:
        self.config = config
        self.progress = progress
        self.results: dict[str, Any] = {"phases": []}
        self.servers: dict[str, Server] = {}

    # -- one measured phase -------------------------------------------------

    def _phase(
        self,
        server: Server,
        label: str,
        run: Callable[[tuple[Callable[[], None], Callable[[], None]]], Coroutine[Any, Any, LoadResult]],
        *,
        grpc: bool = False,
    ) -> dict[str, Any]:
        self.progress(label)
        marks: dict[str, Any] = {}

        def start() -> None:
            marks["server"], marks["machine"] = server.cpu(), _Machine.busy_idle()
            marks["others"] = {n: s.cpu() for n, s in self.servers.items() if s is not server}

        def stop() -> None:
            marks["server"] = server.cpu() - marks["server"]
            busy, idle = _Machine.busy_idle()
            marks["machine"] = (busy - marks["machine"][0], idle - marks["machine"][1])
            marks["others"] = sum(
                (s.cpu() - marks["others"][n]).total for n, s in self.servers.items() if s is not server
            )

        load_before = os.getloadavg()[0]
        result = (asyncio.run if grpc else client_run)(run((start, stop)))  # grpc.aio wants asyncio's loop
        summary = result.summary()
        cpu: CpuSample = marks["server"]
        busy, idle = marks["machine"]
        seqs = max(result.sequences, 1)
        cores = os.cpu_count() or 1
        foreign = busy - cpu.total - result.client_cpu_seconds - marks["others"]
        summary.update(
            label=label,
            server=server.name,
            server_cpu_share=round(cpu.total / (result.seconds * cores), 4),
            server_cpu_ms_per_seq=round(1000 * cpu.total / seqs, 4),
            server_loop_cpu_ms_per_seq=round(1000 * cpu.main / seqs, 4),
            server_worker_cpu_ms_per_seq=round(1000 * cpu.others / seqs, 4),
            other_processes_cpu_share=round(max(0.0, foreign) / max(busy + idle, 1e-9), 4),
            loadavg_1min_before=round(load_before, 2),
            loadavg_1min_after=round(os.getloadavg()[0], 2),
        )
        self.results["phases"].append(summary)
        return summary

    def _closed(
        self, server: Server, requests: list[bytes], concurrency: int, label: str, seconds: float | None = None
    ) -> dict[str, Any]:
        c = self.config
        return self._phase(
            server,
            label,
            lambda w: closed_loop(
                server.port, requests, concurrency, seconds or c.seconds, c.warmup_seconds, on_window=w
            ),
        )

    def _grpc_closed(self, server: Server, requests: list[bytes], concurrency: int, label: str) -> dict[str, Any]:
        c = self.config
        return self._phase(
            server,
            label,
            lambda w: grpc_closed_loop(
                server.grpc_port, requests, concurrency, c.seconds, c.warmup_seconds, on_window=w
            ),
            grpc=True,
        )

    def _open(self, server: Server, requests: list[bytes], rate: float, label: str) -> dict[str, Any]:
        c = self.config
        return self._phase(
            server, label, lambda w: open_loop(server.port, requests, rate, c.seconds, c.warmup_seconds, on_window=w)
        )

    def _ceiling(self, repository: Path, model: str, plans: str, count: int, seconds: float) -> dict[str, Any]:
        c = self.config
        self.progress(f"ceiling {model}")
        load_before = os.getloadavg()[0]
        busy0, idle0 = _Machine.busy_idle()
        started = time.perf_counter()
        answer = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.ceiling",
                "--repository",
                str(repository),
                "--model",
                model,
                "--count",
                str(count),
                "--max-batch-size",
                str(c.max_batch_size),
                "--max-batch-tokens",
                str(c.max_batch_tokens),
                "--repeats",
                str(c.ceiling_repeats),
                "--min-seconds",
                str(seconds),
                "--plans",
                plans,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        busy1, idle1 = _Machine.busy_idle()
        result: dict[str, Any] = json.loads(answer.stdout)
        result["machine_busy_share"] = round((busy1 - busy0) / max(busy1 - busy0 + idle1 - idle0, 1e-9), 4)
        result["seconds"] = round(time.perf_counter() - started, 2)
        result["loadavg_1min_before"] = round(load_before, 2)
        return result

    # -- the whole run ---------------------------------------------------------

    def run(self) -> dict[str, Any]:
        c = self.config
        repository = c.out / "repository"
        shutil.rmtree(repository, ignore_errors=True)
        self.progress("building the reference model")
        build_reference(repository)
        demos: list[str] = []
        if c.demo_repository is not None and c.demo_repository.is_dir():
            for model_dir in sorted(p for p in c.demo_repository.iterdir() if p.is_dir()):
                versions = sorted((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
                if versions and (versions[-1] / "model.json").is_file() and model_dir.name != REFERENCE_NAME:
                    (repository / model_dir.name).mkdir()
                    (repository / model_dir.name / "1").symlink_to(versions[-1].resolve())
                    demos.append(model_dir.name)
        self.results["meta"] = _meta(c)
        self.results["meta"]["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
        limits = {"max_batch_size": c.max_batch_size, "max_batch_tokens": c.max_batch_tokens}
        processes, why = _http_workers(c, repository)
        self.results["meta"]["settings"].update(http_workers=processes, http_workers_reason=why)
        try:
            self.progress("starting seqserve and the floor")
            self.servers["seqserve"] = Server(
                repository,
                name="seqserve",
                log_path=c.out / "seqserve.log",
                grpc=c.binary_check,
                **limits,
                **_env_settings(c.server_env),
                http_workers=processes,
            )
            self.servers["floor"] = Server(
                repository,
                name="floor",
                log_path=c.out / "floor.log",
                **{**limits, "max_batch_size": 1},
                **_env_settings(c.server_env),
                http_workers=processes,
            )
            for server in self.servers.values():
                server.wait_ready()
            self._reference()
            for name in demos:
                self._demo(repository, name)
        finally:
            for server in self.servers.values():
                server.stop()
        if c.scaling_model in demos and c.scaling_workers:
            self._scaling(repository, c.scaling_model)
        self.results["meta"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.results["summary"] = summarise(self.results)
        return self.results

    def _reference(self) -> None:
        c = self.config
        repository = c.out / "repository"
        seqserve, floor = self.servers["seqserve"], self.servers["floor"]
        model = ModelInput.read(repository / REFERENCE_NAME / "1" / "model.json")
        workload = Workload.generate(model, c.count)
        path = f"/v1/models/{REFERENCE_NAME}/predict"
        json_requests = encode_requests(path, workload.json_bodies(), seqserve.port)
        floor_requests = encode_requests(path, workload.json_bodies(), floor.port)
        ceilings = [
            self._ceiling(repository, REFERENCE_NAME, "sorted,window,single", min(c.count, 512), c.ceiling_seconds)
        ]
        closed: dict[str, dict[int, list[dict[str, Any]]]] = {"seqserve": {}, "floor": {}}
        for round_ in range(c.rounds):
            for concurrency in c.concurrency:
                for server, requests in ((seqserve, json_requests), (floor, floor_requests)):
                    result = self._closed(
                        server, requests, concurrency, f"closed c={concurrency} {server.name} (round {round_ + 1})"
                    )
                    closed[server.name].setdefault(concurrency, []).append(result)
        ceilings.append(
            self._ceiling(repository, REFERENCE_NAME, "sorted,window,single", min(c.count, 512), c.ceiling_seconds)
        )
        saturation = max(r["throughput_seq_s"] for runs in closed["seqserve"].values() for r in runs)
        floor_saturation = max(r["throughput_seq_s"] for runs in closed["floor"].values() for r in runs)
        open_runs: dict[str, list[dict[str, Any]]] = {"seqserve": [], "floor": []}
        for fraction in c.load_fractions:
            rate = max(1.0, fraction * saturation)
            for server, requests in ((seqserve, json_requests), (floor, floor_requests)):
                result = self._open(server, requests, rate, f"open {rate:.0f}/s {server.name}")
                result["fraction_of_saturation"] = fraction
                open_runs[server.name].append(result)
        protocols: dict[str, Any] = {}
        if c.binary_check:
            # The encodings side by side: V2 /infer JSON and binary over HTTP, and ModelInfer over gRPC (raw
            # contents), at the highest and the lowest concurrency; /predict JSON is the closed loop's.
            top, low = max(c.concurrency), min(c.concurrency)
            v2 = f"/v2/models/{REFERENCE_NAME}/infer"
            encoded = {
                "v2_json": encode_requests(v2, workload.v2_json_bodies(), seqserve.port),
                "v2_binary": encode_requests(v2, workload.v2_binary_bodies(), seqserve.port),
            }
            grpc_requests = encode_infer_requests(REFERENCE_NAME, workload.sequences)  # type: ignore[arg-type]
            for concurrency in sorted({top, low}, reverse=True):
                at = protocols if concurrency == top else protocols.setdefault("low", {"concurrency": low})
                at["v1_json"] = max(closed["seqserve"][concurrency], key=lambda r: r["throughput_seq_s"])
                for name, requests in encoded.items():
                    at[name] = self._closed(seqserve, requests, concurrency, f"closed c={concurrency} seqserve {name}")
                at["grpc"] = self._grpc_closed(
                    seqserve, grpc_requests, concurrency, f"closed c={concurrency} seqserve grpc"
                )
            protocols["concurrency"] = top
            protocols["body_bytes_mean"] = {
                "v1_json": round(sum(map(len, workload.json_bodies())) / c.count),
                "v2_json": round(sum(map(len, workload.v2_json_bodies())) / c.count),
                "v2_binary": round(sum(len(b) for b, _ in workload.v2_binary_bodies()) / c.count),
                "grpc": round(sum(map(len, grpc_requests)) / c.count),
            }
        self.results["reference"] = {
            "model": "2-layer BiLSTM, 32 features, hidden 128, 5 classes, seed 0",
            "lengths": [int(workload.lengths.min()), int(workload.lengths.max())],
            "ceiling": ceilings,
            "closed": closed,
            "saturation_seq_s": saturation,
            "floor_saturation_seq_s": floor_saturation,
            "open": open_runs,
            "protocols": protocols,
        }

    def _demo(self, repository: Path, name: str) -> None:
        c = self.config
        model = ModelInput.read(repository / name / "1" / "model.json")
        workload = Workload.generate(model, min(c.count, 512))
        path = f"/v1/models/{name}/predict"
        out: dict[str, Any] = {"lengths": [int(workload.lengths.min()), int(workload.lengths.max())]}
        out["ceiling"] = self._ceiling(
            repository, name, "sorted,window,single", min(c.count, 512), c.ceiling_seconds / 2
        )
        runtime_ms = out["ceiling"]["window"]["runtime_cpu_ms_per_seq"]
        for server in (self.servers["seqserve"], self.servers["floor"]):
            requests = encode_requests(path, workload.json_bodies(), server.port)
            out[server.name] = _per_request(
                self._closed(
                    server,
                    requests,
                    c.demo_concurrency,
                    f"demo {name} c={c.demo_concurrency} {server.name}",
                    c.demo_seconds,
                ),
                1,
                runtime_ms,
            )
        self.results.setdefault("demos", {})[name] = out

    def _scaling(self, repository: Path, name: str) -> None:
        """The demo model `name` at c=demo_concurrency with 1, 2, ... HTTP worker processes, `rounds` rounds
        alternating the counts (best of), for each number of sequences per request."""
        c = self.config
        model = ModelInput.read(repository / name / "1" / "model.json")
        workload = Workload.generate(model, min(c.count, 512))
        runtime_ms = self.results["demos"][name]["ceiling"]["window"]["runtime_cpu_ms_per_seq"]
        limits = {"max_batch_size": c.max_batch_size, "max_batch_tokens": c.max_batch_tokens}
        runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for round_ in range(c.rounds):
            for workers in c.scaling_workers:
                server = Server(
                    repository,
                    name=f"seqserve-{workers}w",
                    log_path=c.out / f"seqserve-{workers}w.log",
                    **limits,
                    **_env_settings(c.server_env),
                    http_workers=workers,
                )
                try:
                    server.wait_ready()
                    for per_request in c.scaling_per_request:
                        requests = encode_requests(
                            f"/v1/models/{name}/predict", workload.json_bodies(per_request), server.port
                        )
                        label = (
                            f"scaling {name} {per_request}/request c={c.demo_concurrency} {workers} HTTP "
                            f"processes (round {round_ + 1})"
                        )
                        result = self._closed(server, requests, c.demo_concurrency, label, c.demo_seconds)
                        runs.setdefault((per_request, workers), []).append(
                            _per_request(result, per_request, runtime_ms)
                        )
                finally:
                    server.stop()
        rows = []
        for (per_request, workers), results in sorted(runs.items()):
            best = max(results, key=lambda r: r["throughput_seq_s"])
            rows.append({"http_workers": workers, "per_request": per_request, **best})
        self.results["scaling"] = {
            "model": name,
            "concurrency": c.demo_concurrency,
            "runtime_cpu_ms_per_seq": runtime_ms,
            "rows": rows,
        }


def scaling_counts(cores: int) -> tuple[int, ...]:
    """HTTP worker counts for the scaling phase: 1, 2, 4, ... up to the cores, and the cores."""
    counts = [1]
    while counts[-1] * 2 <= cores:
        counts.append(counts[-1] * 2)
    return tuple(sorted({*counts, max(1, cores)}))


def _per_request(result: dict[str, Any], per_request: int, runtime_ms_per_seq: float) -> dict[str, Any]:
    """A closed-loop phase's figures per request: requests/s, the server's CPU per request, and the part of it
    outside the runtime (the server's CPU less the in-process ceiling's runtime CPU for the request's sequences)."""
    requests_s = result["throughput_seq_s"]  # the load generator counts answered requests
    cpu_ms = result["server_cpu_ms_per_seq"]
    result = dict(result)
    result.update(
        per_request=per_request,
        throughput_req_s=requests_s,
        throughput_seq_s=round(requests_s * per_request, 1),
        server_cpu_ms_per_req=cpu_ms,
        server_cpu_outside_runtime_ms_per_req=round(cpu_ms - per_request * runtime_ms_per_seq, 4),
    )
    return result


def _http_workers(c: Config, repository: Path) -> tuple[int, str]:
    """The HTTP processes of the reference and demo phases' servers, and why: as asked, or `seqserve serve`'s auto."""
    if c.http_workers != "auto":
        return int(c.http_workers), "--http-workers"
    from service.settings import Settings
    from service.workers import worker_count

    settings = Settings(
        repository=repository,
        max_batch_size=c.max_batch_size,
        max_batch_tokens=c.max_batch_tokens,
        **_env_settings(c.server_env),
    )  # type: ignore[arg-type]
    return worker_count(settings.model_copy(update={"http_workers": "auto"}))


def _env_settings(env: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("SEQSERVE_").lower(): v for k, v in env.items()}


def _meta(c: Config) -> dict[str, Any]:
    import numpy
    import onnxruntime

    import service

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "gpu": None,
        },
        "versions": {
            "seqserve": service.__version__,
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
        },
        "settings": {
            "concurrency": list(c.concurrency),
            "load_fractions": list(c.load_fractions),
            "phase_seconds": c.seconds,
            "warmup_seconds": c.warmup_seconds,
            "rounds": c.rounds,
            "sequences": c.count,
            "max_batch_size": c.max_batch_size,
            "max_batch_tokens": c.max_batch_tokens,
            "server_env": c.server_env,
        },
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Best-of-N figures, their ratios to the ceiling and the floor, and the targets."""
    ref = results.get("reference")
    if not ref:
        return {}
    # NOTE: the ceiling is the best the runtime reached in-process with either plan (sorted
    # batches are not always the fastest: one single-threaded batch per core favours smaller ones).
    ceiling_sorted = max(r[plan]["throughput_seq_s"] for r in ref["ceiling"] for plan in ("sorted", "window"))
    ceiling_window = max(r["window"]["throughput_seq_s"] for r in ref["ceiling"])
    ceiling_single = max(r["single"]["throughput_seq_s"] for r in ref["ceiling"])
    runtime_cpu = min(r["sorted"]["runtime_cpu_ms_per_seq"] for r in ref["ceiling"])
    rows = []
    for concurrency in sorted(ref["closed"]["seqserve"], key=int):
        s = max(ref["closed"]["seqserve"][concurrency], key=lambda r: r["throughput_seq_s"])
        f = max(ref["closed"]["floor"][concurrency], key=lambda r: r["throughput_seq_s"])
        s_p50 = min(r["p50_ms"] for r in ref["closed"]["seqserve"][concurrency])
        f_p50 = min(r["p50_ms"] for r in ref["closed"]["floor"][concurrency])
        rows.append(
            {
                "concurrency": int(concurrency),
                "seqserve_seq_s": s["throughput_seq_s"],
                "floor_seq_s": f["throughput_seq_s"],
                "seqserve_p50_ms": s_p50,
                "seqserve_p99_ms": s["p99_ms"],
                "floor_p50_ms": f_p50,
                "floor_p99_ms": f["p99_ms"],
                "to_ceiling": round(s["throughput_seq_s"] / ceiling_sorted, 3),
                "to_ceiling_window": round(s["throughput_seq_s"] / ceiling_window, 3),
                "to_floor": round(s["throughput_seq_s"] / max(f["throughput_seq_s"], 1e-9), 3),
                "p50_to_floor": round(s_p50 / max(f_p50, 1e-9), 3),
                "seqserve_loop_cpu_ms_per_seq": s["server_loop_cpu_ms_per_seq"],
                "seqserve_worker_cpu_ms_per_seq": s["server_worker_cpu_ms_per_seq"],
                "client_cpu_share": s["client_cpu_share"],
                "other_processes_cpu_share": s["other_processes_cpu_share"],
            }
        )
    top, low = rows[-1], rows[0]
    half = min(ref["open"]["seqserve"], key=lambda r: abs(r["fraction_of_saturation"] - 0.5), default=None)
    overhead = top["seqserve_loop_cpu_ms_per_seq"] / max(top["seqserve_worker_cpu_ms_per_seq"], 1e-9)
    targets = {
        f"c={top['concurrency']} throughput >= 0.85 x ceiling": {
            "value": top["to_ceiling"],
            "met": top["to_ceiling"] >= 0.85,
        },
        f"c={top['concurrency']} throughput >= 2 x floor": {"value": top["to_floor"], "met": top["to_floor"] >= 2.0},
        f"c={low['concurrency']} p50 <= 1.2 x floor p50": {
            "value": low["p50_to_floor"],
            "met": low["p50_to_floor"] <= 1.2,
        },
        "server CPU outside the runtime < 0.15 x runtime CPU (per sequence)": {
            "value": round(overhead, 3),
            "met": overhead < 0.15,
        },
    }
    if half is not None:  # no open loop in a --targets run
        targets["open loop at half saturation: p99 <= 3 x p50"] = {
            "value": round(half["p99_ms"] / max(half["p50_ms"], 1e-9), 3),
            "met": half["p99_ms"] <= 3 * half["p50_ms"],
        }
    targets[f"c={top['concurrency']} throughput >= 0.85 x planner ceiling (64 in flight)"] = {
        "value": top["to_ceiling_window"],
        "met": top["to_ceiling_window"] >= 0.85,
    }
    scaling = results.get("scaling")
    if scaling:
        ones = [r for r in scaling["rows"] if r["per_request"] == 1]
        best = max(ones, key=lambda r: r["throughput_req_s"], default=None)
        if best is not None:
            name, cc, workers = scaling["model"], scaling["concurrency"], best["http_workers"]
            outside = best["server_cpu_outside_runtime_ms_per_req"]
            processes = f"{workers} HTTP process" + ("es" if workers > 1 else "")
            target = (
                f"{name}, one per request, c={cc} ({processes}): server CPU outside the runtime <= 0.15 ms per request"
            )
            targets[target] = {"value": outside, "met": outside <= 0.15}
    return {
        "ceiling_seq_s": ceiling_sorted,
        "ceiling_window_seq_s": ceiling_window,
        "ceiling_single_seq_s": ceiling_single,
        "ceiling_runtime_cpu_ms_per_seq": runtime_cpu,
        "closed": rows,
        "open_half": half,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seqserve bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/bench"),
        help="where results.json, table.md and the plots go [docs/bench]",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("build/bench"),
        help="scratch: the rebuilt reference repository and server logs [build/bench]",
    )
    parser.add_argument(
        "--demo-repository",
        type=Path,
        default=Path("repository"),
        help="also bench the models of this repository when it exists [repository]",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="replace the text between <!-- bench:start --> and <!-- bench:end --> in this file",
    )
    parser.add_argument("--quick", action="store_true", help="seconds instead of minutes (a smoke run)")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only what the targets read: reference c=1 and c=64, demo models, scaling (minutes)",
    )
    parser.add_argument(
        "--http-workers",
        default=None,
        help="HTTP processes of the seqserve server and the floor (reference and demo phases), "
        "a number or auto [auto: as seqserve serve chooses]",
    )
    parser.add_argument(
        "--scaling-workers",
        default=None,
        help="HTTP worker counts of the scaling phase, e.g. 1,2 [1, 2, 4, ... up to the cores]",
    )
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per phase")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the closed-loop phases (best of N)")
    parser.add_argument("--concurrency", default=None, help="closed-loop concurrencies, e.g. 1,8,32,64")
    args = parser.parse_args(argv)
    if args.readme is not None and not args.readme.is_file():
        parser.error(f"--readme {args.readme}: no such file")

    from tqdm import tqdm

    overrides: dict[str, Any] = {"demo_repository": args.demo_repository}
    if args.seconds is not None:
        overrides["seconds"] = args.seconds
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.concurrency:
        overrides["concurrency"] = tuple(int(x) for x in args.concurrency.split(","))
    if args.http_workers is not None:
        overrides["http_workers"] = args.http_workers if args.http_workers == "auto" else int(args.http_workers)
    if args.scaling_workers:
        overrides["scaling_workers"] = tuple(int(x) for x in args.scaling_workers.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        config = Config.quick(args.work, **overrides)
    elif args.targets:
        config = Config.targets(args.work, **overrides)
    else:
        config = Config(out=args.work, **overrides)
    bar = tqdm(total=estimate_phases(config), unit="phase", dynamic_ncols=True)

    def progress(label: str) -> None:
        bar.set_description(label)
        bar.update(1)

    try:
        results = Bench(config, progress).run()
    finally:
        bar.close()
    from bench import report

    written = report.write(results, args.out, readme=args.readme)
    for path in written:
        print(f"wrote {path}")
    return 0


def estimate_phases(c: Config) -> int:
    demos = 0
    if c.demo_repository is not None and c.demo_repository.is_dir():
        demos = sum(1 for p in c.demo_repository.iterdir() if p.is_dir()) * 3
    encodings = 3 * len({max(c.concurrency), min(c.concurrency)}) if c.binary_check else 0
    scaling = c.rounds * len(c.scaling_workers) * len(c.scaling_per_request) if demos else 0
    return 4 + 2 * c.rounds * len(c.concurrency) + 2 * len(c.load_fractions) + encodings + demos + scaling
