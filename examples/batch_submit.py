"""
Submit 1,000 tasks with bounded concurrency and follow each one to its outcome.

    python examples/batch_submit.py              # against a simulated Cobalt, in-process
    python examples/batch_submit.py --tasks 50
    python examples/batch_submit.py --real       # against Cobalt: set COBALT_CLIENT_ID,
                                                 # COBALT_CLIENT_SECRET and COBALT_ACCESS_TOKEN

A progress bar on a terminal (needs rich: pip install "cobalt-async[cli]"), plain lines
otherwise. Exits 1 if some job's outcome is still unknown at the deadline.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from cobalt_async import (
    BatchProgress,
    CobaltClient,
    CobaltError,
    InMemorySink,
    JobHandle,
    JobStatus,
    WebhookReceiver,
    as_completed,
)
from cobalt_async.models import TaskCreateParams
from cobalt_async.testing import FakeCobalt

DEADLINE = 300.0  # seconds for the whole batch to resolve; Cobalt suggests 2-3 min per job


class Progress:
    """Two counters, submitted and resolved: a rich bar on a terminal, else a line per 10%."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.step = max(1, total // 10)
        self.resolved_count = 0
        self.bar: Any = None
        if sys.stdout.isatty():
            from rich.progress import Progress as Bar

            self.bar = Bar()
            self.submitting = self.bar.add_task("submitted", total=total)
            self.resolving = self.bar.add_task("resolved", total=total)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def submitted(self, progress: BatchProgress) -> None:  # create_many's on_progress
        if self.bar is not None:
            self.bar.update(self.submitting, completed=progress.done)
        elif progress.done % self.step == 0 or progress.done == progress.total:
            print(f"submitted {progress.done}/{self.total} ({progress.rejected} refused)")

    def resolved(self) -> None:
        self.resolved_count += 1
        if self.bar is not None:
            self.bar.update(self.resolving, completed=self.resolved_count)
        elif self.resolved_count % self.step == 0:
            print(f"resolved {self.resolved_count}/{self.total}")


async def submit_batch(client: CobaltClient, count: int) -> int:
    tasks: list[TaskCreateParams] = [
        {
            "patient_mrn": f"MRN-{index:05d}",
            "subject": "Follow-up appointment needed",
            "description": "Schedule a follow-up to review recent lab results.",
        }
        for index in range(count)
    ]
    created = failed = 0
    with Progress(count) as progress:
        # One outcome per task, in order: a JobHandle, or the error that kept it out.
        outcomes = await client.tasks.create_many(
            tasks, concurrency=32, on_progress=progress.submitted
        )
        handles = [outcome for outcome in outcomes if isinstance(outcome, JobHandle)]
        async with as_completed(handles, timeout=DEADLINE) as finished:
            async for handle in finished:
                progress.resolved()
                if handle.status is JobStatus.SUCCEEDED:
                    created += 1
                else:
                    failed += 1
            unknown = [handle.job_id for handle in finished.pending]
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, CobaltError):
            print(f"task {index} was not submitted: {outcome}")
    if unknown:  # these jobs may still succeed: look them up later, never resubmit them
        print(f"outcome unknown for job_ids: {', '.join(unknown)}")
    refused = len(outcomes) - len(handles)
    print(
        f"{count} tasks: {created} created, {failed} failed, {refused} refused, "
        f"{len(unknown)} unknown"
    )
    return 1 if unknown else 0


@asynccontextmanager
async def simulated_cobalt() -> AsyncIterator[CobaltClient]:
    """A client of an in-process FakeCobalt whose webhooks reach the client's sink."""
    sink = InMemorySink()  # in production: the sink your webhook endpoint publishes to
    receiver = WebhookReceiver(sink, secrets=["whsec_example"])
    async with (
        FakeCobalt(
            receiver=receiver,
            webhook_secret="whsec_example",
            latency=(0.1, 1.0),
            failure_rate=0.01,
            seed=1,
        ) as fake,
        CobaltClient(
            base_url=fake.base_url,
            transport=fake.transport,
            sink=sink,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            access_token=fake.access_token,
        ) as client,
    ):
        yield client


async def main(count: int, real: bool) -> int:
    if real:
        # Without a sink every handle polls Cobalt; pass sink= (fed by your webhook
        # endpoint) to resolve the batch from webhooks instead.
        async with CobaltClient() as client:
            return await submit_batch(client, count)
    async with simulated_cobalt() as client:
        return await submit_batch(client, count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Submit many tasks and follow them.")
    parser.add_argument("--tasks", type=int, default=1000, help="how many tasks (1000)")
    parser.add_argument("--real", action="store_true", help="use Cobalt, not the simulator")
    args = parser.parse_args()
    sys.exit(anyio.run(main, args.tasks, args.real))
