"""
What the multi-process sink tests share: Cobalt's deliveries, a mock Cobalt, worker processes
(``_worker.py``, one per simulated pod) and the fan-out plans they run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from cobalt_async import CobaltClient, PollPolicy, Sink, sign_webhook
from cobalt_async._signing import compact_json
from cobalt_async.models import parse_event

SECRET = "whsec_sink_tests"
WORKER = Path(__file__).with_name("_worker.py")
ROOT = Path(__file__).resolve().parents[2]


# Events and deliveries.


def event_payload(job_id: str, *, failed: bool = False, variant: str = "") -> dict[str, Any]:
    """The webhook body Cobalt would send for *job_id* (``variant`` makes a different one)."""
    if failed:
        return {
            "id": f"evt_ko{variant}_{job_id}",
            "type": "task.failed",
            "job_id": job_id,
            "created": "2024-06-01T10:00:00Z",
            "object": "event",
            "data": {"task_id": f"task-{job_id}", "failure_reason": "The EMR rejected it."},
        }
    return {
        "id": f"evt_ok{variant}_{job_id}",
        "type": "task.created",
        "job_id": job_id,
        "created": "2024-06-01T10:00:00Z",
        "object": "event",
        "data": {"task_id": f"task-{job_id}", "emr_task_id": f"emr{variant}-{job_id}"},
    }


def event(job_id: str, **kwargs: Any) -> Any:
    return parse_event(event_payload(job_id, **kwargs))


def delivery(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """One signed delivery of *payload*: the raw body and Cobalt's headers."""
    body = compact_json(payload)
    headers = {
        "content-type": "application/json",
        "cobalt-verification": sign_webhook(body, SECRET),
        "webhook-id": f"wh_{payload['id']}",
    }
    return body, headers


def record(payload: dict[str, Any]) -> dict[str, Any]:
    """*payload* as an item of ``GET /v1/webhook-events``."""
    return {
        "event_id": payload["id"],
        "event_type": payload["type"],
        "job_id": payload["job_id"],
        "created_at": payload["created"],
        "data": payload["data"],
    }


def cobalt(events: Callable[[str], list[dict[str, Any]]] | None = None) -> httpx.MockTransport:
    """Cobalt as a MockTransport: ``POST /tasks`` accepts job 'job-1'; ``webhook-events``
    serves ``events(job_id)``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/tasks"):
            return httpx.Response(200, json={"success": True, "job_id": "job-1", "task_id": "t1"})
        if request.method == "GET" and request.url.path.endswith("/webhook-events"):
            job_id = request.url.params.get("job_id", "")
            items = [record(item) for item in (events(job_id) if events else [])]
            return httpx.Response(200, json={"webhook_events": items, "pagination": {}})
        return httpx.Response(404, json={"success": False, "message": "not found"})

    return httpx.MockTransport(handle)


def client_for(sink: Sink, **kwargs: Any) -> CobaltClient:
    """A client of *sink* on :func:`cobalt`, polling only after a minute of silence."""
    kwargs.setdefault("transport", cobalt())
    kwargs.setdefault("poll", PollPolicy(silence=60.0, max_silence=60.0))
    return CobaltClient(client_id="id", client_secret="secret", access_token="token", sink=sink,
                        **kwargs)  # fmt: skip


# Worker processes.


class WorkerProcess:
    """One ``_worker.py`` process in its own process group, and its replies."""

    def __init__(self, process: Process, stderr: IO[bytes], name: str) -> None:
        self.process = process
        self.stderr = stderr
        self.name = name
        self.messages: list[dict[str, Any]] = []
        self.ended = False
        self.reaped = False
        self._changed = anyio.Event()

    @classmethod
    async def start(cls, arguments: Sequence[str], stderr: IO[bytes], name: str) -> WorkerProcess:
        """Start ``_worker.py`` with *arguments* (its sink's, then any others)."""
        command = [sys.executable, str(WORKER), "--secret", SECRET, *arguments]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = await anyio.open_process(
            command, stderr=stderr, env=env, cwd=str(ROOT), start_new_session=True
        )
        return cls(process, stderr, name)

    async def read(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                line = await stream.receive_until(b"\n", 1 << 28)
                self.messages.append(json.loads(line))
                self._notify()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError,
                anyio.BrokenResourceError):  # fmt: skip
            self.ended = True
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(command).encode() + b"\n")

    async def expect(self, kind: str, tag: str | None = None) -> dict[str, Any]:
        while True:
            for index, message in enumerate(self.messages):
                if message.get("ev") == kind and (tag is None or message.get("tag") == tag):
                    return self.messages.pop(index)
            if self.ended:
                raise AssertionError(f"{self.name} ended before {kind!r}: {self.stderr_tail()}")
            await self._changed.wait()

    async def ask(self, command: dict[str, Any], kind: str) -> dict[str, Any]:
        tag = f"{command['cmd']}-{random.getrandbits(32)}"
        await self.send({**command, "tag": tag})
        return await self.expect(kind, tag)

    def kill(self) -> None:
        """SIGKILL the worker's whole process group."""
        if self.reaped:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def reap(self) -> None:
        if self.reaped:
            return
        with anyio.move_on_after(5):
            await self.process.wait()
        self.reaped = True
        await self.process.aclose()

    def stderr_tail(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-3000:]


@asynccontextmanager
async def worker_pool(
    arguments: Sequence[str], count: int, directory: Path
) -> AsyncIterator[list[WorkerProcess]]:
    """Start *count* workers with *arguments* and wait until each is armed; always kill them."""
    workers: list[WorkerProcess] = []
    files: list[IO[bytes]] = []
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    try:
        async with anyio.create_task_group() as group:
            try:
                for index in range(count):
                    stderr = (directory / f"worker{index}.stderr").open("w+b")
                    files.append(stderr)
                    worker = await WorkerProcess.start(arguments, stderr, f"worker{index}")
                    workers.append(worker)
                    group.start_soon(worker.read)
                with anyio.fail_after(20):
                    for worker in workers:
                        await worker.expect("ready")
                yield workers
            finally:
                for worker in workers:
                    worker.kill()
                with anyio.CancelScope(shield=True):
                    for worker in workers:
                        await worker.reap()
                group.cancel_scope.cancel()
    finally:
        for stderr in files:
            stderr.close()


def fan_out_plan(
    job_ids: list[str], workers: int, *, window: float, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], float]:
    """
    Per worker: waits (each job in two workers, uniform in the window) and deliveries
    (one per job to a random worker, uniform in the window, 30 % delivered twice).
    Returns the plans, the payload of each job, and the share of awaits that come after
    their job's first delivery.
    """
    plans: list[dict[str, Any]] = [{"waits": [], "deliveries": []} for _ in range(workers)]
    payloads: dict[str, dict[str, Any]] = {}
    late = 0
    for job_id in job_ids:
        payload = event_payload(job_id, failed=rng.random() < 0.1)
        payloads[job_id] = payload
        body, headers = delivery(payload)
        delivered_at = rng.uniform(0, window)
        deliveries = [delivered_at]
        if rng.random() < 0.3:
            deliveries.append(delivered_at + rng.uniform(0.05, 0.5))
        for at in deliveries:
            target = plans[rng.randrange(workers)]
            target["deliveries"].append([at, job_id, body.decode(), headers])
        for index in rng.sample(range(workers), 2):
            registered_at = rng.uniform(0, window)
            late += registered_at > delivered_at
            plans[index]["waits"].append([registered_at, job_id, 25.0])
    return plans, payloads, late / (2 * len(job_ids))


def check_fan_out(
    results: list[dict[str, Any]], payloads: dict[str, dict[str, Any]], *, faults: bool
) -> dict[str, Any]:
    """
    Check every worker's ``plan_done``; return the figures of the run.

    With *faults*, a first delivery may answer "duplicate": the script ran, the connection
    was killed before its reply, and redis-py's retry found the outcome stored.
    """
    awaited: Counter[str] = Counter()
    lost: list[Any] = []
    wrong: list[Any] = []
    receipts: Counter[str] = Counter()
    final_statuses: Counter[int] = Counter()
    accepted: Counter[str] = Counter()
    reply_lost: set[str] = set()
    unavailable = 0
    for done in results:
        for wait in done["waits"]:
            awaited[wait["job"]] += 1
            expected = payloads[wait["job"]]
            if "error" in wait or wait.get("id") is None:
                lost.append(wait)
            elif (wait["id"], wait["type"]) != (expected["id"], expected["type"]):
                wrong.append(wait)
        for attempt in done["deliveries"]:
            receipts[attempt["outcome"]] += 1
            final_statuses[attempt["statuses"][-1]] += 1
            unavailable += attempt["statuses"].count(503)
            if attempt["outcome"] == "accepted":
                accepted[attempt["key"]] += 1
            elif 503 in attempt["statuses"]:
                # A 503 whose script ran all the same (the reply came too late): the
                # retry finds the outcome stored and answers "duplicate" (docs/correlation.md).
                reply_lost.add(attempt["key"])
    twice = [job_id for job_id, count in awaited.items() if count != 2]
    assert not lost, f"{len(lost)} awaits lost, e.g. {lost[:3]}"
    assert not wrong, f"{len(wrong)} awaits resolved with a wrong outcome, e.g. {wrong[:3]}"
    assert not twice, f"{len(twice)} jobs not awaited exactly twice, e.g. {twice[:3]}"
    assert set(awaited) == set(payloads)
    assert list(final_statuses) == [200], final_statuses
    assert receipts["conflict"] == 0
    assert max(accepted.values()) == 1, "a job was accepted twice"
    never_accepted = set(payloads) - set(accepted)
    if not faults:
        assert never_accepted <= reply_lost, f"never accepted: {sorted(never_accepted)[:5]}"
    return {
        "awaits": sum(awaited.values()),
        "receipts": dict(receipts),
        "503s": unavailable,
        "never_accepted": len(never_accepted),
        "vias": dict(Counter(wait["via"] for done in results for wait in done["waits"])),
        "max_wait_s": max(wait["elapsed"] for done in results for wait in done["waits"]),
    }


async def run_plans(
    workers: list[WorkerProcess], plans: list[dict[str, Any]], *, retry_for: float
) -> list[dict[str, Any]]:
    t0 = time.time() + 0.3
    results: list[dict[str, Any]] = [{} for _ in workers]

    async def run(index: int) -> None:
        command = {"cmd": "plan", "t0": t0, "retry_for": retry_for, **plans[index]}
        results[index] = await workers[index].ask(command, "plan_done")

    async with anyio.create_task_group() as group:
        for index in range(len(workers)):
            group.start_soon(run, index)
    return results


async def final_stats(workers: list[WorkerProcess]) -> list[dict[str, Any]]:
    return [await worker.ask({"cmd": "stats"}, "stats") for worker in workers]
