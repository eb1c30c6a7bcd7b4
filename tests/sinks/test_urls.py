"""``sink_from_url`` and ``cobalt_lifespan(database_url=)``: the sink a deployment's URL names."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from cobalt_async import ConfigurationError
from cobalt_async.fastapi import app_client, cobalt_lifespan, webhook_router
from cobalt_async.sinks import InMemorySink, PostgresSink, RedisSink, SQLiteSink, sink_from_url
from cobalt_async.testing import make_task_created_event, signed_delivery

pytestmark = pytest.mark.anyio

SECRET = "whsec_urls"


def test_each_scheme_builds_its_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(sink_from_url("redis://127.0.0.1:6379/0"), RedisSink)
    assert isinstance(sink_from_url("rediss://user:pw@cache.internal:6380/1"), RedisSink)
    assert isinstance(sink_from_url("memory://"), InMemorySink)
    assert isinstance(sink_from_url("postgresql://app:pw@db.internal:5432/app"), PostgresSink)
    assert isinstance(sink_from_url("postgres://app@db.internal/app?sslmode=require"), PostgresSink)
    relative = sink_from_url("sqlite:///cobalt.db")
    absolute = sink_from_url(f"sqlite:///{tmp_path}/other%20name.db")
    assert isinstance(relative, SQLiteSink)
    assert isinstance(absolute, SQLiteSink)
    assert str(tmp_path / "cobalt.db") == relative.path
    assert str(tmp_path / "other name.db") == absolute.path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://admin:hunter2@db.internal/app", r"no sink for mysql://\.\.\."),
        ("cobalt.db", "a value without a scheme"),
        ("sqlite://", "names a file"),
        ("sqlite:///cobalt.db?mode=ro", "names a file"),
        ("sqlite:///no/such/directory/cobalt.db", "directory does not exist"),
    ],
)
def test_a_url_no_sink_serves_is_refused_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        sink_from_url(url)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_lifespan_stores_webhooks_in_the_database_url_sqlite_file(
    tmp_path: Path,
) -> None:
    """The route stores into the file; another SQLiteSink on the file (a worker) reads it."""
    url = f"sqlite:///{tmp_path}/cobalt.db"
    credentials = {"client_id": "ci", "client_secret": "cs", "access_token": "at"}
    lifespan = cobalt_lifespan(database_url=url, webhook_secrets=[SECRET], **credentials)
    app = FastAPI(lifespan=lifespan)
    app.include_router(webhook_router())
    body, headers = signed_delivery(make_task_created_event(job_id="77"), SECRET)
    with anyio.fail_after(10):
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://app.test"
            ) as http,
        ):
            assert isinstance(app_client(app).sink, SQLiteSink)
            answer = await http.post("/webhooks/cobalt", content=body, headers=headers)
        async with SQLiteSink(tmp_path / "cobalt.db") as worker:
            stored = await worker.get_outcomes(["77"])
    assert 200 == answer.status_code
    assert "task.created" == stored["77"].event.type


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncpg runs on asyncio only
async def test_the_lifespan_stores_webhooks_in_the_database_url_postgres_database(
    postgres_server: Any,
) -> None:
    """``database_url="postgresql://..."``: a PostgresSink; another one (a pod) reads it."""
    job_id = f"pg-{uuid.uuid4().hex[:8]}"  # the session's cluster is shared by other tests
    credentials = {"client_id": "ci", "client_secret": "cs", "access_token": "at"}
    lifespan = cobalt_lifespan(
        database_url=postgres_server.dsn, webhook_secrets=[SECRET], **credentials
    )
    app = FastAPI(lifespan=lifespan)
    app.include_router(webhook_router())
    body, headers = signed_delivery(make_task_created_event(job_id=job_id), SECRET)
    with anyio.fail_after(20):
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://app.test"
            ) as http,
        ):
            assert isinstance(app_client(app).sink, PostgresSink)
            answer = await http.post("/webhooks/cobalt", content=body, headers=headers)
        async with PostgresSink(postgres_server.dsn) as pod:
            stored = await pod.get_outcomes([job_id])
    assert 200 == answer.status_code
    assert "task.created" == stored[job_id].event.type
