"""
Metric 6: HTTP requests per resolved job, counted at the fake, vs Cobalt's polling helper.

Cobalt's own Node helper polls ``GET /v1/webhook-events?job_id=`` every second: a 30 s job
costs 1 POST + 30 GETs. Waiting 30 s per job is not cheap, so time is scaled, for the job
latency, the helper's period and the SDK's poll policy alike (every field of the default
``PollPolicy``): one simulated second is ``Sizes.requests_time_unit`` real seconds.
"""

from __future__ import annotations

import dataclasses
import json

import anyio
import httpx

from cobalt_async import CobaltClient, InMemorySink, PollPolicy, WebhookReceiver
from cobalt_async._config import DEFAULT_POLL_POLICY
from cobalt_async.testing import FakeCobalt

from ._common import CREDENTIALS, WEBHOOK_SECRET, Metric, Sizes, Target
from ._submit import RAW_HEADERS, TASK, raw_body

NAME = "requests_per_job"
TITLE = "HTTP requests per resolved job, 30 s job latency, webhooks arriving (counted at the fake)"
TARGET = Target("value", "==", 1.0)
UNIT = "requests/job"

JOB_SECONDS = 30
HELPER_PERIOD = 1.0


def scaled(policy: PollPolicy, factor: float) -> PollPolicy:
    return dataclasses.replace(
        policy,
        interval=policy.interval * factor,
        max_interval=policy.max_interval * factor,
        silence=policy.silence * factor,
        max_silence=policy.max_silence * factor,
    )


def _fake(latency: float, receiver: WebhookReceiver | None) -> FakeCobalt:
    return FakeCobalt(
        **CREDENTIALS,
        webhook_secret=WEBHOOK_SECRET,
        receiver=receiver,
        latency=latency,
        job_id_type="str",
        seed=1,
    )


async def sdk_requests(
    jobs: int, latency: float, policy: PollPolicy, *, webhooks: bool
) -> tuple[float, int]:
    """Requests per job the SDK made (``tasks.create`` then ``await handle``); backstop polls."""
    sink = InMemorySink()
    receiver = WebhookReceiver(sink, secrets=[WEBHOOK_SECRET]) if webhooks else None
    async with _fake(latency, receiver) as fake:
        client = CobaltClient(
            **CREDENTIALS,
            base_url=fake.base_url,
            transport=fake.transport,
            sink=sink if webhooks else None,
            poll=policy,
            job_timeout=None,
        )
        async with client:

            async def one() -> None:
                handle = await client.tasks.create(**TASK)
                await handle

            async with anyio.create_task_group() as task_group:
                for _ in range(jobs):
                    task_group.start_soon(one)
            backstop_polls = client.sink.stats().backstop_polls
        await fake.drain()
        return fake.stats.requests / jobs, backstop_polls


async def helper_requests(jobs: int, latency: float, period: float) -> float:
    """Requests per job of Cobalt's helper: POST, then a GET every *period* until found."""
    async with (
        _fake(latency, None) as fake,
        httpx.AsyncClient(transport=fake.transport, base_url=fake.base_url) as http,
    ):
        body = raw_body()

        async def one() -> None:
            created = await http.post("/tasks", content=body, headers=RAW_HEADERS)
            job_id = str(json.loads(created.content)["job_id"])
            while True:
                await anyio.sleep(period)
                listing = await http.get(
                    "/webhook-events", params={"job_id": job_id}, headers=RAW_HEADERS
                )
                if listing.json()["webhook_events"]:
                    return

        async with anyio.create_task_group() as task_group:
            for _ in range(jobs):
                task_group.start_soon(one)
        return fake.stats.requests / jobs


async def measure(sizes: Sizes) -> Metric:
    jobs = sizes.requests_jobs
    unit = sizes.requests_time_unit
    latency = JOB_SECONDS * unit
    policy = scaled(DEFAULT_POLL_POLICY, unit)
    sdk, backstops = await sdk_requests(jobs, latency, policy, webhooks=True)
    short, _ = await sdk_requests(jobs, 0.05, DEFAULT_POLL_POLICY, webhooks=True)
    polling, _ = await sdk_requests(jobs, latency, policy, webhooks=False)
    helper = await helper_requests(jobs, latency, HELPER_PERIOD * unit)
    computed = 1 + JOB_SECONDS / HELPER_PERIOD
    return Metric(
        NAME,
        TITLE,
        sdk,
        computed,
        UNIT,
        TARGET,
        value_label="SDK with webhooks",
        baseline_label="Cobalt helper, 1 POST + 1 GET/s (computed)",
        details={
            "jobs per scenario": jobs,
            "time scale (real s per simulated s)": unit,
            f"SDK backstop GETs per job (first after {PollPolicy().silence:g} s of silence)": (
                backstops / jobs
            ),
            "SDK with webhooks, 50 ms job latency": short,
            "SDK without a sink (polling, default PollPolicy), 30 s job": polling,
            "Cobalt helper simulated, 30 s job": helper,
        },
    )
