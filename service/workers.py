"""Several server processes on one HTTP port: `--http-workers N`.

One event loop parses HTTP, validates and answers every request; with a small
model that loop, not the model, is the limit, and it uses one core. With N
workers the parent process (this module) reserves the port, starts N server
processes that each listen on it with SO_REUSEPORT (the kernel spreads new
connections among them), and supervises them. Each worker is the whole server
of one process (`runner.serve`): its own event loop, its own batcher per model
version, its own copy of every model (the memory cost: N times the runtime's).

What holds across them:

- Limits: `max_queue` and `max_queued_tokens` hold for the sequences queued in
  all of them: each worker publishes its queues' counts into a table they share
  and admits against the sums (`service.queue_totals`), so one request may
  be as large, and the queue as full, as with one process. The CPU cores are
  divided among them for the batch workers (`share_cores`).
  Settings, the API key included, are the same in all.
- Metrics: prometheus_client's multiprocess mode; any worker's `/metrics`
  shows the sums over all of them (`service.metrics`).
- Readiness: each worker publishes its own into a shared array; `/readyz` is
  200 only when every worker is ready (`ModelRegistry.peers`).
- SIGTERM (or SIGINT) to the parent is passed to every worker, and each drains
  as a single server does; the parent exits 0 once all have, 1 if any failed.
  A worker that dies on its own takes readiness off, the others are drained
  and stopped, and the parent exits 1: the orchestrator restarts the whole.
- gRPC is served by every worker on its one port, held by the parent as the HTTP port is. Without a state
  store a ModelInfer that names a stream is passed to the first worker, as HTTP stream requests are
  (`service.grpc.forward`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from service.queue_totals import QueueTable, forget, queue_keys, table_size
from service.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 0.1
"""How often a worker writes its readiness into the shared array."""


PROCESS_BYTES = 150 << 20
"""A server process without its models, rounded up (a process serving the demo repository: ~130 MB RSS)."""


def worker_count(settings: Settings) -> tuple[int, str]:
    """The HTTP worker processes `settings` ask for, and why that many (0: one per CPU core; auto: see
    `auto_worker_count`)."""
    from service.runtime.cpu import cpu_cores

    if settings.http_workers == "auto":
        return auto_worker_count(settings, cpu_cores(), _available_memory(), _gpu_visible())
    if settings.http_workers:
        return settings.http_workers, "http_workers"
    return cpu_cores(), "http_workers=0: one per CPU core"


def auto_worker_count(settings: Settings, cores: int, memory: int | None, gpu: bool) -> tuple[int, str]:
    """`http_workers=auto`: one process per core (each HTTP process can use one core; measured on the demo models
    and the benchmark's BiLSTM on 2 cores, two processes served more than one), unless one process is what works
    (the repository API, a GPU), and no more than half of `memory` (bytes available, None: unknown) holds.
    Streams work with any count: without Redis the first process holds them and the others forward to it."""
    if settings.repository_api:
        return 1, "repository_api needs one process"
    if cores <= 1:
        return 1, "one CPU core"
    if gpu and settings.device != "cpu":
        return 1, "a GPU is visible: one process keeps one CUDA context and whole batches"
    if memory is None:
        return cores, f"one per CPU core ({cores})"
    per_process = PROCESS_BYTES + 2 * _model_bytes(settings.repository)
    fits = max(1, memory // 2 // per_process)
    if fits < cores:
        return fits, f"{fits} of {cores} cores: half the available memory holds {fits} at ~{per_process >> 20} MiB each"
    return cores, f"one per CPU core ({cores}; ~{per_process >> 20} MiB each)"


def _model_bytes(repository: Path) -> int:
    """Bytes of the model graphs under `repository` (what each process loads)."""
    total = 0
    for path in repository.rglob("*"):
        if path.suffix in (".onnx", ".pt", ".data") and path.is_file():
            total += path.stat().st_size
    return total


def _available_memory() -> int | None:
    """Bytes this process can still use: the kernel's MemAvailable, less within a cgroup's memory limit."""
    available: int | None = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        root = Path("/sys/fs/cgroup")
        limit = (root / "memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int((root / "memory.current").read_text())
            available = room if available is None else min(available, room)
    return available


def _gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process (its device nodes; no runtime is imported)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def worker_settings(settings: Settings, count: int, port: int) -> Settings:
    """What each of `count` workers runs with: the HTTP port fixed (gRPC's is the same for all). The queue limits
    stay whole: the workers hold them together through the queue table (`service.queue_totals`)."""
    return settings.model_copy(update={"http_workers": count, "port": port})


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port with SO_REUSEPORT, so that each worker has one on the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve_workers(settings: Settings, count: int) -> int:
    """Run `count` worker processes on the port of `settings` until they end; the exit status."""
    # NOTE: bound, never listening: it holds the port (and picks it when 0) while connections go only to the
    # workers' listening sockets on it.
    try:
        reserved = listening_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    port = int(reserved.getsockname()[1])
    reserved_grpc = None
    if settings.grpc_port:
        try:
            reserved_grpc = listening_socket(settings.host, settings.grpc_port)
        except OSError as exc:
            log.error("gRPC: cannot listen on %s:%d: %s", settings.host, settings.grpc_port, exc)
            reserved.close()
            return 1
    metrics_dir = tempfile.mkdtemp(prefix="seqserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers, read at their start
    # NOTE: without Redis the first worker holds every stream; the others forward stream requests to it here
    streams = os.path.join(metrics_dir, "streams.sock") if settings.state_url is None else None
    grpc_streams = os.path.join(metrics_dir, "grpc-streams.sock") if streams is not None else None
    context = multiprocessing.get_context("spawn")
    flags = context.RawArray("b", count)
    drained = context.RawArray("b", count)  # set by each worker once drained, and here once it ended
    keys = queue_keys(settings.repository)
    queue_cells = context.RawArray("q", table_size(keys, count))
    workers: list[multiprocessing.process.BaseProcess] = []
    stopping = False
    signalled = 0  # workers started when the first signal came: those started later get it once they are

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping, signalled
        if not stopping:
            stopping, signalled = True, len(workers)
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        for index in range(count):
            process = context.Process(
                target=_worker_main,
                args=(
                    worker_settings(settings, count, port),
                    index,
                    count,
                    flags,
                    drained,
                    (queue_cells, keys),
                    os.getpid(),
                    (streams, grpc_streams),
                ),
                name=f"seqserve-http-{index}",
            )
            process.start()
            workers.append(process)
        for late in workers[signalled:] if stopping else []:
            assert late.pid is not None
            os.kill(late.pid, signal.SIGTERM)
        log.info("serving on http://%s:%d with %d HTTP worker processes", settings.host, port, count)
        running: dict[int, multiprocessing.process.BaseProcess] = {worker.sentinel: worker for worker in workers}
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                assert isinstance(sentinel, int)
                worker = running.pop(sentinel)
                worker.join()
                index = workers.index(worker)
                flags[index] = 0
                drained[index] = 1  # nobody waits for a worker that has ended
                forget(queue_cells, count, index)  # nor counts what it had queued
                _mark_dead(worker.pid)
                clean = worker.exitcode == 0 or (stopping and worker.exitcode in (-signal.SIGTERM, -signal.SIGINT))
                if not clean:
                    failed = True
                    log.error("HTTP worker %d exited with %s", index, worker.exitcode)
                if not stopping and (not clean or running):
                    log.error("HTTP worker %d ended on its own: stopping the others", index)
                    forward(signal.SIGTERM, None)
                    failed = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in workers:
            if worker.exitcode is None:
                worker.kill()
                worker.join()
        reserved.close()
        if reserved_grpc is not None:
            reserved_grpc.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _worker_main(
    settings: Settings,
    index: int,
    count: int,
    flags: Any,
    drained: Any,
    queues: tuple[Any, list[str]],
    parent: int,
    streams: tuple[str | None, str | None],
) -> None:
    """A worker process: the whole server, on the shared port, publishing its readiness. `queues`: the queue
    table's cells and keys. `streams`: the Unix sockets where the first worker takes the others' stream requests,
    HTTP's and gRPC's (None: they are served where they arrive)."""
    os.setpgid(0, 0)  # signals come from the parent only (a terminal's Ctrl-C reaches the parent, which passes it on)
    _end_with(parent)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [http {index}]: %(message)s",
    )
    from service.grpc import SharedPort
    from service.runner import serve
    from service.runtime.cpu import share_cores

    share_cores(count)
    http_streams, grpc_streams = streams
    sockets = [listening_socket(settings.host, settings.port)]
    if http_streams is not None and index == 0:
        sockets.append(_unix_listener(http_streams))
    serve(
        settings,
        sockets=sockets,
        peers=lambda registry: Peers(flags, index, registry.local_readiness, drained),
        queues=QueueTable(*queues, index, count),
        forward_streams_to=http_streams if index > 0 else None,
        grpc_shared=SharedPort(grpc_streams, holds_streams=index == 0),
    )
    sys.exit(0)


def _unix_listener(path: str) -> socket.socket:
    """A Unix socket at `path` (readable by this user only: the server's own processes forward to it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    return sock


PR_SET_PDEATHSIG = 1


def _end_with(parent: int) -> None:
    """SIGTERM this worker when its parent dies (Linux), so that it drains and ends rather than keep serving on the
    port as an orphan: a parent killed by SIGKILL (an OOM kill, a supervisor's last resort) passes no signal on."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Peers:
    """Readiness across the workers: this worker's, published into `flags[index]`, and the others', read there."""

    def __init__(
        self, flags: Any, index: int, local: Callable[[], tuple[bool, list[str]]], drained: Any = None
    ) -> None:
        self._flags = flags
        self._index = index
        self._local = local
        self._drained = drained  # per worker: 1 once it has drained (or ended); None: not shared

    def publish(self) -> None:
        self._flags[self._index] = 1 if self._local()[0] else 0

    def mark_drained(self) -> None:
        if self._drained is not None:
            self._drained[self._index] = 1

    def all_drained(self) -> bool:
        return self._drained is None or all(self._drained)

    def __call__(self) -> list[str]:
        """Why the other workers are not ready; empty when they all are. This worker's own readiness is published
        first: a worker that answers ready while its flag still says otherwise (it is rewritten every
        PUBLISH_SECONDS) would have the others answer not ready right after it."""
        self.publish()
        return [f"HTTP worker {i} not ready" for i, ready in enumerate(self._flags) if i != self._index and not ready]
