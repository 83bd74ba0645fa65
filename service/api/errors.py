"""The one table from domain errors to HTTP statuses, and the one function that answers an error.

Every error answer has the shape `{"error": {"code": str, "message": str}}`,
except under /v2, where the Open Inference Protocol's `{"error": str}` (plus
`code`) keeps V2 clients able to read it. Tracebacks go to the log, never to
the client.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service import errors
from service.api.responses import json_response

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServiceError], int] = {
    errors.InvalidJSON: 400,
    errors.StreamingUnsupported: 400,
    errors.LoadFailed: 400,
    errors.Unauthorized: 401,
    errors.ModelNotFound: 404,
    errors.VersionNotFound: 404,
    errors.StreamNotFound: 404,
    errors.StreamConflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.InvalidInput: 422,
    errors.TooManyStreams: 429,
    errors.InferenceFailed: 500,
    errors.ModelNotReady: 503,
    errors.ServerNotReady: 503,
    errors.Overloaded: 503,
    errors.Draining: 503,
    errors.StateUnavailable: 503,
    errors.RequestTimeout: 504,
}

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before its answer


def error_answer(exc: BaseException, *, v2: bool) -> Response:
    """The answer to a request that raised `exc`, in the /v2 shape when `v2`.

    A `ServiceError` gets its status from `STATUS`, with `Retry-After` when it is retryable and
    `WWW-Authenticate` when a key is missing; `Abandoned` gets 499 (nobody reads it); anything
    else is a bug: 500, its traceback logged under an error id that the answer names.
    """
    if isinstance(exc, errors.ServiceError):
        headers: dict[str, str] = {}
        if isinstance(exc, errors.RetryableError):
            headers["Retry-After"] = str(exc.retry_after_seconds)
        if isinstance(exc, errors.Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        return error_response(_status_for(exc), exc.code, exc.message, headers, v2=v2)
    if isinstance(exc, errors.Abandoned):
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error (error id %s)", error_id, exc_info=exc)
    return error_response(500, "internal", f"internal server error (error id {error_id})", v2=v2)


def _status_for(exc: errors.ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, *, v2: bool = False
) -> Response:
    body = {"error": message, "code": code} if v2 else {"error": {"code": code, "message": message}}
    return json_response(body, status_code=status, headers=headers)


def is_v2(request: Request) -> bool:
    return request.url.path == "/v2" or request.url.path.startswith("/v2/")


def install_handlers(app: FastAPI) -> None:
    """Domain errors and bugs go through `error_answer`; FastAPI's own (no such route, a malformed
    path or query) are answered in the same shape."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_answer(exc, v2=is_v2(request))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "error"
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        message = exc.detail if isinstance(exc.detail, str) else phrase
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, dict(exc.headers or {}), v2=is_v2(request))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
        )
        return error_response(422, "invalid_request", problems or "invalid request", v2=is_v2(request))

    app.add_exception_handler(errors.ServiceError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_error)
