"""
examples/fastapi_app.py served by uvicorn against ``python -m cobalt_async simulate``.

Two real processes on loopback: the simulator (Cobalt) delivers signed webhooks over HTTP to
the app, whose ``POST /tasks`` routes await them. 200 requests at once must all come back
with their ``emr_task_id``, also with duplicate and early deliveries.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.anyio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_e2e"
CONCURRENCY = 200
STARTUP_DEADLINE = 30.0


@pytest.fixture
def anyio_backend() -> str:
    """httpx's client side only; the servers under test run in their own processes."""
    return "asyncio"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def simulate_available() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "cobalt_async", "simulate", "--help"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    return result.returncode == 0


@contextmanager
def stack_of(simulate_flags: Sequence[str], tmp_path: Path) -> Iterator[str]:
    """Start the simulator and the example app; yield the app's base URL. Logs: *tmp_path*."""
    cobalt_port, app_port = free_port(), free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("COBALT_")}
    env.pop("REDIS_URL", None)
    app_env = {
        **env,
        "COBALT_BASE_URL": f"http://127.0.0.1:{cobalt_port}/v1",
        "COBALT_CLIENT_ID": "ci_test",
        "COBALT_CLIENT_SECRET": "cs_test",
        "COBALT_ACCESS_TOKEN": "at_test",
        "COBALT_WEBHOOK_SECRET": SECRET,
    }
    simulate = [
        *("-m", "cobalt_async", "simulate", "--port", str(cobalt_port)),
        *("--webhook-url", f"{app_url}/webhooks/cobalt", "--secret", SECRET, "--seed", "7"),
        *simulate_flags,
    ]
    uvicorn = [
        *("-m", "uvicorn", "examples.fastapi_app:app"),
        *("--host", "127.0.0.1", "--port", str(app_port), "--log-level", "warning"),
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


@pytest.mark.parametrize(
    "simulate_flags",
    [
        pytest.param([], id="clean"),
        pytest.param(["--duplicate-rate", "0.1", "--early-rate", "0.1"], id="duplicate-early"),
    ],
)
async def test_concurrent_tasks_all_resolve(simulate_flags: list[str], tmp_path: Path) -> None:
    """200 concurrent ``POST /tasks`` with ``wait: true`` each return their ``emr_task_id``."""
    if not simulate_available():
        pytest.skip("`python -m cobalt_async simulate` is not available")
    responses: list[httpx.Response] = []

    async def one(http: httpx.AsyncClient, number: int) -> None:
        responses.append(await create_task(http, number))

    with stack_of(simulate_flags, tmp_path) as app_url:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=app_url, timeout=90, limits=limits) as http:
            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for number in range(CONCURRENCY):
                        tg.start_soon(one, http, number)

    problems = [(r.status_code, r.text) for r in responses if r.status_code != 200]
    assert [] == problems
    bodies = [response.json() for response in responses]
    assert CONCURRENCY == len({body["job_id"] for body in bodies})
    assert {"succeeded"} == {body["status"] for body in bodies}
    assert all(body.get("emr_task_id") for body in bodies)
    # The simulator logs each delivery as "webhook <type> job_id=.. attempt=.. -> <status>".
    log = (tmp_path / "simulate.log").read_text().splitlines()
    refused = [line for line in log if line.startswith("webhook ") and not line.endswith("-> 200")]
    assert [] == refused
    assert "Traceback" not in (tmp_path / "uvicorn.log").read_text()
