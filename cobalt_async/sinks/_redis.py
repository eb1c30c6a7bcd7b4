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

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import redis.asyncio as redis
from anyio.abc import TaskGroup
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError

from .._errors import ConfigurationError, SinkUnavailableError
from .._outcome import Outcome, PendingJob
from ._base import Sink, StoreStats, same_event
from ._shared import (
    Detached,
    Outage,
    Rereads,
    backoff,
    carried_outcome,
    decode_outcome,
    decode_pending,
    encode_outcome,
    encode_pending,
    not_open,
)

logger = logging.getLogger("cobalt_async.sinks.redis")

# Store the outcome and announce it with its value, atomically (a wake-up then needs no
# read); else return what is stored already.
_PUBLISH = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'job', ARGV[4], 'out', ARGV[1])
  return false
end
return redis.call('GET', KEYS[1])
"""
# The pending registry's hash and its expiry index, changed together (a script, not MULTI:
# the same on a single server and on Cluster, where all keys share one slot).
_REGISTER = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
"""
_FORGET = """
redis.call('HDEL', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
"""
_SCHEMES = ("redis", "rediss", "unix")
# What a dedicated listener connection copies of the commands' connections: the address and
# the credentials, never their pools, retries or timeouts.
_ADDRESS = frozenset({"host", "port", "db", "path", "username", "password", "client_name"})
_NOT_THE_SLOT_OWNER = (
    "this Redis is a node of a Redis Cluster that does not own the namespace's keys: "
    "use RedisSink(url, cluster=True)"
)

AnyRedis = redis.Redis | RedisCluster
# What a failing Redis raises: the cluster client's own errors are no RedisError.
_FAILURES = (RedisError, RedisClusterException, OSError)


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
        url: str | None = None,
        *,
        cluster: bool = False,
        client: AnyRedis | None = None,
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
            url: ``redis://``, ``rediss://`` or ``unix://``; ``redis://127.0.0.1:6379/0``
                when neither it nor *client* is given. With ``cluster=True``, any node's.
            cluster: Talk to a Redis Cluster through redis-py's cluster client.
            client: A redis-py asyncio client you already hold (``Redis`` or
                ``RedisCluster``), instead of *url*; it stays yours to close. The listener
                opens one connection of its own to the same server, with the same credentials.
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
        if client is not None and (url is not None or cluster):
            msg = "pass client= alone: its settings say where Redis is, and if it is a cluster"
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
        self._owns_client = client is None
        self._redis: AnyRedis = client or _connect(
            url or "redis://127.0.0.1:6379/0",
            cluster=cluster,
            max_connections=max_connections,
            command_timeout=command_timeout,
        )
        self.cluster = isinstance(self._redis, RedisCluster)
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._register_script = self._redis.register_script(_REGISTER)
        self._forget_script = self._redis.register_script(_FORGET)
        # A free connection is taken without a trip through the event loop (a cycle on the
        # path of every command); the cancellation check stays.
        self._admission = anyio.Semaphore(max_connections, fast_acquire=True)
        self._commands = Detached()
        self._armed = anyio.Event()
        self._rereads = Rereads(recheck_interval, logger)
        self._reconnects = 0
        self._outage = Outage("Redis", logger)
        self._epoch_key = f"{self._prefix}:epoch"
        self._epoch: bytes | None = None
        self._data_losses = 0
        self._lost_at: float | None = None

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
            self._rereads.ask()
            raise
        return {
            job_id: decode_outcome(value)
            for job_id, value in zip(job_ids, values, strict=True)
            if value
        }

    async def put_if_absent(self, job_id: str, outcome: Outcome) -> Outcome | None:
        first = await self._first_by_cobalt(job_id, outcome)
        if first is not None:
            # Stored as Cobalt's first, and answered as what was kept: the arriving event
            # is then a duplicate of it, or a conflict with it.
            return await self._store(job_id, first) or first
        return await self._store(job_id, outcome)

    async def _first_by_cobalt(self, job_id: str, outcome: Outcome) -> Outcome | None:
        """After a data loss, Cobalt's first terminal event for the job, if another one."""
        lost_at, authority = self._lost_at, self.authority
        if lost_at is None or authority is None or time.time() - lost_at > self.outcome_ttl:
            return None
        try:
            earliest = await authority(job_id)
        except Exception as exc:  # Cobalt down too: arrival order, as without a loss
            logger.warning("job %s: Cobalt's record unreadable after a data loss: %s", job_id, exc)
            return None
        if earliest is None or same_event(earliest, outcome.event):
            return None
        return Outcome(earliest, "poll")

    async def _store(self, job_id: str, outcome: Outcome) -> Outcome | None:
        keys = [self._out_key(job_id), self._stream]
        args = [encode_outcome(outcome), self.outcome_ttl, self.stream_maxlen, job_id]
        existing = await self._call(self._publish_script, keys=keys, args=args)
        return None if existing is None else decode_outcome(existing)

    async def first_seen(self, key: str) -> bool:
        seen_key = f"{self._prefix}:seen:{key}"
        return bool(await self._call(self._redis.set, seen_key, b"1", nx=True, ex=self.dedup_ttl))

    def store_stats(self) -> StoreStats:
        return StoreStats(
            reconnects=self._reconnects,
            outages=self._outage.outages,
            failed_commands=self._outage.failed_commands,
            data_losses=self._data_losses,
        )

    async def _call(self, command: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """
        Run one Redis command, or fail with ``SinkUnavailableError`` within command_timeout.

        The command runs detached (:class:`Detached`): the caller stops waiting at its
        deadline (or its own cancellation), while redis-py finishes the command under its
        socket timeouts and returns the connection cleanly. Admission is released as the
        command ends, so the pool never runs out.
        """
        try:
            with anyio.fail_after(self.command_timeout):
                await self._admission.acquire()
                result = await self._commands.run(
                    command(*args, **kwargs), then=self._admission.release
                )
        except (MovedError, AskError) as exc:
            self._outage.failed(_NOT_THE_SLOT_OWNER)
            raise SinkUnavailableError(_NOT_THE_SLOT_OWNER) from exc
        except _FAILURES as exc:
            # OSError includes TimeoutError, raised by fail_after.
            reason = f"Redis is unreachable ({type(exc).__name__})"
            self._outage.failed(reason)
            raise SinkUnavailableError(reason) from exc
        self._outage.answered()
        return result

    # Pending registry.

    async def add_pending(self, job: PendingJob) -> None:
        entry = encode_pending(job)
        forget_at = job.submitted_at + self.outcome_ttl
        keys = [self._pending_key, self._expiry_key]
        await self._call(self._register_script, keys=keys, args=[job.job_id, entry, forget_at])

    async def remove_pending(self, job_id: str) -> None:
        await self._forget_pending([job_id])

    async def _forget_pending(self, job_ids: Sequence[str | bytes]) -> None:
        keys = [self._pending_key, self._expiry_key]
        await self._call(self._forget_script, keys=keys, args=list(job_ids))

    async def list_pending(self) -> list[PendingJob]:
        await self._forget_expired()
        entries = await self._call(self._redis.hgetall, self._pending_key)
        jobs = [decode_pending(job_id.decode(), raw) for job_id, raw in entries.items()]
        return sorted(jobs, key=lambda job: job.submitted_at)

    async def _forget_expired(self) -> None:
        expired = await self._call(self._redis.zrangebyscore, self._expiry_key, "-inf", time.time())
        if expired:
            await self._forget_pending(expired)

    # Wake-ups: one listener per process.

    async def armed(self) -> None:
        if self._task_group is None:
            raise not_open(type(self).__name__)
        await self._armed.wait()

    def start_background(self, task_group: TaskGroup) -> None:
        task_group.start_soon(self._listen)
        task_group.start_soon(self._rereads.serve, self.recheck)

    async def aclose(self) -> None:
        """Close Redis connections (the listener stops when the last user leaves)."""
        if self._task_group is None:
            self._armed = anyio.Event()
            self._rereads.reset()
            # Commands whose callers gave up finish under their socket timeouts first.
            await self._commands.finish(within=3 * self.command_timeout)
            if self._owns_client:
                await self._redis.aclose()

    async def _listener_client(self) -> redis.Redis:
        # One dedicated connection and no retries: every disconnect reaches _listen, which
        # throws the client away, so no reconnect can happen without a re-read after it.
        timeouts = {
            "timeout": self.block_ms / 1000 + 5,
            "connect_timeout": max(self.command_timeout, 2.0),
        }
        if isinstance(self._redis, RedisCluster):
            # To the node that owns the namespace's slot, found anew at each reconnect.
            await self._redis.initialize()
            node = self._redis.get_node_from_key(self._stream)
            if node is None:
                msg = "the cluster has no node for the namespace's slot"
                raise RedisError(msg)
            settings = {**node.connection_kwargs, "host": node.host, "port": node.port}
            return _dedicated(node.connection_class, settings, **timeouts)
        pool = self._redis.connection_pool
        return _dedicated(pool.connection_class, pool.connection_kwargs, **timeouts)

    async def _listen(self) -> None:
        cursor: bytes | None = None
        failures = 0
        while True:
            listener: redis.Redis | None = None
            try:
                listener = await self._listener_client()
                if cursor is None:
                    cursor = await self._pin_cursor(listener)
                    self._armed.set()
                else:
                    await listener.ping()
                if await self._lost_data(listener):
                    cursor = b"0-0"  # the stream went with the rest: read the new one whole
                    self._rereads.ask()
                if failures:
                    # Reconnected: whatever the stream no longer holds is in the store.
                    self._reconnects += 1
                    self._rereads.ask()
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
                if isinstance(exc, MovedError | AskError):
                    if failures == 1:
                        logger.error("Redis listener: %s", _NOT_THE_SLOT_OWNER)
                elif not isinstance(exc, _FAILURES):
                    logger.exception("Redis listener failed, reconnecting")
                elif failures == 1:
                    logger.warning("Redis listener disconnected (%s), reconnecting", exc)
                else:
                    logger.debug("Redis listener still disconnected (%s)", exc)
                await anyio.sleep(backoff(failures))
            finally:
                if listener is not None:
                    with anyio.CancelScope(shield=True):
                        await _close_quietly(listener)

    async def _lost_data(self, listener: redis.Redis) -> bool:
        """
        Whether Redis lost the namespace since this process last looked.

        A marker written when a namespace is first used, and read at every (re)connect: a
        Redis restarted without persistence, or failed over to a replica that had not
        received it, no longer holds the one this process saw.
        """
        await listener.set(self._epoch_key, uuid.uuid4().hex, nx=True)
        epoch: Any = await listener.get(self._epoch_key)
        lost = self._epoch is not None and epoch != self._epoch
        self._epoch = epoch
        if lost:
            self._data_losses += 1
            self._lost_at = time.time()
            logger.warning(
                "Redis lost the stored outcomes of namespace %r (restarted without persistence, "
                "or failed over?): for %d s, a terminal event is checked against Cobalt's "
                "record before it is stored",
                self.namespace,
                self.outcome_ttl,
            )
        return lost

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
                if not self.is_awaited(job_id):
                    continue
                carried = carried_outcome(job_id, fields.get(b"out"), logger)
                if carried is None:
                    woken.append(job_id)
                else:
                    self._correlator.resolve(job_id, carried)
        if woken:
            try:
                await self.recheck(woken)
            except SinkUnavailableError:
                pass  # get_outcomes asked for a re-read of every pending job
        return cursor


def _connect(url: str, *, cluster: bool, max_connections: int, command_timeout: float) -> AnyRedis:
    """The commands' client: it fails fast, so that a receiver can answer 503 in time."""
    scheme = url.partition("://")[0]
    if "://" not in url or scheme not in _SCHEMES:
        msg = f"RedisSink needs a redis://, rediss:// or unix:// URL, got one starting {scheme!r}"
        raise ConfigurationError(msg)
    options: dict[str, Any] = {
        # _call admits at most max_connections commands, so the pool never runs out (it
        # would raise, not wait); the margin is for connections being released.
        "max_connections": max_connections + 2,
        "socket_timeout": command_timeout,
        "socket_connect_timeout": command_timeout,
        # The asyncio Retry: redis.retry.Retry would not await, so would not retry.
        "retry": Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 2),
    }
    try:
        if cluster:
            return RedisCluster.from_url(url, **options)
        return redis.Redis.from_pool(redis.ConnectionPool.from_url(url, **options))
    except ValueError as exc:
        msg = f"RedisSink cannot use this URL: {exc}"
        raise ConfigurationError(msg) from None


def _dedicated(
    connection_class: type[Any], settings: dict[str, Any], *, timeout: float, connect_timeout: float
) -> redis.Redis:
    """A client of one connection and no retries, to the server *settings* name."""
    copied = {
        key: value
        for key, value in settings.items()
        if key in _ADDRESS or key.startswith("ssl_") or key == "credential_provider"
    }
    pool = redis.ConnectionPool(
        connection_class=connection_class,
        max_connections=1,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        **copied,
    )
    return redis.Redis.from_pool(pool)


async def _close_quietly(client: redis.Redis) -> None:
    try:
        await client.aclose()
    except (RedisError, OSError) as exc:
        logger.debug("closing a Redis listener connection failed: %s", exc)
