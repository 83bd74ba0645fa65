"""Read a request body under the size limit and parse it as JSON, fast."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import Request

from service.errors import InvalidJSON, PayloadTooLarge, UnsupportedMediaType


async def read_json(request: Request, limit: int) -> tuple[Any, bytes]:
    """The parsed body and its raw bytes; raises 415, 413 or 400 class errors."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(f"content type {media_type!r} is not supported; send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    raw = bytes(body)
    return parse_json(raw), raw


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise InvalidJSON("body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        first_error = exc
    # NOTE: Python clients send NaN and Infinity (json.dumps does); the standard
    # parser reads them so validation can answer 422 naming the element.
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidJSON(f"body is not valid JSON: {first_error}") from None
