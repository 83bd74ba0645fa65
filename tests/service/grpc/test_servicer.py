"""The gRPC server in process, over a real registry: drain (in-flight RPCs finish, new ones are refused),
and the errors a real server only shows under load (overload, timeout) or by a bug, raised by the
batcher on purpose; plus the status table itself."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service import errors
from service.grpc import GrpcServer, start_grpc_server
from service.grpc.status import STATUS, failure_for
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from tests.service.conftest import BuiltRepository

Check = Callable[[ModelRegistry, GrpcServer, service_pb2_grpc.GRPCInferenceServiceStub], Awaitable[None]]


def with_server(repository: BuiltRepository, check: Check) -> None:
    async def scenario() -> None:
        settings = Settings(repository=repository.path, api_key=None)
        metrics = Metrics()
        registry = ModelRegistry(settings, metrics)
        registry.start()
        server: GrpcServer | None = None
        try:
            while not registry.readiness()[0]:
                await asyncio.sleep(0.01)
            server = await start_grpc_server(registry, settings, metrics, 0)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await check(registry, server, service_pb2_grpc.GRPCInferenceServiceStub(channel))
        finally:
            if server is not None:
                await server.stop(5.0)
            await registry.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def text_request(*texts: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="text")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)]).contents.bytes_contents.extend(
        t.encode() for t in texts
    )
    return request


def test_draining_refuses_new_inference_and_lets_in_flight_finish(
    test_repository: BuiltRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def check(
        registry: ModelRegistry, server: GrpcServer, stub: service_pb2_grpc.GRPCInferenceServiceStub
    ) -> None:
        batcher = registry.resolve("text").batcher
        assert batcher is not None
        computed, release = asyncio.Event(), asyncio.Event()
        infer = batcher.infer

        async def held(*args: Any, **kwargs: Any) -> list[np.ndarray]:
            answer = await infer(*args, **kwargs)
            computed.set()
            await release.wait()  # answered by the batcher, not yet sent: in flight when the drain begins
            return answer

        monkeypatch.setattr(batcher, "infer", held)
        in_flight = asyncio.ensure_future(stub.ModelInfer(text_request("anna")))
        await computed.wait()
        registry.begin_drain()  # as the runner does on SIGTERM, then
        server.begin_drain()
        assert not (await stub.ServerReady(service_pb2.ServerReadyRequest())).ready
        assert (await stub.ServerLive(service_pb2.ServerLiveRequest())).live
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ModelInfer(text_request("bob"))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("retry-after", "1") in tuple(raised.value.trailing_metadata() or ())
        assert ("seqserve-error-code", "draining") in tuple(raised.value.trailing_metadata() or ())
        release.set()
        answer = await in_flight
        assert [output.name for output in answer.outputs] == ["probabilities", "label", "logits"]

    with_server(test_repository, check)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.Overloaded("model text has 1024 sequences queued"), grpc.StatusCode.UNAVAILABLE),
        (errors.RequestTimeout("no answer within 30 s"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.PayloadTooLarge("more time steps than the queue holds"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_what_the_batcher_raises_ends_the_rpc_with_its_code(
    test_repository: BuiltRepository, monkeypatch: pytest.MonkeyPatch, error: Exception, code: grpc.StatusCode
) -> None:
    async def check(
        registry: ModelRegistry, server: GrpcServer, stub: service_pb2_grpc.GRPCInferenceServiceStub
    ) -> None:
        batcher = registry.resolve("text").batcher
        assert batcher is not None

        async def refuse(*args: Any, **kwargs: Any) -> list[np.ndarray]:
            raise error

        monkeypatch.setattr(batcher, "infer", refuse)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ModelInfer(text_request("anna"))
        assert raised.value.code() == code
        if isinstance(error, errors.ServiceError):
            assert raised.value.details() == error.message
        else:  # the traceback goes to the log, an error id to the client
            assert (raised.value.details() or "").startswith("internal server error (error id ")
        retry = ("retry-after", "1") in tuple(raised.value.trailing_metadata() or ())
        assert retry == isinstance(error, errors.RetryableError)

    with_server(test_repository, check)


def test_every_domain_error_has_a_status_and_none_is_a_server_fault_but_a_failed_batch() -> None:
    leaves: list[type[errors.ServiceError]] = []
    pending: list[type[errors.ServiceError]] = [errors.ServiceError]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if not cls.__subclasses__():
            leaves.append(cls)
    for cls in leaves:
        exc = errors.InferenceFailed("message", "id") if cls is errors.InferenceFailed else cls("message")
        code = failure_for(exc).code
        if cls is errors.InferenceFailed:
            assert code == grpc.StatusCode.INTERNAL
        else:
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), cls
    assert STATUS[errors.RetryableError] == grpc.StatusCode.UNAVAILABLE


def test_a_port_in_use_is_an_os_error(test_repository: BuiltRepository) -> None:
    async def scenario() -> None:
        settings = Settings(repository=test_repository.path)
        metrics = Metrics()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError, match="could not listen"):
                await start_grpc_server(ModelRegistry(settings, metrics), settings, metrics, taken.getsockname()[1])

    asyncio.run(scenario())
