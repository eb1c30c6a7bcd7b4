"""``app_with_fake``: a FastAPI app under test whose Cobalt is the fake, webhooks and all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request

from cobalt_async import ConfigurationError, InMemorySink
from cobalt_async.fastapi import CobaltDep, app_client, cobalt_lifespan, webhook_router
from cobalt_async.testing import FakeCobalt, app_with_fake
from examples.fastapi_minimal import app as minimal_app

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_environment")]

TASK = {"patient_mrn": "MRN-1", "description": "Call back about labs"}


async def test_the_readme_app_creates_a_task_resolved_by_its_own_webhook_route(
    fake_cobalt: FakeCobalt,
) -> None:
    """No credentials or secret in the environment: the helper wires app and fake together."""
    with anyio.fail_after(20):
        async with app_with_fake(minimal_app, fake_cobalt) as http:
            response = await http.post("/tasks", json=TASK)
            sink = app_client(minimal_app).sink
            await fake_cobalt.drain()  # the delivery is counted once the app has answered it

    assert 200 == response.status_code, response.text
    (created,) = [event for event in fake_cobalt.events if event["type"] == "task.created"]
    assert {"job_id": created["job_id"], "emr_task_id": created["data"]["emr_task_id"]} == (
        response.json()
    )
    assert 1 == fake_cobalt.stats.deliveries_succeeded  # through the app's route, over ASGI
    assert 0 == sink.stats().backstop_polls


async def test_the_fake_delivers_to_its_own_receiver_again_afterwards(
    fake_cobalt: FakeCobalt,
) -> None:
    receiver = fake_cobalt.receiver
    async with app_with_fake(minimal_app, fake_cobalt):
        assert fake_cobalt.receiver is None
    assert (receiver, None) == (fake_cobalt.receiver, fake_cobalt.webhook_url)


async def test_the_apps_own_settings_and_lifespan_state_are_kept(fake_cobalt: FakeCobalt) -> None:
    """The fake's wiring wins over the app's arguments; the app's own lifespan still runs."""

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        yield {"greeting": "hello"}

    lifespan = cobalt_lifespan(
        sink=InMemorySink(),
        client_id="ci_prod",
        http_client=httpx.AsyncClient(),
        job_timeout=30,
        lifespan=own,
    )
    app = FastAPI(lifespan=lifespan)
    app.include_router(webhook_router("/hooks"))

    @app.get("/state")
    async def state(request: Request, client: CobaltDep) -> dict[str, str]:
        handle = await client.tasks.create(**TASK)
        await handle.wait(timeout=10)
        return {"greeting": request.state.greeting, "via": str(handle.resolved_via)}

    with anyio.fail_after(20):
        async with app_with_fake(app, fake_cobalt, webhook_path="/hooks") as http:
            response = await http.get("/state")

    assert {"greeting": "hello", "via": "webhook"} == response.json()


async def test_each_run_gets_a_fresh_sink_unless_given_one(fake_cobalt: FakeCobalt) -> None:
    """A module-level app keeps its sink between tests; the helper does not let it leak."""
    given = InMemorySink()
    async with app_with_fake(minimal_app, fake_cobalt):
        first = app_client(minimal_app).sink
    async with app_with_fake(minimal_app, fake_cobalt):
        second = app_client(minimal_app).sink
    async with app_with_fake(minimal_app, fake_cobalt, sink=given):
        assert given is app_client(minimal_app).sink

    assert first is not second
    assert isinstance(first, InMemorySink)


async def test_a_missing_webhook_route_is_named(fake_cobalt: FakeCobalt) -> None:
    app = FastAPI(lifespan=cobalt_lifespan(sink=InMemorySink()))

    with pytest.raises(ConfigurationError, match=r"no route at '/webhooks/cobalt'.*webhook_path="):
        async with app_with_fake(app, fake_cobalt):
            pass
