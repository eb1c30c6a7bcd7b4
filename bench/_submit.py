"""Metric 1: submission throughput, ``client.tasks.create`` vs raw ``httpx`` POSTs."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx

from cobalt_async import CobaltClient, InMemorySink
from cobalt_async._client import DEFAULT_LIMITS
from cobalt_async.models import TaskCreateParams, TaskCreateRequest

from ._common import CREDENTIALS, Metric, Sizes, Target, median
from ._procs import Simulator, simulator

NAME = "submit_throughput"
TITLE = "client.tasks.create vs raw httpx POST, same fake server in another process"
TARGET = Target("ratio", ">=", 0.90)
UNIT = "req/s"

TASK: TaskCreateParams = {
    "patient_mrn": "MRN-12345",
    "description": "Schedule a follow-up to review recent labs.",
}
RAW_HEADERS: dict[str, str] = {
    "client_id": CREDENTIALS["client_id"],
    "client_secret": CREDENTIALS["client_secret"],
    "access_token": CREDENTIALS["access_token"],
    "accept": "application/json",
    "content-type": "application/json",
}

Op = Callable[[], Awaitable[object]]


def raw_body() -> bytes:
    """The body the SDK sends for ``TASK``, byte for byte."""
    body = TaskCreateRequest.model_validate(TASK).model_dump_json(exclude_none=True).encode()
    assert json.loads(body) == TASK
    return body


def sdk_client(base_url: str) -> CobaltClient:
    return CobaltClient(**CREDENTIALS, base_url=base_url, sink=InMemorySink(), max_retries=0)


def sdk_op(client: CobaltClient) -> Op:
    async def create() -> object:
        return await client.tasks.create(**TASK)

    return create


def raw_op(http: httpx.AsyncClient, base_url: str) -> Op:
    url, body = f"{base_url}/tasks", raw_body()

    async def post() -> object:
        response = await http.post(url, content=body, headers=RAW_HEADERS)
        response.raise_for_status()
        return json.loads(response.content)["job_id"]

    return post


async def run_round(op: Op, requests: int, concurrency: int) -> tuple[float, float]:
    """Send *requests* with *concurrency* in flight; ``(requests/s, client CPU s/request)``."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await op()

    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as task_group:
        for _ in range(concurrency):
            task_group.start_soon(worker)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu / requests


_ACCEPTED = json.dumps(
    {"success": True, "message": "Task processing.", "task_id": "a1b2c3", "job_id": 12345}
).encode()


def _accept(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=_ACCEPTED, headers={"content-type": "application/json"})


async def offline_overhead(requests: int, rounds: int) -> tuple[float, float]:
    """
    CPU seconds per create, SDK and raw, through an ``httpx.MockTransport``: no sockets, no
    server, so the SDK's own work (validation, serialisation, handle) stands out.
    """
    transport = httpx.MockTransport(_accept)
    base_url = "http://cobalt.test/v1"
    client = CobaltClient(
        **CREDENTIALS, base_url=base_url, transport=transport, sink=InMemorySink()
    )
    async with client, httpx.AsyncClient(transport=transport) as http:
        ops = {"sdk": sdk_op(client), "raw": raw_op(http, base_url)}
        cpus: dict[str, list[float]] = {"sdk": [], "raw": []}
        for op in ops.values():
            await run_round(op, min(requests, 200), 1)
        for index in range(rounds):
            for kind in ("sdk", "raw") if index % 2 == 0 else ("raw", "sdk"):
                cpus[kind].append((await run_round(ops[kind], requests, 1))[1])
    return median(cpus["sdk"]), median(cpus["raw"])


async def offline_batch(requests: int, rounds: int, concurrency: int) -> tuple[float, float]:
    """CPU seconds per job through an ``httpx.MockTransport``: create_many, raw workers."""
    transport = httpx.MockTransport(_accept)
    base_url = "http://cobalt.test/v1"
    client = CobaltClient(
        **CREDENTIALS, base_url=base_url, transport=transport, sink=InMemorySink()
    )
    async with client, httpx.AsyncClient(transport=transport) as http:
        raw = raw_op(http, base_url)
        await _batch_round(client, min(requests, 200), concurrency)
        await run_round(raw, min(requests, 200), concurrency)
        cpus: dict[str, list[float]] = {"sdk": [], "raw": []}
        for index in range(rounds):
            for kind in ("sdk", "raw") if index % 2 == 0 else ("raw", "sdk"):
                if kind == "sdk":
                    cpus[kind].append(await _batch_round(client, requests, concurrency))
                else:
                    cpus[kind].append((await run_round(raw, requests, concurrency))[1])
    return median(cpus["sdk"]), median(cpus["raw"])


async def measure(sizes: Sizes) -> list[Metric]:
    with simulator(cli=sizes.cli_simulator) as server:
        metric = await _measure(sizes, server)
        batch = await _measure_batch(sizes, server)
    batch_sdk, batch_raw = await offline_batch(sizes.submit_requests, 5, sizes.submit_concurrency)
    batch.details["no network (MockTransport): CPU us/job create_many"] = batch_sdk * 1e6
    batch.details["no network (MockTransport): CPU us/POST raw workers"] = batch_raw * 1e6
    batch.details["no network: ratio raw/create_many"] = batch_raw / batch_sdk
    offline_sdk, offline_raw = await offline_overhead(sizes.submit_requests, 5)
    metric.details["no network (MockTransport): CPU us/create SDK"] = offline_sdk * 1e6
    metric.details["no network (MockTransport): CPU us/POST raw"] = offline_raw * 1e6
    metric.details["SDK's own CPU per create, us"] = (offline_sdk - offline_raw) * 1e6
    return [metric, batch]


async def _batch_round(client: CobaltClient, requests: int, concurrency: int) -> float:
    """CPU seconds per job of one ``create_many`` of *requests* items."""
    items = [TASK] * requests
    cpu = time.process_time()
    results = await client.tasks.create_many(items, concurrency=concurrency)
    cpu = time.process_time() - cpu
    if len(results) != requests or not all(hasattr(result, "job_id") for result in results):
        raise RuntimeError("create_many did not get a handle for every item")
    return cpu / requests


async def _measure_batch(sizes: Sizes, server: Simulator) -> Metric:
    """``create_many`` CPU per job vs *concurrency* workers looping over raw httpx POSTs."""
    n, concurrency = sizes.submit_requests, sizes.submit_concurrency
    cpus: dict[str, list[float]] = {"sdk": [], "raw": []}
    async with (
        sdk_client(server.url) as client,
        httpx.AsyncClient(limits=DEFAULT_LIMITS, timeout=30.0) as http,
    ):
        raw = raw_op(http, server.url)
        await _batch_round(client, min(n, 100), concurrency)  # warm-up
        await run_round(raw, min(n, 100), concurrency)
        for index in range(sizes.submit_rounds):
            for kind in ("sdk", "raw") if index % 2 == 0 else ("raw", "sdk"):
                if kind == "sdk":
                    cpus[kind].append(await _batch_round(client, n, concurrency))
                else:
                    cpus[kind].append((await run_round(raw, n, concurrency))[1])
    pairs = [theirs / mine for mine, theirs in zip(cpus["sdk"], cpus["raw"], strict=True)]
    return Metric(
        "create_many_cpu",
        f"client CPU per job: tasks.create_many(concurrency={concurrency}) vs "
        f"{concurrency} workers looping over raw httpx POSTs",
        1 / median(cpus["sdk"]),
        1 / median(cpus["raw"]),
        "jobs/CPU-s",
        TARGET,
        value_label="create_many",
        baseline_label="raw httpx workers",
        details={
            "paired rounds (order alternated)": sizes.submit_rounds,
            "jobs per round": n,
            "client CPU us/job create_many": median(cpus["sdk"]) * 1e6,
            "client CPU us/POST raw": median(cpus["raw"]) * 1e6,
        },
        paired_ratio=median(pairs),
    )


async def _measure(sizes: Sizes, server: Simulator) -> Metric:
    n, concurrency = sizes.submit_requests, sizes.submit_concurrency
    rates: dict[str, list[float]] = {"sdk": [], "raw": []}
    cpus: dict[str, list[float]] = {"sdk": [], "raw": []}
    pair_ratios: list[float] = []
    server_cpu_start = server.cpu_seconds()
    started = time.perf_counter()
    async with (
        sdk_client(server.url) as client,
        httpx.AsyncClient(limits=DEFAULT_LIMITS, timeout=30.0) as http,
    ):
        ops = {"sdk": sdk_op(client), "raw": raw_op(http, server.url)}
        for op in ops.values():  # warm-up: connections, imports, caches
            await run_round(op, min(n, 100), concurrency)
        for index in range(sizes.submit_rounds):
            # Alternate which goes first, so neither always runs on a warmer server.
            order = ("sdk", "raw") if index % 2 == 0 else ("raw", "sdk")
            result = {}
            for kind in order:
                result[kind] = await run_round(ops[kind], n, concurrency)
                rates[kind].append(result[kind][0])
                cpus[kind].append(result[kind][1])
            pair_ratios.append(result["sdk"][0] / result["raw"][0])
    elapsed = time.perf_counter() - started
    server_cpu_end = server.cpu_seconds()
    details: dict[str, object] = {
        "paired rounds (order alternated)": sizes.submit_rounds,
        "requests per round": n,
        "concurrency": concurrency,
        "simulator": "python -m cobalt_async simulate"
        if sizes.cli_simulator
        else "bench._simserver (FakeCobalt, uvicorn, TCP_NODELAY)",
        "ratio of medians": median(rates["sdk"]) / median(rates["raw"]),
        "client CPU us/request SDK": median(cpus["sdk"]) * 1e6,
        "client CPU us/request raw": median(cpus["raw"]) * 1e6,
        "client CPU ratio raw/SDK": median(cpus["raw"]) / median(cpus["sdk"]),
    }
    if server_cpu_start is not None and server_cpu_end is not None:
        # Near 1.0 the server is the bottleneck and the throughput ratio is compressed.
        details["simulator CPU utilisation"] = (server_cpu_end - server_cpu_start) / elapsed
    return Metric(
        NAME,
        TITLE,
        median(rates["sdk"]),
        median(rates["raw"]),
        UNIT,
        TARGET,
        value_label="SDK",
        baseline_label="raw httpx",
        details=details,
        paired_ratio=median(pair_ratios),
    )
