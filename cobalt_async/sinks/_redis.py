"""
RedisSink: outcomes shared by every worker and pod, through one Redis.

Data model (every key of a namespace shares one hash tag, so scripts work on Cluster):

- ``{cobalt:NS}:out:<job_id>``  the first terminal event, ``SET NX EX outcome_ttl``;
- ``{cobalt:NS}:events``        a Stream of ``{job: <job_id>}`` wake-up hints;
- ``{cobalt:NS}:seen:<id>``     dedup ids of non-terminal deliveries, ``SET NX EX``;
- ``{cobalt:NS}:pending`` (hash) and ``:pending:exp`` (zset)  the durable pending registry.

The result key and its Stream entry are written by one Lua script, so a waiter that misses
the entry finds the key, and one that misses the key gets the entry (``docs/correlation.md``
says why this is enough).
Each process runs one listener, ``XREAD BLOCK`` from a cursor pinned before any wait
registers; after every reconnect, and periodically, it re-reads every pending job. So does
a second task whenever a waiter's own store read failed: that waiter cannot know whether
its outcome was stored before it registered, and the stream will not announce it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import redis.asyncio as redis
from anyio.abc import TaskGroup
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from .._errors import ConfigurationError, SinkUnavailableError
from .._outcome import Outcome, PendingJob
from ..models import JobEvent, parse_event
from ._base import Sink, StoreStats

logger = logging.getLogger("cobalt_async.sinks.redis")

# Store the outcome and announce it, atomically; else return what is stored already.
_PUBLISH = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'job', ARGV[4])
  return false
end
return redis.call('GET', KEYS[1])
"""


class RedisSink(Sink):
    """
    A sink shared across processes through Redis (asyncio only, as redis-py is).

    Open it with ``async with RedisSink(url) as sink:`` or let ``async with CobaltClient(
    sink=sink)`` open it: waits need its listener running. ``WebhookReceiver`` can publish
    to it without opening it. Outcomes are as durable as the Redis persistence configured.
    """

    keeps_registry = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "cobalt",
        outcome_ttl: float = 86_400.0,
        dedup_ttl: float = 86_400.0,
        stream_maxlen: int = 100_000,
        block_ms: int = 5_000,
        recheck_interval: float = 30.0,
        command_timeout: float = 1.0,
        max_connections: int = 50,
    ) -> None:
        """
        Args:
            command_timeout: Seconds one store command may take in all, waiting for a pooled
                connection and retries included, before it fails with
                ``SinkUnavailableError``: keep it under the receiver's ``publish_timeout``.
            max_connections: Size of the command connection pool; more concurrent commands
                wait for a free connection (within *command_timeout*) instead of failing.
                The listener has one connection of its own.
        """
        if min(outcome_ttl, dedup_ttl, recheck_interval, command_timeout) <= 0:
            msg = "RedisSink TTLs, recheck_interval and command_timeout must be positive"
            raise ConfigurationError(msg)
        if max_connections < 1 or block_ms < 1:
            msg = "RedisSink max_connections and block_ms must be at least 1"
            raise ConfigurationError(msg)
        super().__init__()
        self.url = url
        self.namespace = namespace
        self.outcome_ttl = math.ceil(outcome_ttl)
        self.dedup_ttl = math.ceil(dedup_ttl)
        self.stream_maxlen = stream_maxlen
        self.block_ms = block_ms
        self.recheck_interval = recheck_interval
        self.command_timeout = command_timeout
        self._prefix = f"{{cobalt:{namespace}}}"
        self._stream = f"{self._prefix}:events"
        self._pending_key = f"{self._prefix}:pending"
        self._expiry_key = f"{self._prefix}:pending:exp"
        # Commands fail fast, so that a receiver can answer 503 within Cobalt's window.
        pool = redis.ConnectionPool.from_url(
            url,
            # _call admits at most max_connections commands, so the pool never runs out
            # (it would raise, not wait); the margin is for connections being released.
            max_connections=max_connections + 2,
            socket_timeout=command_timeout,
            socket_connect_timeout=command_timeout,
            # The asyncio Retry: redis.retry.Retry would not await, so would not retry.
            retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 2),
        )
        self._redis = redis.Redis.from_pool(pool)
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._admission = anyio.Semaphore(max_connections)
        self._commands: set[asyncio.Task[Any]] = set()
        self._armed = anyio.Event()
        self._reread = anyio.Event()
        self._reconnects = 0

    def __repr__(self) -> str:
        return f"<RedisSink namespace={self.namespace!r} pending={self._correlator.pending}>"

    def _out_key(self, job_id: str) -> str:
        return f"{self._prefix}:out:{job_id}"

    # Store.

    async def get_outcomes(self, job_ids: Sequence[str]) -> dict[str, Outcome]:
        if not job_ids:
            return {}
        try:
            values = await self._call(
                self._redis.mget, [self._out_key(job_id) for job_id in job_ids]
            )
        except SinkUnavailableError:
            # A wait whose store read failed may have missed an outcome stored before it
            # registered: have every pending job re-read once Redis answers again.
            self._reread.set()
            raise
        return {
            job_id: _decode(value) for job_id, value in zip(job_ids, values, strict=True) if value
        }

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        keys = [self._out_key(job_id), self._stream]
        args = [_encode(outcome), self.outcome_ttl, self.stream_maxlen, job_id]
        existing = await self._call(self._publish_script, keys=keys, args=args)
        return None if existing is None else _decode(existing)

    async def first_seen(self, key: str) -> bool:
        seen_key = f"{self._prefix}:seen:{key}"
        return bool(await self._call(self._redis.set, seen_key, b"1", nx=True, ex=self.dedup_ttl))

    def store_stats(self) -> StoreStats:
        return StoreStats(reconnects=self._reconnects)

    async def _call(self, command: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """
        Run one Redis command, or fail with ``SinkUnavailableError`` within command_timeout.

        The command runs in a task of its own that is never cancelled: the caller stops
        waiting at its deadline (or its own cancellation), while redis-py finishes the command
        under its socket timeouts and returns the connection cleanly. Cancelling redis-py
        mid-command instead drops the connection, and cancelling waits in its pool can starve.
        """
        try:
            with anyio.fail_after(self.command_timeout):
                await self._admission.acquire()
                task = asyncio.ensure_future(command(*args, **kwargs))
                self._commands.add(task)
                task.add_done_callback(self._command_done)
                return await asyncio.shield(task)
        except (RedisError, OSError) as exc:
            # OSError includes TimeoutError, raised by fail_after.
            msg = f"Redis is unreachable ({type(exc).__name__})"
            raise SinkUnavailableError(msg) from exc

    def _command_done(self, task: asyncio.Task[Any]) -> None:
        self._commands.discard(task)
        self._admission.release()
        if not task.cancelled():
            task.exception()  # retrieved: a caller that gave up must not leave it unseen

    async def _transaction(self, *commands: tuple[str, Any]) -> Any:
        async with self._redis.pipeline(transaction=True) as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            return await pipe.execute()

    # Pending registry.

    async def add_pending(self, job: PendingJob) -> None:
        entry = json.dumps(
            {"kind": job.kind, "submitted_at": job.submitted_at, "deadline": job.deadline}
        )
        forget_at = job.submitted_at + self.outcome_ttl
        await self._call(
            self._transaction,
            ("hset", (self._pending_key, job.job_id, entry)),
            ("zadd", (self._expiry_key, {job.job_id: forget_at})),
        )

    async def remove_pending(self, job_id: str) -> None:
        await self._call(
            self._transaction,
            ("hdel", (self._pending_key, job_id)),
            ("zrem", (self._expiry_key, job_id)),
        )

    async def list_pending(self) -> list[PendingJob]:
        await self._forget_expired()
        entries = await self._call(self._redis.hgetall, self._pending_key)
        jobs = [_pending_job(job_id.decode(), raw) for job_id, raw in entries.items()]
        return sorted(jobs, key=lambda job: job.submitted_at)

    async def _forget_expired(self) -> None:
        expired = await self._call(self._redis.zrangebyscore, self._expiry_key, "-inf", time.time())
        if expired:
            await self._call(
                self._transaction,
                ("hdel", (self._pending_key, *expired)),
                ("zrem", (self._expiry_key, *expired)),
            )

    # Wake-ups: one listener per process.

    async def armed(self) -> None:
        if self._task_group is None:
            msg = (
                "RedisSink is not open: use `async with sink:` or "
                "`async with CobaltClient(sink=sink)` before awaiting handles"
            )
            raise ConfigurationError(msg)
        await self._armed.wait()

    def start_background(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._listen)
        task_group.start_soon(self._reread_when_asked)

    async def aclose(self) -> None:
        """Close Redis connections (the listener stops when the last user leaves)."""
        if self._task_group is None:
            self._armed = anyio.Event()
            self._reread = anyio.Event()
            # Commands whose callers gave up finish under their socket timeouts first.
            with anyio.move_on_after(3 * self.command_timeout):
                await asyncio.gather(*self._commands, return_exceptions=True)
            await self._redis.aclose()

    def _listener_client(self) -> redis.Redis:
        # One dedicated connection and no retries: every disconnect reaches _listen, which
        # throws the client away, so no reconnect can happen without a re-read after it.
        return redis.Redis.from_url(
            self.url,
            single_connection_client=True,
            socket_timeout=self.block_ms / 1000 + 5,
            socket_connect_timeout=max(self.command_timeout, 2.0),
            retry=Retry(NoBackoff(), 0),
        )

    async def _listen(self) -> None:
        cursor: bytes | None = None
        failures = 0
        while True:
            listener = self._listener_client()
            try:
                if cursor is None:
                    cursor = await self._pin_cursor(listener)
                    self._armed.set()
                else:
                    await listener.ping()
                if failures:
                    # Reconnected: whatever the stream no longer holds is in the store.
                    self._reconnects += 1
                    self._reread.set()
                    failures = 0
                while True:
                    cursor = await self._read(listener, cursor)
            except Exception as exc:  # the listener must outlive any error
                if cursor is None:
                    # Redis is down at start: read the stream from its beginning once it is
                    # back, which no wait registered meanwhile can fall before.
                    cursor = b"0-0"
                    self._armed.set()
                failures += 1
                if not isinstance(exc, RedisError | OSError):
                    logger.exception("Redis listener failed, reconnecting")
                elif failures == 1:
                    logger.warning("Redis listener disconnected (%s), reconnecting", exc)
                else:
                    logger.debug("Redis listener still disconnected (%s)", exc)
                await anyio.sleep(_backoff(failures))
            finally:
                with anyio.CancelScope(shield=True):
                    await _close_quietly(listener)

    async def _pin_cursor(self, listener: redis.Redis) -> bytes:
        # Everything after this id will be read: pinning it before any wait registers is
        # what makes "register, then read the store" gap-free (never use "$" later).
        last: Any = await listener.xrevrange(self._stream, "+", "-", count=1)
        return bytes(last[0][0]) if last else b"0-0"

    async def _read(self, listener: redis.Redis, cursor: bytes) -> bytes:
        reply: Any = await listener.xread({self._stream: cursor}, count=500, block=self.block_ms)
        woken: list[str] = []
        for _stream, entries in reply.items() if isinstance(reply, dict) else reply or ():
            for entry_id, fields in entries:
                cursor = entry_id
                job_id = fields.get(b"job", b"").decode()
                if self.is_awaited(job_id):
                    woken.append(job_id)
        if woken:
            try:
                await self.recheck(woken)
            except SinkUnavailableError:
                pass  # get_outcomes asked _reread_when_asked to re-read every pending job
        return cursor

    async def _reread_when_asked(self) -> None:
        # Re-read every pending job after a listener reconnect or a failed store read,
        # retrying until Redis answers, and every recheck_interval in any case.
        failures = 0
        while True:
            with anyio.move_on_after(self.recheck_interval):
                await self._reread.wait()
            self._reread = anyio.Event()
            try:
                await self.recheck()
                failures = 0
            except Exception as exc:
                failures += 1
                if not isinstance(exc, SinkUnavailableError):
                    logger.exception("re-reading pending jobs failed")
                self._reread.set()
                await anyio.sleep(_backoff(failures))


async def _close_quietly(client: redis.Redis) -> None:
    try:
        await client.aclose()
    except (RedisError, OSError) as exc:
        logger.debug("closing a Redis listener connection failed: %s", exc)


def _backoff(failures: int) -> float:
    return random.uniform(0, min(2.0, 0.05 * 2 ** min(failures, 6)))


def _encode(outcome: Outcome) -> bytes:
    event = outcome.event.model_dump_json().encode()
    return b'{"via":"%s","event":%s}' % (outcome.via.encode(), event)


def _decode(value: bytes) -> Outcome:
    stored = json.loads(value)
    event: JobEvent = parse_event(stored["event"])  # type: ignore[assignment]
    return Outcome(event, stored.get("via", "webhook"))


def _pending_job(job_id: str, raw: bytes) -> PendingJob:
    entry = json.loads(raw)
    return PendingJob(job_id, entry["kind"], entry["submitted_at"], entry.get("deadline"))
