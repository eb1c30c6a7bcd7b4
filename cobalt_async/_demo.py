"""``python -m cobalt_async demo``: the SDK's main job, end to end over real loopback HTTP."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
from anyio.abc import TaskGroup

from ._batch import BatchProgress
from ._client import CobaltClient
from ._config import PollPolicy
from ._errors import APIError, CobaltError, ConfigurationError, JobFailedError, JobTimeoutError
from ._handles import JobHandle, JobStatus
from ._servers import fake_from_args, serve
from ._webhooks import WebhookReceiver
from .asgi import WebhookApp
from .models import PatientLiveFetchCompletedEvent, TaskCreatedEvent, TaskCreateParams
from .sinks import InMemorySink, Sink, sink_from_url
from .testing import FakeCobalt

_SECRET = "whsec_demo"


@dataclass
class _Tally:
    """Everything the summary reports, gathered as the demo runs."""

    submitted: int = 0
    """Jobs Cobalt accepted: tasks, live fetches and notes alike."""
    fetches: int = 0
    """Of which live fetches, one of each created task's patient."""
    notes: int = 0
    """Of which notes, one on each task a fetch found."""
    staff_notes: int = 0
    """Of the notes, those on tasks clinic staff made in the EHR, never through the SDK."""
    rejected: int = 0
    succeeded: int = 0
    failed: int = 0
    failed_expected: int = 0
    lost: list[str] = field(default_factory=list)
    via: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    reconciled: int = 0
    """Creates whose answer was lost, found again in Cobalt's record."""
    unreconciled: int = 0
    """Creates whose answer was lost and that were not found by the deadline."""

    def settle(self, handle: JobHandle[Any], expected_failures: set[str]) -> None:
        if handle.status is JobStatus.SUCCEEDED:
            self.succeeded += 1
        else:
            self.failed += 1
            self.failed_expected += handle.job_id in expected_failures
        self.via[handle.resolved_via or "unknown"] += 1
        if handle.submitted_at is not None and handle.resolved_at is not None:
            self.latencies.append(handle.resolved_at - handle.submitted_at)


class _Progress:
    """A rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, out: TextIO, *, rich: bool) -> None:
        self.total = total
        self.out = out
        self.done = 0
        # A line per tenth of the jobs: a task brings a fetch and one or two notes.
        self._step = max(1, 3 * total // 10)
        self._bar: Any = None
        if rich:
            from rich.progress import Progress

            self._bar = Progress(transient=False)
            self._task = self._bar.add_task("jobs resolved", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def expect(self, jobs: int) -> None:
        """*jobs* more to resolve (fewer, when negative): fetches and notes come as found."""
        self.total += jobs
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def submitted(self, phase: str, progress: BatchProgress) -> None:
        if self._bar is None and progress.done == progress.total:
            line = f"{phase}: {progress.submitted} accepted, {progress.rejected} rejected"
            print(line, file=self.out, flush=True)

    def resolved(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self.done % self._step == 0 or self.done == self.total:
            print(f"resolved {self.done}/{self.total}", file=self.out, flush=True)


@dataclass
class _Lost:
    error: APIError
    give_up: float
    done: anyio.Event = field(default_factory=anyio.Event)
    handle: JobHandle[Any] | None = None


class _Reconciler:
    """
    Finds lost creates in Cobalt's record: all that are waiting, in one walk per round.

    A failed job echoes none of its request, so it cannot be found: after *patience*
    seconds a create is given up as not reconciled (and never resubmitted).
    """

    def __init__(self, client: CobaltClient, tally: _Tally, patience: float) -> None:
        self.client = client
        self.tally = tally
        self.patience = patience
        self.waiting: list[_Lost] = []
        self.arrived = anyio.Event()

    async def find(self, error: APIError) -> JobHandle[Any] | None:
        lost = _Lost(error, anyio.current_time() + self.patience)
        self.waiting.append(lost)
        self.arrived.set()
        await lost.done.wait()
        return lost.handle

    async def run(self) -> None:
        delay = 0.25
        while True:
            if not self.waiting:
                self.arrived = anyio.Event()
                await self.arrived.wait()
                delay = 0.25
            await anyio.sleep(delay)  # their jobs are still running at Cobalt
            delay = min(2 * delay, 2.0)
            batch = list(self.waiting)
            try:
                results = await self.client.jobs.reconcile_many([lost.error for lost in batch])
            except CobaltError:
                continue  # the listing failed this round: look again at the next
            now = anyio.current_time()
            for lost, result in zip(batch, results, strict=True):
                if result.found or now >= lost.give_up:
                    self.settle(lost, result.handle)

    def settle(self, lost: _Lost, handle: JobHandle[Any] | None) -> None:
        self.waiting.remove(lost)
        if handle is None:
            self.tally.unreconciled += 1
        else:
            self.tally.reconciled += 1
        lost.handle = handle
        lost.done.set()


class _Pipeline:
    """
    Follows each accepted task to its outcome, fetches its patient's EHR tasks, and appends
    and follows a note on each: the one just created, and those clinic staff made.
    """

    def __init__(
        self,
        client: CobaltClient,
        fake: FakeCobalt,
        tally: _Tally,
        progress: _Progress,
        *,
        mrns: list[str],
        concurrency: int,
        deadline: float,
        patience: float,
    ) -> None:
        self.client = client
        # A fetch only reads, so it may be retried freely: under --lost-answer-rate 0.1, three
        # answers in a row are lost for one fetch in five runs of the default demo.
        self.reader = client.with_options(max_retries=6)
        self.fake = fake
        self.tally = tally
        self.progress = progress
        self.mrns = mrns
        self.deadline = deadline
        self.slots = anyio.CapacityLimiter(concurrency)
        self.reconciler = _Reconciler(client, tally, patience)

    async def follow(self, handle: JobHandle[Any]) -> None:
        """Wait for *handle* until the deadline; a job still unknown then counts as lost."""
        try:
            await handle.wait(timeout=max(0.0, self.deadline - anyio.current_time()))
        except JobFailedError:
            pass
        except JobTimeoutError:
            self.tally.lost.append(handle.job_id)
            return
        self.tally.settle(handle, self.fake.expected_failures)
        self.progress.resolved()

    async def follow_task(self, handle: JobHandle[TaskCreatedEvent], mrn: str) -> None:
        await self.follow(handle)
        if not isinstance(handle.event, TaskCreatedEvent):
            return  # failed or unknown: nothing to fetch for this task
        created = handle.event.data.emr_task_id
        self.progress.expect(1)
        async with self.slots:
            try:
                fetch = await self.reader.patients.fetch(
                    search_by="mrn", mrn=mrn, include=["tasks"]
                )
            except CobaltError:  # a fetch is retried like a GET: nothing to reconcile
                self.tally.rejected += 1
                self.progress.expect(-1)
                return
        self.tally.submitted += 1
        self.tally.fetches += 1
        await self.follow(fetch)
        if not isinstance(fetch.event, PatientLiveFetchCompletedEvent):
            return
        found = [task.emr_task_id for task in fetch.event.data.tasks]
        self.progress.expect(len(found))
        async with anyio.create_task_group() as notes:
            for emr_task_id in found:
                notes.start_soon(self.append_note, emr_task_id, emr_task_id != created)

    async def append_note(self, emr_task_id: str, staff_made: bool) -> None:
        async with self.slots:
            try:
                note = await self.client.tasks.notes.create(
                    emr_task_id=emr_task_id, note="Called the patient back."
                )
            except APIError as exc:
                found = await self.reconciler.find(exc) if exc.outcome_unknown else None
                if found is None:
                    self.tally.rejected += not exc.outcome_unknown
                    self.progress.expect(-1)
                    return
                note = found
            except CobaltError:
                self.tally.rejected += 1
                self.progress.expect(-1)
                return
        self.tally.submitted += 1
        self.tally.notes += 1
        self.tally.staff_notes += staff_made
        await self.follow(note)

    async def follow_lost_task(self, error: APIError, mrn: str) -> None:
        """A task whose answer was lost: found again in Cobalt's record, then followed."""
        handle = await self.reconciler.find(error)
        if handle is None:
            self.progress.expect(-1)
            return
        self.tally.submitted += 1
        await self.follow_task(handle, mrn)

    def on_task(self, task_group: TaskGroup, progress: BatchProgress) -> None:
        self.progress.submitted("tasks", progress)
        result, mrn = progress.result, self.mrns[progress.index]
        if isinstance(result, JobHandle):
            self.tally.submitted += 1
            task_group.start_soon(self.follow_task, result, mrn)
        elif isinstance(result, APIError) and result.outcome_unknown:
            task_group.start_soon(self.follow_lost_task, result, mrn)
        else:
            self.tally.rejected += 1
            self.progress.expect(-1)


@asynccontextmanager
async def _sinks(args: argparse.Namespace) -> AsyncIterator[tuple[Sink, Sink]]:
    """The receiver's sink and the client's: one store, two instances, as two workers have."""
    if args.sink == "memory":
        sink = InMemorySink()
        yield sink, sink
        return
    with tempfile.TemporaryDirectory(prefix="cobalt-demo-") as scratch:
        url = args.sink_url or _default_sink_url(args.sink, scratch)
        receiving, waiting = sink_from_url(url), sink_from_url(url)
        async with receiving:
            yield receiving, waiting


def _default_sink_url(kind: str, scratch: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{scratch}/demo.db"
    variable = {"redis": "REDIS_URL", "postgres": "DATABASE_URL"}[kind]
    url = os.environ.get(variable)
    if not url:
        msg = f"demo --sink {kind} needs a server: pass --sink-url or set {variable}"
        raise ConfigurationError(msg)
    return url


async def run_demo(args: argparse.Namespace) -> int:
    started = anyio.current_time()
    deadline = started + args.timeout
    tally = _Tally()
    out = sys.stderr if args.json else sys.stdout
    async with (
        _sinks(args) as (sink, waiting_sink),
        serve(WebhookApp(WebhookReceiver(sink, secrets=[_SECRET]))) as hook_url,
    ):
        webhook_url = f"{hook_url}/webhooks/cobalt"
        fake = fake_from_args(args, webhook_url=webhook_url, webhook_secret=_SECRET)
        mrns = [f"MRN-{index:05d}" for index in range(args.tasks)]
        for mrn in mrns[::2]:  # every other patient has a task clinic staff made in the EHR
            fake.add_task(mrn, subject="Refill request", description="Patient asks for a refill.")
        async with serve(fake) as cobalt_url:
            client = CobaltClient(
                base_url=f"{cobalt_url}/v1",
                sink=waiting_sink,
                poll=_poll_policy(args),
                job_timeout=args.timeout,
                client_id=fake.client_id,
                client_secret=fake.client_secret,
                access_token=fake.access_token,
            )
            rich = out.isatty() and not args.json
            async with client:
                with _Progress(args.tasks, out, rich=rich) as progress:
                    pipeline = _Pipeline(
                        client,
                        fake,
                        tally,
                        progress,
                        mrns=mrns,
                        concurrency=args.concurrency,
                        deadline=deadline,
                        # Long enough for the slowest job to finish and be listed.
                        patience=20.0 + 3 * args.latency,
                    )
                    await _submit_and_wait(args, pipeline)
        summary = _summary(tally, fake, sink, waiting_sink, anyio.current_time() - started)
    _print_summary(summary, args.json)
    return 0 if not tally.lost else 1


async def _submit_and_wait(args: argparse.Namespace, pipeline: _Pipeline) -> None:
    tasks: list[TaskCreateParams] = [
        {
            "patient_mrn": mrn,
            "subject": "Follow-up",
            "description": "Call the patient back about recent lab results.",
        }
        for mrn in pipeline.mrns
    ]
    # Each task is followed from the moment it is accepted, so latency is the job's own.
    async with anyio.create_task_group() as reconciling:
        reconciling.start_soon(pipeline.reconciler.run)
        async with anyio.create_task_group() as task_group:
            await pipeline.client.tasks.create_many(
                tasks,
                concurrency=args.concurrency,
                on_progress=lambda progress: pipeline.on_task(task_group, progress),
            )
        reconciling.cancel_scope.cancel()


def _percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)


def _poll_policy(args: argparse.Namespace) -> PollPolicy:
    """Backstop polls only for webhooks that are really late, not merely queued under load."""
    # A job's own latency under a few hundred concurrent jobs is several times --latency;
    # polling sooner would report webhooks that do arrive as found "by poll".
    silence = args.poll_silence or max(10.0, 20 * args.latency)
    return PollPolicy(silence=silence, max_silence=2 * silence)


def _summary(
    tally: _Tally, fake: FakeCobalt, receiving: Sink, waiting: Sink, wall: float
) -> dict[str, Any]:
    return {
        "submitted": tally.submitted,
        "tasks": tally.submitted - tally.fetches - tally.notes,
        "fetches": tally.fetches,
        "notes": tally.notes,
        "staff_notes": tally.staff_notes,
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "failed_expected": tally.failed_expected,
        "lost": len(tally.lost),
        "lost_job_ids": tally.lost[:20],
        "rejected": tally.rejected,
        "resolved_via": dict(tally.via),
        "latency_ms": {f"p{q}": _percentile(tally.latencies, q) for q in (50, 95, 99)},
        "duplicates": receiving.stats().duplicates,
        "backstop_polls": waiting.stats().backstop_polls,
        "webhooks_dropped": fake.stats.dropped,
        "answers_lost": fake.stats.answers_lost,
        "reconciled": tally.reconciled,
        "unreconciled": tally.unreconciled,
        # A fetch whose answer was lost is sent again (it only reads): Cobalt ran it twice.
        "fetches_repeated": fake.stats.fetches_accepted - tally.fetches,
        # Writes Cobalt made beyond those the client knows of: a create sent twice.
        "duplicate_writes": (
            fake.stats.tasks_accepted
            + fake.stats.notes_accepted
            - (tally.submitted - tally.fetches)
            - tally.unreconciled
        ),
        "sink": type(waiting).__name__,
        "wall_s": round(wall, 2),
    }


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary), flush=True)
        return
    latency = summary["latency_ms"]
    via = ", ".join(f"{count} by {how}" for how, count in sorted(summary["resolved_via"].items()))
    lines = [
        f"submitted  {summary['submitted']} jobs: {summary['tasks']} tasks, "
        f"{summary['fetches']} live fetches of their patients' EHR tasks, "
        f"{summary['notes']} notes appended to the tasks found "
        f"({summary['staff_notes']} on tasks clinic staff made)",
        f"succeeded  {summary['succeeded']}",
        f"failed     {summary['failed']} ({summary['failed_expected']} injected by the simulator)",
        f"lost       {summary['lost']}",
        f"rejected   {summary['rejected']} before submission",
        f"reconciled {summary['reconciled']} creates whose answer was lost "
        f"({summary['unreconciled']} not found), {summary['duplicate_writes']} written twice",
        f"resolved   {via or 'none'}",
        f"latency    p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms",
        f"duplicates {summary['duplicates']} repeated webhook deliveries, recognised and ignored",
        f"wall time  {summary['wall_s']} s, outcomes through {summary['sink']}",
    ]
    print("\n".join(lines), flush=True)
