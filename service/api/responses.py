"""JSON answers serialised by orjson, NumPy arrays included; and V2 answers with binary tensor data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response

from service.api.body import BINARY_HEADER

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=_OPTIONS), status_code, headers, media_type="application/json")


def binary_response(header: Any, chunks: Sequence[bytes]) -> Response:
    """Open Inference Protocol binary tensor data extension: the JSON `header`, then the tensors' bytes,
    the JSON's length in `Inference-Header-Content-Length`."""
    head = orjson.dumps(header, option=_OPTIONS)
    return Response(
        b"".join((head, *chunks)),
        headers={BINARY_HEADER: str(len(head))},
        media_type="application/octet-stream",
    )
