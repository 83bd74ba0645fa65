"""Read a request body under the size limit; its JSON is parsed when first asked for."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect

from service.errors import Abandoned, InvalidJSON, PayloadTooLarge, UnsupportedMediaType

# Open Inference Protocol binary tensor extension: the JSON header's length;
# tensor bytes follow it in the body.
BINARY_HEADER = "inference-header-content-length"


class Body:
    def __init__(self, raw: bytes, binary: bytes = b"") -> None:
        self.raw = raw  # the JSON text
        self.binary = binary  # V2 binary tensor data after the JSON header

    @cached_property
    def document(self) -> Any:
        """The parsed JSON; raises `InvalidJSON`. Never parsed when the fast reader
        (`service.fast_read`) takes the body."""
        return parse_json(self.raw)


async def read_body(request: Request, limit: int, *, binary_extension: bool = False) -> Body:
    """The parsed body; raises 415, 413 or 400 class errors."""
    header_length = request.headers.get(BINARY_HEADER) if binary_extension else None
    check_content_type(request.headers.get("content-type"), header_length)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    received = bytearray()
    try:
        async for chunk in request.stream():
            received += chunk
            if len(received) > limit:
                raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
    except ClientDisconnect:  # the client left mid-body, or its body timed out (the protocol answered 408)
        raise Abandoned("the client went away before its body was read") from None
    return split_body(bytes(received), header_length)


def check_content_type(content_type: str | None, header_length: str | None) -> None:
    """Raise 415 unless the body is JSON: no content type, `application/json` or `+json`; a binary tensor
    body (`header_length`, the V2 extension's header, given) may have any."""
    if content_type is not None and header_length is None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise UnsupportedMediaType(f"content type {media_type!r} is not supported; send application/json")


def split_body(raw: bytes, header_length: str | None) -> Body:
    """A whole body: all JSON, or (`header_length` given) its JSON header and the binary tensor data after it."""
    if header_length is None:
        return Body(raw)
    if not header_length.isdigit() or not 0 < int(header_length) <= len(raw):
        raise InvalidJSON(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(raw)} bytes")
    split = int(header_length)
    return Body(raw[:split], raw[split:])


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
