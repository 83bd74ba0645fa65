"""Each answer leaves the process in one write: its head never goes out without its body.

uvicorn writes a response's status line and headers, then its body, as two
socket writes. A replica killed between the two (`kill -9`, the OOM killer, a
node lost) leaves the load balancer with a 200 head and no body: the head has
already been passed on, so nginx cannot retry the request elsewhere and the
client sees a truncated answer. Held until the body, the head goes out with it:
a replica that dies first has sent nothing, and the load balancer retries the
request on another one.

`CoalescingHttpToolsProtocol` is uvicorn's httptools protocol over a transport
that holds a written response head (`HTTP/1.1 ...` up to its blank line, not
an interim `1xx`) until the next write or close. uvicorn writes each head in
one call, so the head is always whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class CoalescingTransport:
    """A transport that writes a response head together with whatever is written next."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if not self._head and _is_final_head(data):
            self._head = data
            return
        if self._head:
            data, self._head = self._head + data, b""
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._head:
            head, self._head = self._head, b""
            self._transport.write(head)

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def _is_final_head(data: bytes) -> bool:
    # A final response's head: not "HTTP/1.1 1xx" (100 Continue goes out at once).
    return data.startswith(_HEAD_START) and data.endswith(_HEAD_END) and data[9:10] != b"1"


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]
