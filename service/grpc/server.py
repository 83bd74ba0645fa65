"""The gRPC server beside uvicorn, on the same event loop: started once the registry is, drained with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from grpc import aio

from service.grpc.forward import StreamForwarder
from service.grpc.health import HealthServicer, add_health
from service.grpc.servicer import InferenceServicer, add_servicer
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)


class GrpcServer:
    """A started `grpc.aio` server serving `inference.GRPCInferenceService`; `port` is the one it bound."""

    def __init__(
        self, server: aio.Server, servicer: InferenceServicer, port: int, forwarder: StreamForwarder | None = None
    ) -> None:
        self._server = server
        self._servicer = servicer
        self._forwarder = forwarder
        self.port = port

    def begin_drain(self) -> None:
        """Readiness off and new inference refused (UNAVAILABLE `draining`) at once; in-flight RPCs go on."""
        self._servicer.draining = True

    async def stop(self, grace_seconds: float | None) -> None:
        """Refuse new RPCs, give in-flight ones `grace_seconds` to finish (None: no limit), then cancel them.
        Safe to call again."""
        self.begin_drain()
        await self._server.stop(grace_seconds)
        if self._forwarder is not None:
            await self._forwarder.close()


async def start_grpc_server(
    registry: ModelRegistry,
    settings: Settings,
    metrics: Metrics,
    port: int,
    *,
    shared: SharedPort | None = None,
) -> GrpcServer:
    """Listen on `settings.host`:`port` (0: a free port, see `GrpcServer.port`) on the running event loop;
    raises OSError when it can't. `shared`: this process is one of several HTTP processes on the port.

    Messages are limited to `settings.max_body_bytes` both ways: a larger request ends RESOURCE_EXHAUSTED
    before it is read, as a larger HTTP body gets 413.
    """
    limit = settings.max_body_bytes
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),  # answers are bounded by the request's sequences
            # NOTE: grpcio listens with SO_REUSEPORT by default: a second server on a port one already holds
            # would start without error and the kernel would share the connections between them (two seqserve
            # processes answering each other's clients). Off, a taken port fails the start as uvicorn's does.
            # The HTTP processes of one server share it on purpose; their parent holds the port for them.
            ("grpc.so_reuseport", 1 if shared is not None else 0),
        ]
    )
    streams_socket = shared.streams_socket if shared is not None else None
    holds_streams = shared is not None and shared.holds_streams
    forwarder = None
    if streams_socket is not None and not holds_streams:
        forwarder = StreamForwarder(streams_socket, settings.request_timeout_seconds)
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
    admin_key = settings.admin_api_key.get_secret_value().encode() if settings.admin_api_key is not None else None
    servicer = InferenceServicer(
        registry,
        metrics,
        api_key=api_key,
        admin_api_key=admin_key,
        request_timeout_seconds=settings.request_timeout_seconds,
        streams=forwarder,
    )
    add_servicer(servicer, server, repository_api=settings.repository_api)
    add_health(HealthServicer(servicer.ready), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # grpcio's "Failed to bind"; older versions returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"gRPC: could not listen on {host}:{port} (in use?)")
    if streams_socket is not None and holds_streams:
        try:
            server.add_insecure_port(f"unix:{streams_socket}")
        except RuntimeError as exc:
            raise OSError(f"gRPC: could not listen on {streams_socket}: {exc}") from exc
    await server.start()
    log.info("gRPC (Open Inference Protocol) listening on %s:%d", host, bound)
    return GrpcServer(server, servicer, bound, forwarder)


@dataclass(frozen=True)
class SharedPort:
    """gRPC in one of several HTTP processes on one port. `streams_socket`: the Unix socket where the first
    process takes the others' stream chunks (None: streams are kept in the state store and any process serves
    them); `holds_streams`: this is the first process, which listens there."""

    streams_socket: str | None
    holds_streams: bool
