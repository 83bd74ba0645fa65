"""`inference.GRPCInferenceService`: the Open Inference Protocol over gRPC, over the same registry,
validator, batcher and formatter as HTTP, and Triton's model repository extension over the same registry
methods as `service.api.repository`.

Each RPC takes the HTTP edge's path (`service.api.inference.serve`) in the same order: API key (not for
liveness and readiness), refuse while draining, resolve the model, read, validate, wait for the batcher,
answer; errors end the RPC through `service.grpc.status`, and inference is counted by gRPC status code.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
from grpc import aio

from service import __version__
from service.errors import Draining, InvalidInput, ModelNotReady, ServiceError, StreamingUnsupported, Unauthorized
from service.grpc import tensors
from service.grpc.forward import StreamForwarder
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.status import failure_for
from service.metrics import Metrics
from service.registry import ModelRegistry, ModelVersion
from service.streams.serving import apply_chunk, names_a_stream, v2_answer_parameters, v2_chunk, why_not
from service.v2_metadata import PLATFORMS
from service.validation import V2Request

SERVICE = "inference.GRPCInferenceService"
"""The service's full name in KServe's and Triton's protos; method paths are `/<SERVICE>/<rpc>`."""

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = aio.ServicerContext[Any, Any]


TRITON_STATES = {"ready": "READY", "loading": "LOADING", "unloading": "UNLOADING"}
"""Triton's state names, as the HTTP index gives them; every other state (failed, unloaded, only on disk) is
UNAVAILABLE."""

VERSION_PARAMETER = "version"
"""Load or unload parameter (string or int64): that version only, as HTTP's `.../versions/{version}/load`."""

IGNORED_PARAMETERS = frozenset({"unload_dependents"})
"""Parameters tritonclient sends that mean nothing here: no model depends on another."""


class InferenceServicer:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        api_key: bytes | None,
        request_timeout_seconds: float,
        admin_api_key: bytes | None = None,
        streams: StreamForwarder | None = None,
    ) -> None:
        """`streams`: where stream chunks go when this process does not hold the streams (`service.grpc.forward`)."""
        self._registry = registry
        self._streams = streams
        self._metrics = metrics
        self._api_key = api_key
        self._admin_key = admin_api_key if admin_api_key is not None else api_key
        self._timeout = request_timeout_seconds
        self.draining = False  # set by the server's begin_drain(); the registry's own flag counts too

    # -- health and metadata -------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        try:
            self._authorize(context)
            self._registry.resolve(request.name, request.version or None)
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.ModelReadyResponse(ready=not self._draining())

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        try:
            self._authorize(context)
        except ServiceError as exc:
            await _abort(context, exc)
        # NOTE: no extensions: binary_tensor_data is HTTP's; gRPC carries raw tensors in the core protocol.
        return pb.ServerMetadataResponse(name="seqserve", version=__version__, extensions=[])

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        try:
            self._authorize(context)
            versions = self._registry.model_versions(request.name)
            chosen = self._registry.lookup(request.name, request.version or None)
            if chosen.spec is None:
                raise chosen.not_ready()
        except ServiceError as exc:
            await _abort(context, exc)
        listed = [str(v) for v in sorted(versions)] if not request.version else [str(chosen.version)]
        runtime = chosen.runtime.name if chosen.runtime is not None else ""
        return tensors.model_metadata(request.name, listed, PLATFORMS.get(runtime, ""), chosen.spec)

    # -- inference -------------------------------------------------------------

    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        if self._streams is not None and self._streams.takes(request):
            return await self._streams.infer(request, context)  # checked, answered and counted where streams are
        started = time.perf_counter()
        labels = ("", "")
        code = grpc.StatusCode.CANCELLED  # unless it ends otherwise: the client went away
        try:
            try:
                self._authorize(context)
                if self._draining():
                    raise Draining("the server is shutting down; retry on another replica")
                model = self._registry.resolve(request.model_name, request.model_version or None)
                labels = (model.name, str(model.version))
                assert model.batcher is not None and model.validator is not None and model.formatter is not None
                known = model.formatter.v2_output_names()
                with model.batcher.reading():  # sheds before the request is converted and validated
                    document, binary = tensors.infer_document(request)
                parsed = model.validator.v2_document(document, known_outputs=known, binary=binary)
                sequence = tensors.infer_parameters(request)
                if names_a_stream(sequence):
                    answer = await self._stream_chunk(model, parsed, sequence, request, context)
                else:
                    outputs = await model.batcher.infer(parsed.sequences, timeout_seconds=self._timeout)
                    answer = tensors.infer_response(
                        model.name,
                        model.version,
                        parsed.id,
                        model.formatter.v2(outputs, parsed.outputs),
                        raw=bool(request.raw_input_contents),
                    )
            except Exception as exc:
                failure = failure_for(exc)
                code = failure.code
                await context.abort(failure.code, failure.details, failure.metadata)
            code = grpc.StatusCode.OK
            return answer
        finally:
            self._metrics.grpc_requests.labels(*labels, code.name).inc()
            if labels[0]:
                self._metrics.grpc_request_latency.labels(*labels).observe(time.perf_counter() - started)

    async def _stream_chunk(
        self,
        model: ModelVersion,
        parsed: V2Request,
        parameters: dict[str, Any],
        request: pb.ModelInferRequest,
        context: Context,
    ) -> pb.ModelInferResponse:
        """One chunk of a stream (Triton's sequence parameters), as the HTTP edge's V2 stream chunk."""
        assert model.formatter is not None
        streams = self._registry.streams
        if model.stream_batcher is None or streams is None:
            raise StreamingUnsupported(why_not(model))
        metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()}
        request_id = metadata.get("x-request-id", "")
        chunk = v2_chunk(parameters, parsed.sequences, request_id if isinstance(request_id, str) else "")
        answer = await apply_chunk(
            streams, self._registry, model, chunk, pinned=bool(request.model_version), timeout_seconds=self._timeout
        )
        response = tensors.infer_response(
            model.name,
            answer.version,
            parsed.id,
            model.formatter.v2([answer.output], parsed.outputs),
            raw=bool(request.raw_input_contents),
        )
        tensors.set_parameters(response.parameters, v2_answer_parameters(parameters, answer))
        return response

    # -- the model repository extension ---------------------------------------

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        """Every model version held or on disk, with Triton's state names; only the ready ones with `ready`."""
        try:
            self._authorize(context)
            rows = await self._registry.index()
        except ServiceError as exc:
            await _abort(context, exc)
        answer = pb.RepositoryIndexResponse()
        for row in rows:
            state = TRITON_STATES.get(row.state or "", "UNAVAILABLE")
            if state == "READY" or not request.ready:
                answer.models.add(name=row.name, version=str(row.version), state=state, reason=row.reason)
        return answer

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        """`registry.load_model`, or `load_version` with the `version` parameter; answered once loaded and
        warmed (or failed)."""
        try:
            self._authorize(context, admin=True)
            version = _version_parameter(request.parameters)
            if version is None:
                await self._registry.load_model(request.model_name)
            else:
                await self._registry.load_version(request.model_name, version)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        """`registry.unload_model`, or `unload_version` with the `version` parameter; answered once the
        version(s) have answered their requests and are released."""
        try:
            self._authorize(context, admin=True)
            version = _version_parameter(request.parameters)
            if version is None:
                await self._registry.unload_model(request.model_name)
            else:
                await self._registry.unload_version(request.model_name, version)
        except ServiceError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # -- helpers ---------------------------------------------------------------

    def ready(self) -> bool:
        """Ready for inference: the registry's readiness (models loaded, not draining) and not draining here."""
        return self._registry.readiness()[0] and not self._draining()

    def _draining(self) -> bool:
        return self.draining or self._registry.draining

    def _authorize(self, context: Context, *, admin: bool = False) -> None:
        """`authorization: Bearer <key>` or `x-api-key: <key>` in the call's metadata, compared in constant
        time, as the HTTP edge checks its headers; a no-op when no key is configured. `admin`: the repository's
        load and unload, behind `admin_api_key` when set (the inference key is then refused), else the API key."""
        expected = self._admin_key if admin else self._api_key
        if expected is None:
            return
        metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()}
        given = metadata.get("x-api-key")
        if given is None:
            scheme, _, credentials = str(metadata.get("authorization", "")).partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else None
        if isinstance(given, str):
            given = given.encode()
        if given is None or not hmac.compare_digest(given, expected):
            raise Unauthorized("a valid API key is required (metadata authorization: Bearer <key>, or x-api-key)")


def _version_parameter(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> str | None:
    """The `version` parameter as text (None: the whole model); INVALID_ARGUMENT for parameters seqserve
    can't honour (Triton's `config` and `file:<version>/<name>` overrides: seqserve loads only what is on disk)."""
    version: str | None = None
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if name == VERSION_PARAMETER and choice in ("string_param", "int64_param"):
            version = str(getattr(parameter, choice))
        elif name == VERSION_PARAMETER:
            raise InvalidInput("parameter 'version': must be a string or int64")
        elif name not in IGNORED_PARAMETERS:
            raise InvalidInput(f"parameter '{name}' is not supported: seqserve loads a model from its directory")
    return version


async def _abort(context: Context, exc: BaseException) -> NoReturn:
    failure = failure_for(exc)
    await context.abort(failure.code, failure.details, failure.metadata)


def add_servicer(servicer: InferenceServicer, server: aio.Server, *, repository_api: bool = False) -> None:
    """Register `servicer`'s methods under `SERVICE`; the repository's load and unload only with
    `repository_api` (otherwise they are UNIMPLEMENTED, as the HTTP routes do not exist)."""

    def unary(
        method: Callable[[Request, Context], Awaitable[Response]],
        read: Callable[[bytes], Request],
        write: Callable[[Response], bytes],
    ) -> grpc.RpcMethodHandler[Request, Response]:
        return grpc.unary_unary_rpc_method_handler(method, request_deserializer=read, response_serializer=write)

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "ServerLive": unary(
            servicer.server_live, pb.ServerLiveRequest.FromString, pb.ServerLiveResponse.SerializeToString
        ),
        "ServerReady": unary(
            servicer.server_ready, pb.ServerReadyRequest.FromString, pb.ServerReadyResponse.SerializeToString
        ),
        "ModelReady": unary(
            servicer.model_ready, pb.ModelReadyRequest.FromString, pb.ModelReadyResponse.SerializeToString
        ),
        "ServerMetadata": unary(
            servicer.server_metadata, pb.ServerMetadataRequest.FromString, pb.ServerMetadataResponse.SerializeToString
        ),
        "ModelMetadata": unary(
            servicer.model_metadata, pb.ModelMetadataRequest.FromString, pb.ModelMetadataResponse.SerializeToString
        ),
        "ModelInfer": unary(
            servicer.model_infer, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
        ),
        "RepositoryIndex": unary(
            servicer.repository_index,
            pb.RepositoryIndexRequest.FromString,
            pb.RepositoryIndexResponse.SerializeToString,
        ),
    }
    if repository_api:
        handlers["RepositoryModelLoad"] = unary(
            servicer.repository_model_load,
            pb.RepositoryModelLoadRequest.FromString,
            pb.RepositoryModelLoadResponse.SerializeToString,
        )
        handlers["RepositoryModelUnload"] = unary(
            servicer.repository_model_unload,
            pb.RepositoryModelUnloadRequest.FromString,
            pb.RepositoryModelUnloadResponse.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
