"""Stream state in Redis (`SEQSERVE_STATE_URL=redis://...`): every replica behind a load balancer serves
any stream's next chunk, and a replica that dies mid-stream loses no stream.

Each stream is a hash under `seqserve:stream:<model>/<id>`; live streams are also members of the sorted
set `seqserve:streams`, scored by their last change (milliseconds), which bounds them (`max_streams`)
and finds the idle ones. Every change is one Lua script, so the compare-and-set on `(epoch, position)`,
the live-stream limit and the sorted set change together, atomically, whichever replica runs it.
"""

from __future__ import annotations

from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.errors import StateUnavailable, TooManyStreams
from service.streams.store import Expect, StreamRecord

PREFIX = "seqserve:stream:"
LIVE = "seqserve:streams"

# KEYS: record, live set. ARGV: expect_epoch ('' = no live stream expected), expect_position, now_ms,
# max_streams, idle_ms, ttl_ms, then the record's fields as name, value pairs.
_PUT = """
local status = redis.call('HGET', KEYS[1], 'status')
local live = status == 'live'
if ARGV[1] == '' then
  if live then return 0 end
else
  if not live then return 0 end
  local at = redis.call('HMGET', KEYS[1], 'epoch', 'position')
  if at[1] ~= ARGV[1] or at[2] ~= ARGV[2] then return 0 end
end
local now = tonumber(ARGV[3])
local new_status = nil
for i = 7, #ARGV, 2 do if ARGV[i] == 'status' then new_status = ARGV[i + 1] end end
if new_status == 'live' and not live then
  local count = redis.call('ZCOUNT', LIVE_KEY, now - tonumber(ARGV[5]), '+inf')
  if count >= tonumber(ARGV[4]) then return -1 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
if new_status == 'live' then
  redis.call('ZADD', KEYS[2], now, KEYS[1])
else
  redis.call('ZREM', KEYS[2], KEYS[1])
end
return 1
""".replace("LIVE_KEY", "KEYS[2]")

# KEYS: live set. ARGV: idle_before_ms, now_s, retention_ms. Each stream idle since before `idle_before`
# becomes an `expired` tombstone kept `retention` ms; returns how many.
_EXPIRE = """
local idle = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, key in ipairs(idle) do
  redis.call('ZREM', KEYS[1], key)
  if redis.call('HGET', key, 'status') == 'live' then
    redis.call('HSET', key, 'status', 'expired', 'state', '', 'touched', ARGV[2])
    redis.call('PEXPIRE', key, tonumber(ARGV[3]))
  end
end
return #idle
"""

_FIELDS = (
    "model",
    "version",
    "epoch",
    "position",
    "state",
    "touched",
    "last_offset",
    "last_digest",
    "last_answer",
    "last_request",
)


class RedisStore:
    kind: Literal["memory", "redis"] = "redis"

    def __init__(
        self, url: str, *, max_streams: int, idle_seconds: float, retention_seconds: float, timeout_seconds: float = 2.0
    ) -> None:
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds, decode_responses=False
        )
        self._max_streams = max_streams
        self._idle_ms = int(idle_seconds * 1000)
        self._retention_ms = int(retention_seconds * 1000)
        self._put = self._client.register_script(_PUT)
        self._expire = self._client.register_script(_EXPIRE)

    async def ping(self) -> None:
        """Raise `StateUnavailable` unless Redis answers."""
        await self._call(self._client.ping())

    async def get(self, key: str) -> StreamRecord | None:
        fields: dict[bytes, bytes] = await self._call(self._client.hgetall(PREFIX + key))
        if not fields or b"status" not in fields:
            return None
        return StreamRecord(
            model=fields[b"model"].decode(),
            version=int(fields[b"version"]),
            epoch=fields[b"epoch"].decode(),
            position=int(fields[b"position"]),
            state=fields.get(b"state", b""),
            touched=float(fields[b"touched"]),
            last_offset=int(fields[b"last_offset"]),
            last_digest=fields[b"last_digest"],
            last_answer=fields[b"last_answer"],
            status=fields[b"status"].decode(),  # type: ignore[arg-type]
            last_request=fields.get(b"last_request", b"").decode(),
        )

    async def put(self, key: str, record: StreamRecord, expect: Expect, *, now: float) -> bool:
        values: list[Any] = [
            "" if expect is None else expect[0],
            -1 if expect is None else expect[1],
            int(now * 1000),
            self._max_streams,
            self._idle_ms,
            self._idle_ms + self._retention_ms if record.status == "live" else self._retention_ms,
        ]
        for name in _FIELDS:
            values += [name, getattr(record, name)]
        values += ["status", record.status]
        done = await self._call(self._put(keys=[PREFIX + key, LIVE], args=values))
        if done == -1:
            raise TooManyStreams(f"the live-stream limit (max_streams {self._max_streams}) is reached; retry later")
        return bool(done == 1)

    async def expire_idle(self, now: float) -> int:
        idle_before = int(now * 1000) - self._idle_ms
        expired = await self._call(self._expire(keys=[LIVE], args=[idle_before, repr(now), self._retention_ms]))
        return int(expired)

    async def live(self) -> int:
        count = await self._call(self._client.zcard(LIVE))
        return int(count)

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    async def _call(pending: Any) -> Any:
        try:
            return await pending
        except RedisError as exc:
            raise StateUnavailable(f"the stream state store (Redis) failed: {exc}") from exc
        except OSError as exc:
            raise StateUnavailable(f"the stream state store (Redis) is unreachable: {exc}") from exc
