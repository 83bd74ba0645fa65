"""API key check: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.state import app_state
from service.errors import Unauthorized

# NOTE: declared for the OpenAPI schema only (`auto_error=False`: they never answer); the check
# itself is `require_api_key`. The app drops them from the schema when no key is configured.
_BEARER = HTTPBearer(scheme_name="bearer", description="Authorization: Bearer <key>", auto_error=False)
_HEADER = APIKeyHeader(name="X-API-Key", scheme_name="apiKey", description="X-API-Key: <key>", auto_error=False)


async def require_api_key(request: Request) -> None:
    """A no-op when no key is configured; the inference path (`inference.serve`) calls it directly.

    NOTE: async on purpose: FastAPI runs a plain `def` dependency in a worker thread.
    """
    check_key(request, app_state(request).api_key)


def check_key(request: Request, expected: bytes | None) -> None:
    """Raise `Unauthorized` unless the request carries `expected` (a no-op when it is None)."""
    if expected is not None:
        check_credentials(request.headers.get("x-api-key"), request.headers.get("authorization"), expected)


def check_credentials(api_key: str | None, authorization: str | None, expected: bytes) -> None:
    """Raise `Unauthorized` unless `X-API-Key` (`api_key`) or `Authorization: Bearer` carries `expected`."""
    given = api_key
    if given is None:
        scheme, _, credentials = (authorization or "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")


async def _declare_api_key(
    _bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
    _header: str | None = Security(_HEADER),
) -> None:
    """Checks nothing: its parameters put both headers into the schema."""


API_KEY_SCHEMA = Depends(_declare_api_key)
"""Both headers in the schema, no check: for the inference routes, whose path checks the key itself."""


async def _api_key_dependency(request: Request, _schema: None = API_KEY_SCHEMA) -> None:
    await require_api_key(request)


API_KEY = Depends(_api_key_dependency)
"""The dependency of every route behind the key: `require_api_key`, with both headers in the schema."""
