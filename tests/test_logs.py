"""Log records carry their ids as ``extra`` fields; ``COBALT_LOG`` turns the logs on."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from cobalt_async import CobaltClient, InMemorySink, WebhookReceiver
from cobalt_async.testing import FakeCobalt, make_task_created_event, signed_delivery

pytestmark = pytest.mark.anyio

SECRET = "whsec_logs"
PHI = "Jane Doe 1961-04-02"
SCRIPT = """
import logging
import cobalt_async
logging.getLogger("cobalt_async.http").debug("a debug line")
logging.getLogger("cobalt_async").info("an info line")
"""


def run_with(value: str | None) -> str:
    """stderr of a fresh interpreter importing the package with ``COBALT_LOG=value``."""
    env = {key: val for key, val in os.environ.items() if key != "COBALT_LOG"}
    if value is not None:
        env["COBALT_LOG"] = value
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert 0 == result.returncode, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("value", "shown", "hidden"),
    [
        ("debug", ["a debug line", "an info line"], []),
        (" INFO ", ["an info line"], ["a debug line"]),
        (None, [], ["a debug line", "an info line"]),
    ],
)
def test_cobalt_log_shows_the_package_lines_at_its_level(
    value: str | None, shown: list[str], hidden: list[str]
) -> None:
    stderr = run_with(value)

    for line in shown:
        assert line in stderr
    for line in hidden:
        assert line not in stderr


def test_an_unknown_cobalt_log_value_says_what_it_takes() -> None:
    stderr = run_with("verbose")

    assert "COBALT_LOG='verbose' ignored: use debug or info" in stderr
    assert "a debug line" not in stderr


async def test_a_request_log_carries_method_path_status_and_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeCobalt(latency=0.01, receiver=WebhookReceiver(InMemorySink(), secrets=[SECRET]))
    caplog.set_level(logging.DEBUG, logger="cobalt_async")
    client = CobaltClient(base_url=fake.base_url, transport=fake.transport, **fake.credentials)
    async with fake, client:
        await client.tasks.create(patient_mrn="MRN-1", description=PHI)

    (record,) = [r for r in caplog.records if r.name == "cobalt_async.http"]
    assert ("POST", "/v1/tasks", 200, 1) == (
        record.cobalt_method,
        record.cobalt_path,
        record.cobalt_status,
        record.cobalt_attempt,
    )
    assert record.cobalt_elapsed_ms >= 0


async def test_a_webhook_log_carries_job_event_and_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = WebhookReceiver(InMemorySink(), secrets=[SECRET])
    event = make_task_created_event(job_id="4242", description=PHI)
    caplog.set_level(logging.DEBUG, logger="cobalt_async")

    await receiver.receive(*signed_delivery(event, SECRET))

    (record,) = [r for r in caplog.records if getattr(r, "cobalt_job_id", None) == "4242"]
    assert ("task.created", event["id"], "accepted") == (
        record.cobalt_event_type,
        record.cobalt_event_id,
        record.cobalt_answer,
    )
    assert all(PHI not in str(value) for value in vars(record).values())
