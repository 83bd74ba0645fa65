"""Run the app on uvicorn, with drain-on-SIGTERM.

On the first SIGTERM (or SIGINT) readiness turns off at once and new
inference requests get 503 `draining`; queued and in-flight requests finish;
then uvicorn closes the listener, lets the answers go out and exits with
status 0, all within the grace period. A second signal stops at once. If the
drain itself raises, the error is logged with its traceback, what is still
queued is answered 503 `draining`, and the server exits all the same, with
status 1.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from service.grpc import GrpcServer, SharedPort, start_grpc_server
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from service.wire import ConnectionLimits, HttpProtocol, http_protocol

if TYPE_CHECKING:
    from service.queue_totals import QueueTable
    from service.workers import Peers

log = logging.getLogger(__name__)

FD_RESERVE = 256
"""File descriptors kept beside the connections: the listener, model files, logs, runtime threads."""


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        registry: ModelRegistry,
        grace_period_seconds: float,
        *,
        settings: Settings,
        metrics: Metrics,
        peers: Peers | None = None,
        grpc_shared: SharedPort | None = None,
    ) -> None:
        super().__init__(config)
        self._peers = peers
        self._grpc_shared = grpc_shared
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._grpc: GrpcServer | None = None
        self._failed = False
        self._grace = grace_period_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._draining = False
        self.drain_failed = False
        """Set when the drain after SIGTERM raised: the process then exits with status 1."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)
        if self._failed or self.drain_failed:
            sys.exit(1)  # after a clean shutdown, as uvicorn exits when its own port is taken

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup (the lifespan starts the registry, then the HTTP listener), then the gRPC server."""
        await super().startup(sockets)
        if self._peers is not None:
            self._publish_readiness()
        if not self.should_exit and self._settings.grpc_port:
            try:
                self._grpc = await start_grpc_server(
                    self._registry, self._settings, self._metrics, self._settings.grpc_port, shared=self._grpc_shared
                )
            except OSError as exc:  # the port is taken: stop, with the HTTP side, and exit 1
                log.error("%s", exc)
                self._failed = self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """gRPC stops first, its in-flight RPCs given what is left of the grace period; then uvicorn's shutdown."""
        if self._grpc is not None:
            await self._grpc.stop(max(1.0, float(self.config.timeout_graceful_shutdown or 1)))
        await super().shutdown(sockets)

    def _publish_readiness(self) -> None:
        """Write this process's readiness for the other HTTP workers, now and every `PUBLISH_SECONDS`."""
        from service.workers import PUBLISH_SECONDS

        assert self._peers is not None and self._loop is not None
        self._metrics.ready.set(1 if self._registry.local_readiness()[0] else 0)  # before the flag the others read
        self._peers.publish()
        if not self.should_exit:
            self._loop.call_later(PUBLISH_SECONDS, self._publish_readiness)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        # NOTE: a signal handler may interrupt any code; do the rest on the loop.
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, name: str) -> None:
        log.info("%s received: draining (readiness off, no new requests, grace %.1f s)", name, self._grace)
        protocol = getattr(self.config, "http_protocol_class", None)
        if isinstance(protocol, type) and issubclass(protocol, HttpProtocol):
            protocol.begin_drain(self.server_state.connections)
        if self._grpc is not None:
            self._grpc.begin_drain()
        self._registry.begin_drain()
        if self._peers is not None:
            self._peers.publish()
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        """Drain, then let uvicorn close; whatever the drain raises is logged and the server still exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        try:
            self._registry.begin_drain()
            if await self._registry.drain():
                log.info("drained: every queued request answered")
            else:
                log.warning("grace period over with requests still queued: answering them 503 draining")
                await self._stop_models(deadline)
        except Exception:
            self.drain_failed = True
            log.exception("draining failed: answering what is still queued 503 draining, then exiting with status 1")
            await self._stop_models(deadline)
        finally:
            if self._peers is not None:
                await self._wait_for_peers(deadline)
            # What is left of the grace period bounds uvicorn's wait for the answers to go out.
            self.config.timeout_graceful_shutdown = int(max(1.0, deadline - loop.time()))
            self.should_exit = True

    async def _wait_for_peers(self, deadline: float) -> None:
        """With several HTTP processes, keep listening (answering 503 draining) until every one has drained, within
        the grace period: a process that closed its socket first would have the kernel reset the connections
        queued on it, while the others still drain."""
        assert self._peers is not None
        loop = asyncio.get_running_loop()
        self._peers.mark_drained()
        while not self._peers.all_drained() and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def _stop_models(self, deadline: float) -> None:
        """Stop every batcher, answering what is still queued 503 `draining`; bounded, so the exit never waits on it."""
        remaining = max(1.0, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(self._registry.stop(), remaining)
        except Exception:
            self.drain_failed = True
            log.exception("stopping the models failed; exiting anyway")


def serve(
    settings: Settings,
    *,
    sockets: list[socket.socket] | None = None,
    peers: Callable[[ModelRegistry], Peers] | None = None,
    queues: QueueTable | None = None,
    forward_streams_to: str | None = None,
    grpc_shared: SharedPort | None = None,
) -> None:
    """Run the server in this process: on `sockets` when given (an HTTP worker), else on settings' host and port.
    `peers`: this worker's view of the others' readiness, given the registry. `queues`: the table where the HTTP
    processes count what they have queued. `forward_streams_to`: the Unix socket of the HTTP process that holds
    the streams, for this one to forward stream requests to. `grpc_shared`: gRPC's port is shared with the other
    HTTP processes (and where stream chunks go)."""
    from service.api import InferenceFastPath, create_app
    from service.api.direct import DirectInference

    app = create_app(settings, streams_forwarded=forward_streams_to is not None)
    fit_fd_limit(settings.max_connections)
    limits = ConnectionLimits(
        head_timeout_seconds=settings.head_timeout_seconds,
        body_timeout_seconds=settings.body_timeout_seconds,
        max_connections=settings.max_connections,
    )
    config = uvicorn.Config(
        InferenceFastPath(app),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=int(max(1.0, settings.grace_period_seconds)),
        timeout_keep_alive=math.ceil(settings.keep_alive_seconds),
        server_header=False,
        http=http_protocol(limits, DirectInference(app.state.seqserve, forward_streams_to=forward_streams_to)),
    )
    state = app.state.seqserve
    registry: ModelRegistry = state.registry
    view = peers(registry) if peers is not None else None
    registry.peers = view
    registry.queues = queues
    server = DrainingServer(
        config,
        registry,
        settings.grace_period_seconds,
        settings=settings,
        metrics=state.metrics,
        peers=view,
        grpc_shared=grpc_shared,
    )
    server.run(sockets=sockets)


def fit_fd_limit(max_connections: int) -> None:
    """Raise the soft limit on open files to fit `max_connections` (up to the hard limit); warn when it cannot:
    past it, accepting a connection fails before the connection limit can answer 503."""
    wanted = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft < wanted:
        log.warning(
            "open-file limit %d is below --max-connections %d + %d: connections past about %d will fail to be accepted",
            soft,
            max_connections,
            FD_RESERVE,
            soft - FD_RESERVE,
        )
