"""Stream chunks over gRPC on an HTTP process that does not hold the streams: passed whole to the one that does.

Without a shared state store (`state_url`) every stream lives in the first HTTP process. Every process serves
gRPC on the same port (the kernel spreads connections among them); on the others, a ModelInfer that names a
stream (a `sequence_id` parameter) goes unchanged to the first process's gRPC server on a Unix socket. That
process checks the key, answers and counts the call; its status, details and seqserve's trailing metadata come
back as they were. HTTP stream requests take the same way (`service.api.direct`).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from service.errors import StateUnavailable
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.status import ERROR_CODE_KEY, RETRY_AFTER_KEY, failure_for

SEQUENCE_ID = "sequence_id"
"""The parameter that makes a ModelInfer a stream chunk (Triton's sequence batcher's)."""

FORWARDED_METADATA = frozenset({"authorization", "x-api-key", "x-request-id"})
"""What of the caller's metadata the first process reads: the API key and the request id."""

FORWARDED_TRAILERS = frozenset({ERROR_CODE_KEY, RETRY_AFTER_KEY})

TIMEOUT_MARGIN_SECONDS = 5.0
"""Beyond the request timeout, which the first process applies itself: its answer, even a timeout, comes back."""


class StreamForwarder:
    """The first HTTP process's gRPC server, reached over its Unix socket at `path`, for stream chunks."""

    def __init__(self, path: str, request_timeout_seconds: float) -> None:
        self._target = f"unix:{path}"
        self._timeout = request_timeout_seconds + TIMEOUT_MARGIN_SECONDS
        self._channel: aio.Channel | None = None
        self._infer: Any = None

    @staticmethod
    def takes(request: pb.ModelInferRequest) -> bool:
        """Whether the call names a stream (as the HTTP edge forwards a V2 body that holds `sequence_id`); the
        first process judges the parameter's value."""
        return SEQUENCE_ID in request.parameters

    async def infer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        if self._infer is None:
            unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
            self._channel = aio.insecure_channel(self._target, options=unlimited)
            self._infer = self._channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
        metadata = tuple(
            (key, value) for key, value in context.invocation_metadata() or () if key.lower() in FORWARDED_METADATA
        )
        try:
            answer: pb.ModelInferResponse = await self._infer(request, metadata=metadata, timeout=self._timeout)
        except aio.AioRpcError as exc:
            trailers = tuple((k, v) for k, v in exc.trailing_metadata() or () if k in FORWARDED_TRAILERS)
            if not any(key == ERROR_CODE_KEY for key, _ in trailers):  # not the first process's answer
                why = f"the HTTP process that holds the streams did not answer ({exc.code().name}: {exc.details()})"
                failure = failure_for(StateUnavailable(why))
                await context.abort(failure.code, failure.details, failure.metadata)
            await context.abort(exc.code() or grpc.StatusCode.UNKNOWN, exc.details() or "", trailers)
        return answer

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
