"""Domain errors of the server, free of any web framework.

Each carries a stable machine-readable `code`; the HTTP edge maps each class
to a status code in one table (`service.api.errors`).
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a client may see; `message` is safe to show."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """The request's content is wrong; the message names the offending index."""

    code = "invalid_input"


class InvalidJSON(ServiceError):
    code = "invalid_json"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"


class Unauthorized(ServiceError):
    code = "unauthorized"


class ModelNotFound(ServiceError):
    code = "model_not_found"


class VersionNotFound(ServiceError):
    code = "version_not_found"


class LoadFailed(ServiceError):
    """A model version asked for could not be loaded; the message names each version and why.
    The versions already served are untouched."""

    code = "load_failed"


class RetryableError(ServiceError):
    """The server can't take this request now; the client may retry later."""

    retry_after_seconds: int = 1


class ModelNotReady(RetryableError):
    code = "model_not_ready"


class Overloaded(RetryableError):
    """The model's queue is full: the request was refused before queueing."""

    code = "overloaded"


class Draining(RetryableError):
    """The server is shutting down and accepts no new work."""

    code = "draining"


class ServerNotReady(RetryableError):
    """The server would not serve a request now: models still loading, one failed, or none at all."""

    code = "not_ready"


class StreamingUnsupported(ServiceError):
    """The model version cannot serve a stream chunk by chunk (a bidirectional model needs the whole sequence)."""

    code = "streaming_unsupported"


class StreamNotFound(ServiceError):
    """A chunk for a stream that is not live: never started, ended, or expired; the message says which."""

    code = "stream_not_found"


class StreamConflict(ServiceError):
    """A chunk that does not start where its stream stands (a duplicate that is not the last chunk, a gap, or a
    concurrent chunk of the same stream); the message names the stream and the step it expects."""

    code = "stream_conflict"

    def __init__(self, message: str, expected_offset: int | None = None) -> None:
        super().__init__(message)
        self.expected_offset = expected_offset


class TooManyStreams(RetryableError):
    """The live-stream limit is reached: a new stream is refused until one ends or expires."""

    code = "too_many_streams"


class StateUnavailable(RetryableError):
    """The stream state store (Redis) could not be reached; nothing was applied."""

    code = "state_unavailable"


class RequestTimeout(ServiceError):
    code = "timeout"


class Abandoned(Exception):
    """The caller went away before its answer (e.g. the client closed the connection); nobody reads it."""


class InferenceFailed(ServiceError):
    """The runtime failed on a batch; `error_id` ties the answer to the logged traceback."""

    code = "inference_failed"

    def __init__(self, message: str, error_id: str) -> None:
        super().__init__(f"{message} (error id {error_id})")
        self.error_id = error_id
