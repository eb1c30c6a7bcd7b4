"""
RedisSink at the edges of a real deployment: a Redis Cluster, a Redis that forgets, an
outage, a URL that is not Redis's. Every test talks to real ``redis-server`` processes.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from cobalt_async import ConfigurationError, SinkUnavailableError
from cobalt_async.models import JobEvent, parse_event
from cobalt_async.sinks import Outcome
from cobalt_async.testing import make_task_created_event, make_task_failed_event
from tests._redis_cluster import RedisCluster
from tests._redis_server import RedisServer

try:
    import redis.asyncio as redis
    from redis.asyncio.cluster import RedisCluster as ClusterClient

    from cobalt_async.sinks import RedisSink
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("redis-py is not installed", allow_module_level=True)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

LIMIT = 20.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py is asyncio only


def created(job_id: str) -> Any:
    return parse_event(make_task_created_event(job_id=job_id, event_id=f"evt_ok_{job_id}"))


def failed(job_id: str) -> Any:
    return parse_event(make_task_failed_event(job_id=job_id, event_id=f"evt_ko_{job_id}"))


# -- Redis Cluster ---------------------------------------------------------------------------


@pytest.mark.parametrize("node", [0, 1, 2])
async def test_any_node_url_serves_with_cluster_true(
    redis_cluster: RedisCluster, redis_namespace: str, node: int
) -> None:
    """Whichever node the URL names, publish and wait work: the owner of the slot answers."""
    url = redis_cluster.urls()[node]
    with anyio.fail_after(LIMIT):
        async with RedisSink(url, cluster=True, namespace=redis_namespace) as sink:
            assert "accepted" == await sink.publish(created("c1"))
            outcome = await sink.wait_for("c1", timeout=5)
    assert "c1" == outcome.event.job_id


async def test_a_webhook_on_one_sink_wakes_a_waiter_on_another(
    redis_cluster: RedisCluster, redis_namespace: str
) -> None:
    """Two sinks through two different nodes, as two workers would be."""
    first, second = redis_cluster.urls()[:2]
    with anyio.fail_after(LIMIT):
        async with (
            RedisSink(first, cluster=True, namespace=redis_namespace) as waiting,
            RedisSink(second, cluster=True, namespace=redis_namespace) as receiving,
        ):
            results: list[Outcome] = []
            async with anyio.create_task_group() as task_group:

                async def wait() -> None:
                    results.append(await waiting.wait_for("c2", timeout=10))

                task_group.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                await receiving.publish(created("c2"))
    assert ["c2"] == [outcome.event.job_id for outcome in results]


PUBLISHER = """
import sys
import anyio
from cobalt_async import WebhookReceiver
from cobalt_async.sinks import RedisSink
from cobalt_async.testing import make_task_created_event, signed_delivery

async def main() -> None:
    sink = RedisSink(sys.argv[1], cluster=True, namespace=sys.argv[2])
    body, headers = signed_delivery(make_task_created_event(job_id=sys.argv[3]), "whsec_c")
    receipt = await WebhookReceiver(sink, secrets=["whsec_c"]).receive(body, headers)
    await sink.aclose()
    sys.exit(0 if receipt.status_code == 200 else 1)

anyio.run(main)
"""


async def test_a_webhook_in_another_process_wakes_a_waiter_here(
    redis_cluster: RedisCluster, redis_namespace: str
) -> None:
    """The receiving worker is another process, on another node's URL."""
    here, there = redis_cluster.urls()[0], redis_cluster.urls()[2]
    with anyio.fail_after(LIMIT):
        async with RedisSink(here, cluster=True, namespace=redis_namespace) as sink:
            results: list[Outcome] = []
            async with anyio.create_task_group() as task_group:

                async def wait() -> None:
                    results.append(await sink.wait_for("x1", timeout=15))

                task_group.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                command = [sys.executable, "-c", PUBLISHER, there, redis_namespace, "x1"]
                done = await anyio.run_process(command, check=False, cwd=ROOT)
                assert 0 == done.returncode, done.stderr.decode()
    assert ["x1"] == [outcome.event.job_id for outcome in results]


async def test_a_plain_client_on_a_cluster_node_says_pass_cluster_true(
    redis_cluster: RedisCluster, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A MOVED answer is not "unreachable": the message says what to change."""
    owner = redis_cluster.owner_of(f"{{cobalt:{redis_namespace}}}:events")
    other = next(node for node in redis_cluster.nodes if node is not owner)
    sink = RedisSink(f"redis://127.0.0.1:{other.port}", namespace=redis_namespace)
    with anyio.fail_after(LIMIT), pytest.raises(SinkUnavailableError, match="cluster=True"):
        await sink.publish(created("c3"))
    await sink.aclose()
    assert "unreachable" not in caplog.text


async def test_an_existing_cluster_client_is_used_and_left_open(
    redis_cluster: RedisCluster, redis_namespace: str
) -> None:
    """client= takes the user's RedisCluster; closing the sink does not close it."""
    client = ClusterClient.from_url(redis_cluster.urls()[2])
    try:
        with anyio.fail_after(LIMIT):
            async with RedisSink(client=client, namespace=redis_namespace) as sink:
                await sink.publish(created("c4"))
                outcome = await sink.wait_for("c4", timeout=5)
            assert await client.ping()
    finally:
        await client.aclose()
    assert "c4" == outcome.event.job_id


async def test_a_master_killed_and_restarted(
    redis_cluster: RedisCluster, redis_namespace: str
) -> None:
    """Down: publishes fail fast (the receiver answers 503). Back: a pending wait resolves."""
    owner = redis_cluster.owner_of(f"{{cobalt:{redis_namespace}}}:events")
    url = redis_cluster.urls()[redis_cluster.nodes.index(owner)]
    with anyio.fail_after(60):
        async with RedisSink(url, cluster=True, namespace=redis_namespace) as sink:
            results: list[Outcome] = []
            async with anyio.create_task_group() as task_group:

                async def wait() -> None:
                    results.append(await sink.wait_for("c5", timeout=50))

                task_group.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                owner.kill()
                with pytest.raises(SinkUnavailableError):
                    await sink.publish(created("c5"))
                owner.start()
                await anyio.to_thread.run_sync(redis_cluster.wait_ok)
                # The cluster client finds the node again on a later command.
                while True:
                    try:
                        await sink.publish(created("c5"))
                        break
                    except SinkUnavailableError:
                        await anyio.sleep(0.1)
    assert ["c5"] == [outcome.event.job_id for outcome in results]
    assert sink.stats().outages >= 1


# -- a Redis that forgets --------------------------------------------------------------------


async def test_a_store_that_lost_its_data_settles_conflicts_by_cobalt(
    volatile_redis_server: RedisServer, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a restart without persistence, a late conflicting event does not win."""
    first = created("d1")
    asked: list[str] = []

    async def cobalt_says(job_id: str) -> JobEvent | None:
        asked.append(job_id)
        return first  # Cobalt's record: task.created came first

    with anyio.fail_after(LIMIT):
        async with RedisSink(volatile_redis_server.url, namespace=redis_namespace) as sink:
            sink.authority = cobalt_says
            await sink.publish(first)
            await anyio.to_thread.run_sync(volatile_redis_server.restart)
            # The listener notices as it reconnects; no event to wait on from outside.
            while sink.stats().data_losses == 0:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            result = await sink.publish(failed("d1"))
            stored = await sink.get_outcomes(["d1"])

    assert "conflict" == result
    assert "task.created" == stored["d1"].event.type
    assert ["d1"] == asked
    assert 1 == caplog.text.count("lost the stored outcomes")


async def test_without_a_loss_cobalt_is_not_asked(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    """The check costs nothing while the store keeps what it holds."""

    async def cobalt_says(job_id: str) -> JobEvent | None:
        raise AssertionError(job_id)

    with anyio.fail_after(LIMIT):
        async with RedisSink(redis_server.url, namespace=redis_namespace) as sink:
            sink.authority = cobalt_says
            assert "accepted" == await sink.publish(created("d2"))
            assert "conflict" == await sink.publish(failed("d2"))
    assert 0 == sink.stats().data_losses


# -- commands whose callers stopped waiting ---------------------------------------------------


async def test_a_cancelled_caller_leaves_its_command_to_finish_on_its_connection(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    """
    A caller cancelled mid-command is back at once; the command (a BLPOP blocking 0.5 s,
    inside its socket timeout) runs to its end in its own task, and its connection goes back
    to the pool intact, where cancelling redis-py mid-read would have dropped it.
    """
    sink = RedisSink(redis_server.url, namespace=redis_namespace, command_timeout=5)
    try:
        with anyio.fail_after(LIMIT):
            await sink.publish(created("c0"))
            with anyio.move_on_after(0.05) as scope:
                await sink._call(sink._redis.blpop, [f"{redis_namespace}:empty"], timeout=0.5)
            assert scope.cancelled_caught
            (command,) = sink._commands.running
            assert not command.done()  # the caller is back before the BLPOP's end
            await command
            assert not command.cancelled()
            pool = sink._redis.connection_pool
            assert not pool._in_use_connections
            assert all(connection.is_connected for connection in pool._available_connections)
            assert {"c0"} == set(await sink.get_outcomes(["c0"]))
    finally:
        await sink.aclose()


# -- outages and URLs ------------------------------------------------------------------------


async def test_an_outage_is_two_log_lines_whatever_fails_during_it(
    fresh_redis_server: RedisServer, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One line as it starts, one as it ends with the count; stats() has the counts too."""
    caplog.set_level(logging.WARNING, logger="cobalt_async")
    sink = RedisSink(fresh_redis_server.url, namespace=redis_namespace, command_timeout=0.3)
    await sink.publish(created("o0"))
    fresh_redis_server.kill()
    for number in range(50):
        with pytest.raises(SinkUnavailableError):
            await sink.publish(created(f"o{number + 1}"))
    fresh_redis_server.start()
    with anyio.fail_after(LIMIT):
        await sink.publish(created("o99"))
    await sink.aclose()

    lines = [record.getMessage() for record in caplog.records]
    assert 2 == len(lines), lines
    assert "50 command(s) failed" in lines[1]
    assert (1, 50) == (sink.stats().outages, sink.stats().failed_commands)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis//x"])
def test_a_url_that_is_not_redis_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"redis://, rediss:// or unix://"):
        RedisSink(url)


async def test_an_existing_plain_client_is_used_and_left_open(
    redis_server: RedisServer, redis_namespace: str
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        with anyio.fail_after(LIMIT):
            async with RedisSink(client=client, namespace=redis_namespace) as sink:
                await sink.publish(created("p1"))
                outcome = await sink.wait_for("p1", timeout=5)
            assert await client.ping()
    finally:
        await client.aclose()
    assert "p1" == outcome.event.job_id


def test_client_and_url_together_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="client= alone"):
        RedisSink("redis://127.0.0.1:6379", client=redis.Redis())
