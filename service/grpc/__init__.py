"""The Open Inference Protocol (KServe V2) over gRPC, beside the HTTP edge on the same event loop.

`start_grpc_server(registry, settings, metrics, port)` serves `inference.GRPCInferenceService`
(ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer; RepositoryIndex, and with
`repository_api` RepositoryModelLoad and RepositoryModelUnload) over the same model registry, validation,
batchers and formatting as HTTP, and `grpc.health.v1.Health` (Check) for probes;
`GrpcServer.begin_drain()` and `stop(grace)` follow the HTTP server's drain. Only this package imports grpc.
"""

from service.grpc.server import GrpcServer, SharedPort, start_grpc_server

__all__ = ["GrpcServer", "SharedPort", "start_grpc_server"]
