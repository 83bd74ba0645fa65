"""Where stream state lives between chunks: the record, the store interface, and the in-process store.

A store keeps one `StreamRecord` per stream key (`<model>/<stream id>`). Every change is a
compare-and-set on the record's `(epoch, position)`, so that of two requests applying a chunk at
the same step, exactly one succeeds: a chunk is applied once, or refused. Ended and expired
streams stay as tombstones (no state) for `retention_seconds`, so that a retried last chunk is
answered from its cached answer and any other chunk is told why its stream is gone.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Protocol

from service.errors import TooManyStreams

Status = Literal["live", "ended", "expired"]


@dataclass(frozen=True)
class StreamRecord:
    model: str
    version: int
    epoch: str
    """Random per start: a restarted stream never takes a late commit meant for its previous run."""
    position: int
    """The next step the stream expects: steps applied so far."""
    state: bytes
    """Recurrent state after `position` steps, float32 `[S]` (empty for a tombstone)."""
    touched: float
    """Wall-clock time (time.time()) of the last change: replicas share it through Redis."""
    last_offset: int
    """Where the last applied chunk started,"""
    last_digest: bytes
    """a digest of its content and flags,"""
    last_answer: bytes
    """and its packed answer (float32): a retry of that chunk is answered with it, not applied again."""
    status: Status = "live"
    last_request: str = ""
    """The X-Request-ID of the last applied chunk (nginx sends the same one on each of its retries): a chunk
    sent without an offset is known as a retry by it."""

    def tombstone(self, status: Status, now: float) -> StreamRecord:
        return dataclasses.replace(self, status=status, state=b"", touched=now)


Expect = tuple[str, int] | None
"""What a change expects to find: the stream's `(epoch, position)`, or None: no live stream under the key."""


class StateStore(Protocol):
    """Stream records by key. Every method is a coroutine: the Redis store awaits the network."""

    kind: Literal["memory", "redis"]

    async def get(self, key: str) -> StreamRecord | None:
        """The record under `key` (live or a tombstone), or None."""
        ...

    async def put(self, key: str, record: StreamRecord, expect: Expect, *, now: float) -> bool:
        """Store `record` if the current one matches `expect`; False (nothing changed) if not. A live record
        that takes the place of no live one counts against the live-stream limit: `TooManyStreams` at it."""
        ...

    async def expire_idle(self, now: float) -> int:
        """Turn live streams idle past the idle timeout into tombstones, forget old tombstones; how many expired."""
        ...

    async def live(self) -> int:
        """Live streams now."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """Stream state in this process: fast, bounded (live streams and tombstones), lost when the process ends."""

    kind: Literal["memory", "redis"] = "memory"

    def __init__(self, *, max_streams: int, idle_seconds: float, retention_seconds: float) -> None:
        self._max_streams = max_streams
        self._idle_seconds = idle_seconds
        self._retention_seconds = retention_seconds
        self._live: OrderedDict[str, StreamRecord] = OrderedDict()  # least recently touched first
        self._gone: OrderedDict[str, StreamRecord] = OrderedDict()  # tombstones, oldest first

    async def get(self, key: str) -> StreamRecord | None:
        return self._live.get(key) or self._gone.get(key)

    async def put(self, key: str, record: StreamRecord, expect: Expect, *, now: float) -> bool:
        current = self._live.get(key)
        if expect is None:
            if current is not None:
                return False
            if record.status == "live" and len(self._live) >= self._max_streams:
                raise TooManyStreams(f"{len(self._live)} live streams, the limit (max_streams); retry later")
        elif current is None or (current.epoch, current.position) != expect:
            return False
        self._live.pop(key, None)
        self._gone.pop(key, None)
        if record.status == "live":
            self._live[key] = record
        else:
            self._gone[key] = record
            while len(self._gone) > self._max_streams:
                self._gone.popitem(last=False)
        return True

    async def expire_idle(self, now: float) -> int:
        expired = 0
        while self._live:
            key, record = next(iter(self._live.items()))
            if now - record.touched < self._idle_seconds:
                break
            del self._live[key]
            self._gone[key] = record.tombstone("expired", now)
            expired += 1
        while self._gone:
            key, record = next(iter(self._gone.items()))
            if now - record.touched < self._retention_seconds:
                break
            del self._gone[key]
        return expired

    async def live(self) -> int:
        return len(self._live)

    async def close(self) -> None:
        self._live.clear()
        self._gone.clear()


def wall_clock() -> float:
    """Seconds since the epoch: the clock records carry, comparable across replicas."""
    return time.time()
