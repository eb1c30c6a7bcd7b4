"""
Quickstart: create a task in the EHR, await its outcome, then append a note to it.

    python examples/quickstart.py          # against a simulated Cobalt, in-process
    python examples/quickstart.py --real   # against Cobalt: set COBALT_CLIENT_ID,
                                           # COBALT_CLIENT_SECRET and COBALT_ACCESS_TOKEN
"""

from __future__ import annotations

import argparse

import anyio

from cobalt_async import CobaltClient, JobFailedError
from cobalt_async.testing import FakeCobalt


async def quickstart(client: CobaltClient) -> None:
    handle = await client.tasks.create(
        patient_mrn="MRN-12345",
        subject="Follow-up appointment needed",
        description="Schedule a follow-up to review recent lab results.",
    )
    print(f"task accepted: job_id={handle.job_id}")
    try:
        task = await handle  # the task.created event, once the EHR has the task
    except JobFailedError as exc:
        msg = f"the EHR refused the task: {exc.failure_reason}"
        raise SystemExit(msg) from exc
    print(f"task created: emr_task_id={task.data.emr_task_id}")

    note = await client.tasks.notes.create(emr_task_id=task.data.emr_task_id, note="Called")
    print(f"note written: emr_note_id={(await note).data.emr_note_id}")


async def main(real: bool) -> None:
    if real:
        async with CobaltClient() as client:  # credentials from the COBALT_* variables
            await quickstart(client)
        return
    # Without a sink the handles learn their outcome by polling GET /v1/webhook-events.
    async with (
        FakeCobalt() as fake,
        CobaltClient(
            base_url=fake.base_url,
            transport=fake.transport,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            access_token=fake.access_token,
        ) as client,
    ):
        await quickstart(client)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Create a task, await it, add a note.")
    parser.add_argument("--real", action="store_true", help="use Cobalt, not the simulator")
    anyio.run(main, parser.parse_args().real)
