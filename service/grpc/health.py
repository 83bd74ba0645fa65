"""`grpc.health.v1.Health` (grpcio-health-checking's messages), for Kubernetes' native gRPC probe and
grpc_health_probe: SERVING exactly when the HTTP `/readyz` answers 200 (models loaded, not draining).

`Check` answers for the whole server (service "") and for `inference.GRPCInferenceService` alike; any other
service is NOT_FOUND, as the protocol asks. `Watch` is not served (UNIMPLEMENTED): probes only `Check`.
No API key: a probe carries none, as `/readyz` needs none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]  # its .pyi ships without py.typed

from service.grpc.servicer import SERVICE

HEALTH_SERVICE = "grpc.health.v1.Health"


class HealthServicer:
    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    async def check(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        serving = (
            health_pb2.HealthCheckResponse.SERVING if self._ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return health_pb2.HealthCheckResponse(status=serving)


def add_health(servicer: HealthServicer, server: aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.check,
        request_deserializer=health_pb2.HealthCheckRequest.FromString,
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": handler}),))
