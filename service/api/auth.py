"""API key check: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.api.state import app_state
from service.errors import Unauthorized


async def require_api_key(request: Request) -> None:
    """FastAPI dependency; a no-op when no key is configured.

    NOTE: async on purpose: FastAPI runs a plain `def` dependency in a worker thread.
    """
    expected = app_state(request).api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = credentials.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")
