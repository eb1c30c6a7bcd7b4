"""
A worker process for the multi-process sink tests (run with ``sys.executable``).

It plays one pod of an application: a ``CobaltClient`` whose sink is a ``RedisSink`` on the
given namespace (``--sink redis``), a ``SQLiteSink`` on the given file (``--sink sqlite``) or a
``PostgresSink`` on the given schema (``--sink postgres``, ``--url`` its DSN, ``--namespace``
its schema), and a ``WebhookReceiver`` on the same sink. Cobalt itself is an
``httpx.MockTransport``. The test drives it with JSON lines on stdin and reads JSON lines
on stdout; every reply echoes the command's ``tag``.

Commands:

- ``plan``: ``{"t0": unix time, "waits": [[t, job_id, timeout]], "deliveries": [[t, key,
  body, headers]], "retry_for": s}``. At ``t0 + t`` await a job (``jobs.attach().wait()``)
  or hand a delivery to ``WebhookReceiver.receive``; a 503 is retried every 0.1 s for
  ``retry_for`` seconds, as a patient load balancer would. Replies ``plan_done`` with every
  result and the sink's stats once all of them finished.
- ``submit``: ``{"job_id", "timeout"}``: create a task (Cobalt answers with that job_id),
  reply ``submitted``, then wait for it and reply ``resolved``.
- ``attach``: ``{"job_id", "timeout"}``: wait for a job by id and reply ``resolved``.
- ``pending``: reply with ``client.jobs.pending()``.
- ``stats``: reply with ``sink.stats()``.
- ``flood``: ``{"prefix"}``: deliver ``task.created`` for ``<prefix>-0``, ``<prefix>-1``, ...
  one after another, replying ``stored`` with each job id the receiver answered 200 for, until
  the process is killed.
- ``hold``: (SQLite) take the database's write lock with a transaction of its own, write into
  it, reply ``holding``, and never commit: the process is to be killed mid-write.
- ``exit``: leave (closing the client and its sink).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import sys
import time
from itertools import count
from typing import Any

import anyio
import httpx

from cobalt_async import (
    CobaltClient,
    JobFailedError,
    JobTimeoutError,
    PollPolicy,
    Sink,
    SQLiteSink,
    WebhookReceiver,
)
from cobalt_async.testing import make_task_created_event, signed_delivery

_send_lock = anyio.Lock()


async def reply(message: dict[str, Any]) -> None:
    line = json.dumps(message, separators=(",", ":")) + "\n"
    async with _send_lock:
        # Written from a thread: a slow reader must not stall this process's event loop.
        await anyio.to_thread.run_sync(_write, line)


def _write(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def make_sink(args: argparse.Namespace) -> Sink:
    if args.sink == "sqlite":
        return SQLiteSink(args.path, recheck_interval=args.recheck)
    if args.sink == "postgres":
        from cobalt_async.sinks import PostgresSink  # needs asyncpg

        return PostgresSink(args.url, schema=args.namespace, recheck_interval=args.recheck)
    from cobalt_async.sinks import RedisSink  # needs redis-py: only for the Redis tests

    return RedisSink(
        args.url, namespace=args.namespace, recheck_interval=args.recheck, block_ms=args.block_ms
    )


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sink = make_sink(args)
        self.secret = args.secret
        self.backstop_calls = 0
        self.submitted: list[str] = []
        self.client = CobaltClient(
            client_id="worker",
            client_secret="worker-secret",
            access_token="worker-token",
            sink=self.sink,
            transport=httpx.MockTransport(self._cobalt),
            poll=PollPolicy(silence=args.silence, max_silence=args.silence),
            job_timeout=60.0,
        )
        self.receiver = WebhookReceiver(self.sink, secrets=[args.secret])

    def _cobalt(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/tasks"):
            job_id = self.submitted[-1]
            body = {"success": True, "job_id": job_id, "task_id": f"task-{job_id}"}
            return httpx.Response(200, json=body)
        if request.method == "GET" and request.url.path.endswith("/webhook-events"):
            # Cobalt never recorded anything here: only webhooks can resolve a job.
            self.backstop_calls += 1
            return httpx.Response(200, json={"webhook_events": [], "pagination": {}})
        return httpx.Response(404, json={"success": False, "message": "not found"})

    def stats(self) -> dict[str, Any]:
        stats = dataclasses.asdict(self.sink.stats())
        stats["backstop_calls"] = self.backstop_calls
        return stats

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        started = time.time()
        result: dict[str, Any] = {"job": job_id}
        handle = self.client.jobs.attach(job_id, "task")
        try:
            await handle.wait(timeout=timeout)
        except JobFailedError:
            pass
        except JobTimeoutError:
            result["error"] = "timeout"
        except Exception as exc:  # reported, and counted as a failure by the test
            result["error"] = f"{type(exc).__name__}: {exc}"
        if handle.event is not None:
            result.update(type=handle.event.type, id=handle.event.id, via=handle.resolved_via)
            result["emr"] = getattr(handle.event.data, "emr_task_id", None)
        result["elapsed"] = round(time.time() - started, 3)
        return result

    async def deliver(self, key: str, body: str, headers: dict[str, str], retry_for: float) -> Any:
        statuses: list[int] = []
        give_up = anyio.current_time() + retry_for
        while True:
            receipt = await self.receiver.receive(body.encode(), headers)
            statuses.append(receipt.status_code)
            if receipt.status_code != 503 or anyio.current_time() >= give_up:
                return {"key": key, "statuses": statuses, "outcome": receipt.result}
            await anyio.sleep(0.1)

    async def run_plan(self, command: dict[str, Any]) -> None:
        start = anyio.current_time() + (command["t0"] - time.time())
        retry_for = float(command.get("retry_for", 0.0))
        waits: list[dict[str, Any]] = []
        deliveries: list[dict[str, Any]] = []

        async def one_wait(at: float, job_id: str, timeout: float) -> None:
            await anyio.sleep_until(start + at)
            waits.append(await self.wait(job_id, timeout))

        async def one_delivery(at: float, key: str, body: str, headers: dict[str, str]) -> None:
            await anyio.sleep_until(start + at)
            deliveries.append(await self.deliver(key, body, headers, retry_for))

        async with anyio.create_task_group() as group:
            for at, job_id, timeout in command["waits"]:
                group.start_soon(one_wait, at, job_id, timeout)
            for at, key, body, headers in command["deliveries"]:
                group.start_soon(one_delivery, at, key, body, headers)
        await reply(
            {
                "ev": "plan_done",
                "tag": command.get("tag"),
                "waits": waits,
                "deliveries": deliveries,
                "stats": self.stats(),
            }
        )

    async def submit(self, command: dict[str, Any]) -> None:
        job_id = command["job_id"]
        self.submitted.append(job_id)
        handle = await self.client.tasks.create(patient_mrn="MRN-1", description="follow up")
        await reply({"ev": "submitted", "tag": command.get("tag"), "job": handle.job_id})
        await self.attach(command)

    async def attach(self, command: dict[str, Any]) -> None:
        result = await self.wait(command["job_id"], float(command.get("timeout", 30.0)))
        await reply({"ev": "resolved", "tag": command.get("tag"), **result})

    async def pending(self, command: dict[str, Any]) -> None:
        jobs = [dataclasses.asdict(job) for job in await self.client.jobs.pending()]
        await reply({"ev": "pending", "tag": command.get("tag"), "jobs": jobs})

    async def flood(self, command: dict[str, Any]) -> None:
        for number in count():
            job_id = f"{command['prefix']}-{number}"
            event = make_task_created_event(job_id=job_id)
            receipt = await self.receiver.receive(*signed_delivery(event, self.secret))
            if receipt.status_code == 200:
                await reply({"ev": "stored", "tag": command.get("tag"), "job": job_id})

    async def hold(self, command: dict[str, Any]) -> None:
        connection = sqlite3.connect(self.args.path, isolation_level=None, check_same_thread=False)
        await anyio.to_thread.run_sync(connection.execute, "BEGIN IMMEDIATE")
        connection.execute(
            "INSERT INTO cobalt_outcomes (job_id, outcome, stored_at, expires_at) "
            "VALUES ('held', '{}', 0, 0)"
        )
        await reply({"ev": "holding", "tag": command.get("tag")})
        await anyio.sleep_forever()

    async def serve(self) -> None:
        async with self.client, anyio.create_task_group() as group:
            await self.sink.armed()
            await reply({"ev": "ready", "pid": os.getpid()})
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    break
                command = json.loads(line)
                name = command["cmd"]
                if name == "exit":
                    break
                if name == "stats":
                    await reply({"ev": "stats", "tag": command.get("tag"), **self.stats()})
                    continue
                handler = {
                    "plan": self.run_plan,
                    "submit": self.submit,
                    "attach": self.attach,
                    "pending": self.pending,
                    "flood": self.flood,
                    "hold": self.hold,
                }[name]
                group.start_soon(handler, command)
            group.cancel_scope.cancel()
        await reply({"ev": "bye", "stats": self.stats()})


async def serve(args: argparse.Namespace) -> None:
    await Worker(args).serve()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink", choices=["redis", "sqlite", "postgres"], required=True)
    parser.add_argument("--url", help="Redis URL, or PostgreSQL DSN")
    parser.add_argument("--namespace", help="Redis namespace, or PostgreSQL schema")
    parser.add_argument("--path", help="SQLite")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--silence", type=float, default=60.0)
    parser.add_argument("--recheck", type=float, default=30.0)
    parser.add_argument("--block-ms", type=int, default=5000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(serve, args, backend=args.backend)


if __name__ == "__main__":
    main()
