"""The one table from domain errors to gRPC status codes, as `service.api.errors` is for HTTP."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import grpc

from service import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidJSON: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LoadFailed: grpc.StatusCode.INVALID_ARGUMENT,  # HTTP's 400, as Triton answers a failed load
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.VersionNotFound: grpc.StatusCode.NOT_FOUND,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.InferenceFailed: grpc.StatusCode.INTERNAL,
    errors.StreamingUnsupported: grpc.StatusCode.INVALID_ARGUMENT,
    errors.StreamNotFound: grpc.StatusCode.NOT_FOUND,
    errors.StreamConflict: grpc.StatusCode.FAILED_PRECONDITION,  # HTTP's 409: the stream stands elsewhere
    # Overloaded, Draining, ModelNotReady, ServerNotReady, TooManyStreams, StateUnavailable: the client may
    # retry (after `retry-after`).
    errors.RetryableError: grpc.StatusCode.UNAVAILABLE,
    errors.RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
}

ERROR_CODE_KEY = "seqserve-error-code"
"""Trailing metadata: the error's stable `code` (`invalid_input`, `overloaded`, ...), as in HTTP error bodies."""

RETRY_AFTER_KEY = "retry-after"
"""Trailing metadata of a retryable error: seconds to wait, as HTTP's `Retry-After`."""


@dataclass(frozen=True)
class Failure:
    """How an RPC that raised ends: its status code, details and trailing metadata."""

    code: grpc.StatusCode
    details: str
    metadata: tuple[tuple[str, str], ...] = ()


def failure_for(exc: BaseException) -> Failure:
    """The status of an RPC that raised `exc`. A `ServiceError` gets its code from `STATUS`; `Abandoned` is
    CANCELLED (nobody reads it); anything else is a bug: INTERNAL, its traceback logged under an error id
    that the details name."""
    if isinstance(exc, errors.ServiceError):
        metadata = [(ERROR_CODE_KEY, exc.code)]
        if isinstance(exc, errors.RetryableError):
            metadata.append((RETRY_AFTER_KEY, str(exc.retry_after_seconds)))
        return Failure(_status_for(exc), exc.message, tuple(metadata))
    if isinstance(exc, errors.Abandoned):
        return Failure(grpc.StatusCode.CANCELLED, "the client went away")
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error (error id %s)", error_id, exc_info=exc)
    details = f"internal server error (error id {error_id})"
    return Failure(grpc.StatusCode.INTERNAL, details, ((ERROR_CODE_KEY, "internal"),))


def _status_for(exc: errors.ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL
