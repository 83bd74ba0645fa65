"""The gRPC server beside uvicorn, on the same event loop: started once the registry is, drained with it."""

from __future__ import annotations

import logging

from grpc import aio

from service.grpc.health import HealthServicer, add_health
from service.grpc.servicer import InferenceServicer, add_servicer
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)


class GrpcServer:
    """A started `grpc.aio` server serving `inference.GRPCInferenceService`; `port` is the one it bound."""

    def __init__(self, server: aio.Server, servicer: InferenceServicer, port: int) -> None:
        self._server = server
        self._servicer = servicer
        self.port = port

    def begin_drain(self) -> None:
        """Readiness off and new inference refused (UNAVAILABLE `draining`) at once; in-flight RPCs go on."""
        self._servicer.draining = True

    async def stop(self, grace_seconds: float | None) -> None:
        """Refuse new RPCs, give in-flight ones `grace_seconds` to finish (None: no limit), then cancel them.
        Safe to call again."""
        self.begin_drain()
        await self._server.stop(grace_seconds)


async def start_grpc_server(registry: ModelRegistry, settings: Settings, metrics: Metrics, port: int) -> GrpcServer:
    """Listen on `settings.host`:`port` (0: a free port, see `GrpcServer.port`) on the running event loop;
    raises OSError when it can't.

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
            ("grpc.so_reuseport", 0),
        ]
    )
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
    admin_key = settings.admin_api_key.get_secret_value().encode() if settings.admin_api_key is not None else None
    servicer = InferenceServicer(
        registry,
        metrics,
        api_key=api_key,
        admin_api_key=admin_key,
        request_timeout_seconds=settings.request_timeout_seconds,
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
    await server.start()
    log.info("gRPC (Open Inference Protocol) listening on %s:%d", host, bound)
    return GrpcServer(server, servicer, bound)
