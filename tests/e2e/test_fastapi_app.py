"""
examples/fastapi_app.py served by uvicorn against ``python -m cobalt_async simulate``.

Two real processes on loopback: the simulator (Cobalt) delivers signed webhooks over HTTP to
the app, whose ``POST /tasks`` routes await them. 200 requests at once must all come back
with their ``emr_task_id``, also with duplicate and early deliveries.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.support import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.anyio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_e2e"
CONCURRENCY = 200
STARTUP_DEADLINE = 30.0


@pytest.fixture
def anyio_backend() -> str:
    """httpx's client side only; the servers under test run in their own processes."""
    return "asyncio"


@contextmanager
def process(
    args: Sequence[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run *args* in its own process group; stop the whole group, however the test ends."""
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll *url* until it answers anything, within a deadline."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited with {proc.returncode}:\n{tail(log)}")
        try:
            httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    pytest.fail(f"{url} not serving after {STARTUP_DEADLINE:g} s:\n{tail(log)}")


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def stack_of(
    simulate_flags: Sequence[str],
    tmp_path: Path,
    *,
    workers: int = 1,
    redis_url: str | None = None,
    database_url: str | None = None,
    measured: bool = True,
) -> Iterator[str]:
    """
    Start the simulator and the example app; yield the app's base URL. Logs: *tmp_path*.

    ``measured=False`` keeps coverage out of both servers: its tracing multiplies their CPU
    time, which on a 2-core machine pushes deliveries past Cobalt's 5 s deadline.
    """
    cobalt_port, app_port = free_port(), free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("COBALT_") and (measured or "COVERAGE" not in key)
    }
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    app_env = {
        **env,
        "COBALT_BASE_URL": f"http://127.0.0.1:{cobalt_port}/v1",
        "COBALT_CLIENT_ID": "ci_test",
        "COBALT_CLIENT_SECRET": "cs_test",
        "COBALT_ACCESS_TOKEN": "at_test",
        "COBALT_WEBHOOK_SECRET": SECRET,
        **({"REDIS_URL": redis_url} if redis_url else {}),
        **({"DATABASE_URL": database_url} if database_url else {}),
    }
    simulate = [
        *("-m", "cobalt_async", "simulate", "--port", str(cobalt_port)),
        *("--webhook-url", f"{app_url}/webhooks/cobalt", "--secret", SECRET, "--seed", "7"),
        *simulate_flags,
    ]
    uvicorn = [
        *("-m", "uvicorn", "examples.fastapi_app:app"),
        *("--host", "127.0.0.1", "--port", str(app_port), "--log-level", "warning"),
        *(("--workers", str(workers)) if workers > 1 else ()),
    ]
    with ExitStack() as stack:
        cobalt_log, app_log = tmp_path / "simulate.log", tmp_path / "uvicorn.log"
        cobalt = stack.enter_context(process(simulate, cobalt_log, env))
        app = stack.enter_context(process(uvicorn, app_log, app_env))
        wait_until_serving(f"http://127.0.0.1:{cobalt_port}/v1/webhook-events", cobalt, cobalt_log)
        wait_until_serving(f"{app_url}/healthz", app, app_log)
        try:
            yield app_url
        except BaseException:
            print(f"--- simulate ---\n{tail(cobalt_log)}\n--- uvicorn ---\n{tail(app_log)}")
            raise


async def create_task(http: httpx.AsyncClient, number: int) -> httpx.Response:
    body = {
        "patient_mrn": f"MRN-{number}",
        "description": f"Call back #{number}",
        "wait": True,
        "timeout_s": 60,
    }
    return await http.post("/tasks", json=body)


async def fire(app_url: str, count: int) -> list[httpx.Response]:
    """*count* concurrent ``POST /tasks`` with ``wait: true``."""
    responses: list[httpx.Response] = []

    async def one(http: httpx.AsyncClient, number: int) -> None:
        responses.append(await create_task(http, number))

    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=app_url, timeout=90, limits=limits) as http:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for number in range(count):
                    tg.start_soon(one, http, number)
    return responses


def assert_all_resolved(responses: list[httpx.Response], count: int, tmp_path: Path) -> None:
    problems = [(r.status_code, r.text) for r in responses if r.status_code != 200]
    assert [] == problems
    bodies = [response.json() for response in responses]
    assert count == len({body["job_id"] for body in bodies})
    assert {"succeeded"} == {body["status"] for body in bodies}
    assert all(body.get("emr_task_id") for body in bodies)
    # The simulator logs each delivery as "webhook <type> job_id=.. attempt=.. -> <status>".
    log = (tmp_path / "simulate.log").read_text().splitlines()
    # A 503 (the sink was slow to store, under this 2-core load) is by design: it earns
    # Cobalt's single retry. Anything else would be a delivery lost for good.
    refused = [
        line
        for line in log
        if line.startswith("webhook ") and not line.endswith(("-> 200", "-> 503"))
    ]
    assert [] == refused
    assert "Traceback" not in (tmp_path / "uvicorn.log").read_text()


@pytest.mark.parametrize(
    "simulate_flags",
    [
        pytest.param([], id="clean"),
        pytest.param(["--duplicate-rate", "0.1", "--early-rate", "0.1"], id="duplicate-early"),
    ],
)
async def test_concurrent_tasks_all_resolve(simulate_flags: list[str], tmp_path: Path) -> None:
    """200 concurrent ``POST /tasks`` with ``wait: true`` each return their ``emr_task_id``."""
    with stack_of(simulate_flags, tmp_path) as app_url:
        responses = await fire(app_url, CONCURRENCY)
    assert_all_resolved(responses, CONCURRENCY, tmp_path)


@pytest.mark.redis
async def test_three_workers_share_outcomes_through_redis(
    fresh_redis_server: Any, tmp_path: Path
) -> None:
    """
    ``uvicorn --workers 3`` with REDIS_URL: 300 concurrent waits all get their outcome.

    The simulator posts each webhook to whichever worker the kernel hands the connection,
    mostly not the one whose request awaits it: only the shared RedisSink joins them.
    Five processes share the machine here, so the servers run without coverage tracing
    (the single-worker tests above trace the same code).
    """
    flags = ["--duplicate-rate", "0.1", "--early-rate", "0.1"]
    redis_url = fresh_redis_server.url
    with stack_of(flags, tmp_path, workers=3, redis_url=redis_url, measured=False) as app_url:
        responses = await fire(app_url, 300)
    assert_all_resolved(responses, 300, tmp_path)
    # Resolved by the webhooks through Redis, not by the backstop polling Cobalt (which
    # an InMemorySink per worker would need for two webhooks in three).
    log = (tmp_path / "simulate.log").read_text()
    assert "GET /v1/webhook-events -> 200" not in log


async def test_three_workers_share_outcomes_through_a_database_url_sqlite_file(
    tmp_path: Path,
) -> None:
    """The same with ``DATABASE_URL=sqlite:///...``: one file joins the three workers."""
    flags = ["--duplicate-rate", "0.1", "--early-rate", "0.1"]
    url = f"sqlite:///{tmp_path}/cobalt.db"
    with stack_of(flags, tmp_path, workers=3, database_url=url, measured=False) as app_url:
        responses = await fire(app_url, 300)
    assert_all_resolved(responses, 300, tmp_path)
    log = (tmp_path / "simulate.log").read_text()
    assert "GET /v1/webhook-events -> 200" not in log
    assert (tmp_path / "cobalt.db").stat().st_size > 0
