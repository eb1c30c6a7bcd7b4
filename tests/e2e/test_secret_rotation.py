"""
A webhook secret rolled across ``uvicorn --workers 2`` sharing a RedisSink, without a restart.

Three real processes on loopback besides redis-server: the simulator (Cobalt) and two
workers of examples/fastapi_app.py, which read COBALT_WEBHOOK_SECRETS_FILE. The test
rotates the secret at the simulator with ``client.webhooks.rotate_secret(secrets_file=...)``
while tasks are in flight: every webhook, signed with the old secret and then the new one,
must be accepted by whichever worker gets it, and none refused.
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

from cobalt_async import CobaltClient
from tests.support import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.anyio, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
OLD_SECRET = "whsec_e2e_old"
STARTUP_DEADLINE = 30.0
CREDENTIALS = {"client_id": "ci_test", "client_secret": "cs_test", "access_token": "at_test"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def process(args: Sequence[str], log: Path, env: dict[str, str]) -> Iterator[Any]:
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
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                if proc.poll() is not None:
                    break
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    continue


def wait_until_serving(url: str, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    pytest.fail(f"{url} not serving after {STARTUP_DEADLINE:g} s:\n{log.read_text()[-3000:]}")


async def fire(app_url: str, first: int, count: int) -> list[httpx.Response]:
    """*count* concurrent ``POST /tasks`` with ``wait: true``, each on its own connection."""
    responses: list[httpx.Response] = []

    async def one(number: int) -> None:
        async with httpx.AsyncClient(base_url=app_url, timeout=90) as http:
            body = {"patient_mrn": f"MRN-{number}", "description": "d", "wait": True}
            responses.append(await http.post("/tasks", json={**body, "timeout_s": 60}))

    async with anyio.create_task_group() as tg:
        for number in range(first, first + count):
            tg.start_soon(one, number)
    return responses


def succeeded(responses: list[httpx.Response]) -> list[str]:
    return [r.json().get("status", r.text) if r.status_code == 200 else r.text for r in responses]


async def test_two_workers_take_the_new_secret_without_a_restart(
    fresh_redis_server: Any, tmp_path: Path
) -> None:
    secrets_file = tmp_path / "webhook-secrets"
    secrets_file.write_text(OLD_SECRET + "\n")
    cobalt_port, app_port = free_port(), free_port()
    cobalt_url, app_url = f"http://127.0.0.1:{cobalt_port}", f"http://127.0.0.1:{app_port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("COBALT_")}
    env.pop("REDIS_URL", None)
    app_env = {
        **env,
        "COBALT_BASE_URL": cobalt_url + "/v1",
        **{f"COBALT_{name.upper()}": value for name, value in CREDENTIALS.items()},
        "COBALT_WEBHOOK_SECRETS_FILE": str(secrets_file),
        "REDIS_URL": fresh_redis_server.url,
    }
    simulate = [
        *("-m", "cobalt_async", "simulate", "--port", str(cobalt_port), "--seed", "3"),
        *("--webhook-url", f"{app_url}/webhooks/cobalt", "--secret", OLD_SECRET),
    ]
    uvicorn = [
        *("-m", "uvicorn", "examples.fastapi_app:app", "--workers", "2"),
        *("--host", "127.0.0.1", "--port", str(app_port), "--log-level", "warning"),
    ]
    cobalt_log, app_log = tmp_path / "simulate.log", tmp_path / "uvicorn.log"
    with ExitStack() as stack:
        cobalt = stack.enter_context(process(simulate, cobalt_log, env))
        app = stack.enter_context(process(uvicorn, app_log, app_env))
        wait_until_serving(f"{cobalt_url}/v1/webhook-events", cobalt, cobalt_log)
        wait_until_serving(f"{app_url}/healthz", app, app_log)
        async with CobaltClient(base_url=cobalt_url + "/v1", **CREDENTIALS) as client:
            with anyio.fail_after(150):
                hook = await client.webhooks.create("https://example.com/webhooks/cobalt")
                assert hook.id is not None
                before = await fire(app_url, 0, 20)
                async with anyio.create_task_group() as tg:
                    during: list[httpx.Response] = []

                    async def traffic() -> None:
                        during.extend(await fire(app_url, 100, 30))

                    tg.start_soon(traffic)
                    rotated = await client.webhooks.rotate_secret(
                        hook.id, secrets_file=secrets_file
                    )
                after = await fire(app_url, 200, 20)
    assert rotated.secret is not None
    assert rotated.secret.get_secret_value() in secrets_file.read_text()
    assert succeeded(before + during + after) == ["succeeded"] * 70
    deliveries = [
        line for line in cobalt_log.read_text().splitlines() if line.startswith("webhook ")
    ]
    assert len(deliveries) >= 70
    # Every webhook accepted by a worker (a 503 is a hold, retried by the simulator): none
    # refused with 401, and none resolved by polling Cobalt instead.
    assert [line for line in deliveries if "-> 401" in line] == []
    assert "GET /v1/webhook-events -> 200" not in cobalt_log.read_text()
    assert "Traceback" not in app_log.read_text()
