"""FastAPI wiring: the webhook router (docs/webhooks.md), the lifespan, the dependency, examples."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request

import cobalt_async.fastapi
from cobalt_async import (
    CobaltClient,
    ConfigurationError,
    Event,
    InMemorySink,
    TaskCreatedEvent,
)
from cobalt_async.fastapi import (
    CobaltDep,
    app_client,
    cobalt_lifespan,
    get_client,
    webhook_router,
)
from cobalt_async.testing import FakeCobalt, make_task_created_event, signed_delivery
from tests.support import (
    CHUNK,
    DELIVERY_CASES,
    LIMIT,
    SECRET,
    Case,
    Driver,
    EndlessBody,
    FakeClock,
    HangingSink,
    UnavailableSink,
    check_case,
    http_scope,
    request_messages,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_environment")]

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"client_id": "ci_test", "client_secret": "cs_test", "access_token": "at_test"}
ENV = {
    "COBALT_CLIENT_ID": "ci_test",
    "COBALT_CLIENT_SECRET": "cs_test",
    "COBALT_ACCESS_TOKEN": "at_test",
    "COBALT_WEBHOOK_SECRET": SECRET,
}
WEBHOOK_PATH = "/webhooks/cobalt"


def make_app(*, router: bool = True, **config: Any) -> FastAPI:
    """An app with the Cobalt lifespan, the webhook route, and a route using the client."""
    app = FastAPI(lifespan=cobalt_lifespan(**{**CREDENTIALS, **config}))
    if router:
        app.include_router(webhook_router(WEBHOOK_PATH))

    @app.get("/client")
    async def client_id(client: CobaltDep) -> int:
        return id(client)

    return app


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and talk to it in-process."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
            yield http


def poster(http: httpx.AsyncClient) -> Callable[[bytes, dict[str, str]], Any]:
    async def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await http.post(WEBHOOK_PATH, content=body, headers=headers)

    return post


# -- the webhook route: every row of docs/webhooks.md ----------------------------------------


@pytest.mark.parametrize("case", DELIVERY_CASES, ids=lambda case: case.id)
async def test_receiver_table(case: Case) -> None:
    """Each row of docs/webhooks.md gets its status through the router, as through the ASGI app."""
    sink, hooked = InMemorySink(), list[Event]()
    app = make_app(sink=sink, webhook_secrets=[SECRET], on_event=hooked.append)

    async with serve(app) as http:
        await check_case(case, poster(http), sink, hooked)


async def test_early_arrival_resolves_a_handle_attached_later() -> None:
    """A webhook before anyone waits is kept; a handle attached afterwards resolves from it."""
    app = make_app(webhook_secrets=[SECRET])
    event = make_task_created_event(job_id="7", emr_task_id="emr-7")

    async with serve(app) as http:
        await poster(http)(*signed_delivery(event, SECRET))
        handle = app_client(app).jobs.attach(7, "task")
        result = await handle.wait(timeout=1)

    assert ("emr-7", "webhook") == (result.data.emr_task_id, handle.resolved_via)


@pytest.mark.parametrize("sink_class", [UnavailableSink, HangingSink])
async def test_sink_that_cannot_store_answers_503_in_time(sink_class: type[InMemorySink]) -> None:
    """A sink outage or hang is a 503 within the receiver's 1.5 s, so Cobalt's retry lands."""
    app = make_app(sink=sink_class(), webhook_secrets=[SECRET])

    async with serve(app) as http:
        with anyio.fail_after(2.5):
            response = await poster(http)(*signed_delivery(make_task_created_event(), SECRET))

    assert (503, {"status": "unavailable"}) == (response.status_code, response.json())


async def test_endless_chunked_body_gets_413_without_reading_the_rest() -> None:
    """The route streams the raw body: past the limit it answers, without reading on."""
    body = EndlessBody()
    app = make_app(webhook_secrets=[SECRET])

    async with serve(app) as http:
        with anyio.fail_after(5):
            response = await http.send(body.request(f"http://app.test{WEBHOOK_PATH}"))

    assert (413, {"status": "too_large"}) == (response.status_code, response.json())
    assert LIMIT // CHUNK + 1 == body.chunks


async def test_declared_length_over_limit_is_refused_before_reading() -> None:
    """A Content-Length over the limit gets 413 before the body is read."""
    driver = Driver([])
    scope = http_scope(headers=[(b"content-length", str(LIMIT + 1).encode())])
    scope["path"] = scope["raw_path"] = WEBHOOK_PATH
    app = make_app(webhook_secrets=[SECRET])

    async with LifespanManager(app) as manager:
        await driver.run(manager.app, scope)

    assert (413, 0) == (driver.status, driver.received)


async def test_other_methods_get_405_allow_post() -> None:
    """Only POST is routed to the receiver."""
    async with serve(make_app(webhook_secrets=[SECRET])) as http:
        response = await http.get(WEBHOOK_PATH)

    assert (405, "POST") == (response.status_code, response.headers["allow"])


async def test_hook_runs_after_the_response_is_sent() -> None:
    """The on_event hook is a background task: Cobalt has its answer first."""
    driver = Driver([])
    seen: list[bool] = []
    app = make_app(webhook_secrets=[SECRET], on_event=lambda event: seen.append(driver.answered))
    body, headers = signed_delivery(make_task_created_event(), SECRET)
    driver.incoming = request_messages(body)
    scope = http_scope(headers=[(name.encode(), value.encode()) for name, value in headers.items()])
    scope["path"] = scope["raw_path"] = WEBHOOK_PATH

    async with LifespanManager(app) as manager:
        await driver.run(manager.app, scope)

    assert ([True], 200) == (seen, driver.status)


async def test_hook_failure_is_logged_not_answered(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises is logged; Cobalt still gets its 200."""

    def hook(event: Event) -> None:
        raise RuntimeError("boom")

    app = make_app(webhook_secrets=[SECRET], on_event=hook)

    with caplog.at_level(logging.ERROR, logger="cobalt_async"):
        async with serve(app) as http:
            response = await poster(http)(*signed_delivery(make_task_created_event(), SECRET))

    assert (200, {"status": "accepted"}) == (response.status_code, response.json())
    assert ["on_event hook failed for a task.created event"] == [
        record.getMessage() for record in caplog.records
    ]


async def test_secret_rotation_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """COBALT_WEBHOOK_SECRET may list two secrets, comma-separated, during a rotation."""
    monkeypatch.setenv("COBALT_WEBHOOK_SECRET", "whsec_old, whsec_new")

    async with serve(make_app()) as http:
        old = await poster(http)(*signed_delivery(make_task_created_event(), "whsec_old"))
        new = await poster(http)(*signed_delivery(make_task_created_event(), "whsec_new"))

    assert (200, 200) == (old.status_code, new.status_code)


# -- the lifespan and the dependency ----------------------------------------------------------


class RecordingSink(InMemorySink):
    """An InMemorySink that records being opened and closed."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    async def __aenter__(self) -> RecordingSink:
        self.log.append("open")
        await super().__aenter__()
        return self

    async def aclose(self) -> None:
        self.log.append("close")
        await super().aclose()


async def test_lifespan_shares_one_client_and_sink() -> None:
    """Every request gets the same open client; shutdown closes it and its sink."""
    sink = RecordingSink()
    app = make_app(sink=sink, webhook_secrets=[SECRET])

    async with serve(app) as http:
        first = (await http.get("/client")).json()
        second = (await http.get("/client")).json()
        client = app_client(app)
        assert (["open"], first, client.sink) == (sink.log, second, sink)
        assert id(client) == first

    assert ["open", "close"] == sink.log
    assert "closed" in repr(client)
    with pytest.raises(ConfigurationError, match="cobalt_lifespan"):
        app_client(app)


async def test_own_lifespan_runs_inside_with_the_client_open() -> None:
    """``lifespan=`` nests the app's own lifespan; its state reaches requests."""
    seen: list[CobaltClient] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, int]]:
        seen.append(app_client(app))
        yield {"answer": 42}

    app = FastAPI(lifespan=cobalt_lifespan(**CREDENTIALS, lifespan=own))

    @app.get("/answer")
    async def answer(request: Request, client: CobaltDep) -> bool:
        return bool(request.state.answer == 42 and client is seen[0])

    async with serve(app) as http:
        assert (await http.get("/answer")).json() is True


async def test_polling_setup_needs_no_secret_and_no_router() -> None:
    """Without a secret the default sink is None: the client polls, and the app starts."""
    app = make_app(router=False)

    async with serve(app) as http:
        assert 200 == (await http.get("/client")).status_code
        assert not app_client(app).jobs._webhooks_expected


async def test_dependency_outside_the_lifespan_says_what_to_set() -> None:
    """No lifespan to check it at startup: the first request fails with the fix."""
    app = FastAPI()

    @app.get("/client")
    async def client_id(client: CobaltDep) -> int:
        return id(client)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
        with pytest.raises(ConfigurationError, match=r"lifespan=cobalt_lifespan\(\.\.\.\)"):
            await http.get("/client")


def test_get_client_is_the_dependency() -> None:
    """``CobaltDep`` is ``Annotated[CobaltClient, Depends(get_client)]``."""
    assert get_client is CobaltDep.__metadata__[0].dependency


def _without_lifespan() -> FastAPI:
    app = FastAPI()
    app.include_router(webhook_router())
    return app


def _with(**config: Any) -> Callable[[], FastAPI]:
    return lambda: make_app(**config)


@pytest.mark.parametrize(
    ("build", "env", "message"),
    [
        pytest.param(_without_lifespan, {}, r"lifespan=cobalt_lifespan", id="router-no-lifespan"),
        pytest.param(_with(), {}, "set COBALT_WEBHOOK_SECRET", id="router-no-secret"),
        pytest.param(
            _with(sink=None), ENV, r"sink=None polls Cobalt .*InMemorySink", id="router-no-sink"
        ),
        pytest.param(
            _with(router=False, sink=InMemorySink()),
            {},
            "set COBALT_WEBHOOK_SECRET",
            id="memory-sink-no-secret",
        ),
        pytest.param(
            _with(router=False, webhook_secrets=[SECRET], sink=None),
            {},
            "sink=None stores no webhooks",
            id="secret-without-sink",
        ),
        pytest.param(
            _with(webhook_secrets=[]), {}, "non-empty list of webhook secrets", id="empty-secrets"
        ),
        pytest.param(
            lambda: FastAPI(lifespan=cobalt_lifespan(webhook_secrets=[SECRET])),
            {},
            "missing Cobalt credentials",
            id="no-credentials",
        ),
    ],
)
async def test_misconfiguration_fails_at_startup(
    build: Callable[[], FastAPI],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app does not start, and the error says what to set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    error = await startup_error(build())

    assert isinstance(error, ConfigurationError)
    assert re.search(message, str(error))


async def test_every_missing_setting_is_reported_in_one_message() -> None:
    """No credentials and no webhook secret: one restart tells the operator both."""
    app = FastAPI(lifespan=cobalt_lifespan(sink=InMemorySink()))

    error = await startup_error(app)

    assert isinstance(error, ConfigurationError)
    message = str(error)
    assert message.startswith("cobalt_lifespan cannot start: ")
    for setting in ("COBALT_WEBHOOK_SECRET", "COBALT_CLIENT_ID", "COBALT_ACCESS_TOKEN"):
        assert setting in message


async def startup_error(app: FastAPI) -> BaseException:
    """The error that stopped the app's startup (trio's LifespanManager wraps it in a group)."""
    try:
        async with LifespanManager(app):
            pass
    except BaseException as exc:  # whatever stopped it is what the test inspects
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return exc
    pytest.fail("the app started")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sink": InMemorySink(), "redis_url": "redis://x"}, "not sink= and redis_url="),
        ({"redis_url": "redis://x", "database_url": "sqlite:///c.db"}, "one of sink="),
        ({"webhook_secrets": SECRET}, r"webhook_secrets=\[secret\]"),
    ],
)
def test_contradictions_fail_at_once(config: dict[str, Any], message: str) -> None:
    """What is wrong whatever the environment fails when the lifespan is built."""
    with pytest.raises(ConfigurationError, match=message):
        cobalt_lifespan(**config)


def test_import_without_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FastAPI installed, importing the module says which extra to install."""
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "cobalt_async.fastapi")

    with pytest.raises(ImportError, match=r"pip install 'cobalt-async\[fastapi\]'"):
        importlib.import_module("cobalt_async.fastapi")


def test_all_is_sorted() -> None:
    assert sorted(cobalt_async.fastapi.__all__) == cobalt_async.fastapi.__all__


# -- deployment: the multi-worker warning -------------------------------------------------------


async def test_unclaimed_outcomes_warn_about_several_workers(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """Outcomes no wait of this process claimed point at a multi-worker app on InMemorySink."""
    sink = InMemorySink(outcome_ttl=60.0)
    app = make_app(sink=sink, webhook_secrets=[SECRET])

    with caplog.at_level(logging.WARNING, logger="cobalt_async.sinks"):
        async with serve(app) as http:
            # As if another worker had submitted job 1: its webhook landed here.
            await poster(http)(*signed_delivery(make_task_created_event(job_id=1), SECRET))
            clock.advance(61.0)  # job 1's outcome expires, never awaited
            await poster(http)(*signed_delivery(make_task_created_event(job_id=2), SECRET))

    warnings = [record.getMessage() for record in caplog.records]
    assert 1 == len(warnings)
    assert "several workers" in warnings[0]
    assert "RedisSink" in warnings[0]
    assert 1 == sink.stats().unclaimed


async def test_several_workers_on_an_in_memory_sink_warn_at_startup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """WEB_CONCURRENCY > 1 with an InMemorySink is flagged when the app starts."""
    monkeypatch.setenv("WEB_CONCURRENCY", "4")

    with caplog.at_level(logging.WARNING, logger="cobalt_async.fastapi"):
        async with serve(make_app(webhook_secrets=[SECRET])):
            pass

    messages = [record.getMessage() for record in caplog.records]
    assert 1 == len(messages)
    assert messages[0].startswith("WEB_CONCURRENCY=4 but the sink is an InMemorySink")


# -- whole round trips in-process, against FakeCobalt -----------------------------------------


@asynccontextmanager
async def with_fake(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, **knobs: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeCobalt]]:
    """Serve *app* with its Cobalt client talking to a FakeCobalt that delivers webhooks to it."""
    fake = FakeCobalt(webhook_url=f"http://app.test{WEBHOOK_PATH}", **knobs)
    client = partial(CobaltClient, transport=fake.transport, max_retries=0)
    monkeypatch.setattr(cobalt_async.fastapi, "CobaltClient", client)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    async with fake, LifespanManager(app) as manager:
        fake.webhook_transport = httpx.ASGITransport(app=manager.app)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
            yield http, fake


@pytest.mark.parametrize("knobs", [{}, {"early_rate": 1.0, "duplicate_rate": 1.0}])
async def test_handles_resolve_through_the_webhook_route(
    knobs: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route awaits its handle; Cobalt's webhook lands on the router and resolves it."""
    app = FastAPI(lifespan=cobalt_lifespan())
    app.include_router(webhook_router(WEBHOOK_PATH))

    @app.post("/tasks")
    async def create(client: CobaltDep) -> list[str | None]:
        handle = await client.tasks.create(patient_mrn="MRN-1", description="Call back")
        event: TaskCreatedEvent = await handle.wait(timeout=5)
        return [event.data.emr_task_id, handle.resolved_via]

    async with with_fake(app, monkeypatch, **knobs) as (http, fake):
        emr_task_id, via = (await http.post("/tasks")).json()

    assert (fake.events[0]["data"]["emr_task_id"], "webhook") == (emr_task_id, via)


def readme_example() -> str:
    """The README's FastAPI snippet, or until it has one, ``examples/fastapi_minimal.py``."""
    start, end = "<!-- fastapi-example -->", "<!-- /fastapi-example -->"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if start in readme and end in readme:
        block = readme.split(start, 1)[1].split(end, 1)[0]
        return block.split("```python", 1)[1].split("```", 1)[0]
    return (ROOT / "examples" / "fastapi_minimal.py").read_text(encoding="utf-8")


async def test_readme_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's FastAPI section: under 25 lines, and it creates a task end to end."""
    code = readme_example()
    module = types.ModuleType("readme_fastapi_example")
    exec(compile(code, "README.md[fastapi-example]", "exec"), module.__dict__)

    async with with_fake(module.app, monkeypatch) as (http, fake):
        body = {"patient_mrn": "MRN-1", "description": "Call back"}
        response = await http.post("/tasks", json=body)

    assert len(code.strip().splitlines()) < 25
    assert 200 == response.status_code
    assert fake.events[0]["data"]["emr_task_id"] == response.json()["emr_task_id"]


# -- examples/fastapi_app.py --------------------------------------------------------------------


TASK = {"patient_mrn": "MRN-1", "description": "Call back"}


@pytest.mark.parametrize(
    ("request_body", "knobs", "status", "expected"),
    [
        pytest.param({**TASK, "wait": True}, {}, 200, {"status": "succeeded"}, id="done"),
        pytest.param(TASK, {}, 202, {"status": "pending"}, id="no-wait"),
        pytest.param(
            {**TASK, "wait": True, "timeout_s": 0.05},
            {"latency": 1.0},
            202,
            {"status": "pending"},
            id="wait-timed-out",
        ),
        pytest.param(
            {**TASK, "wait": True},
            {"failure_rate": 1.0},
            200,
            {"status": "failed"},
            id="job-failed",
        ),
        pytest.param({"patient_mrn": "MRN-1"}, {}, 422, {}, id="fastapi-validation"),
        pytest.param(
            {**TASK, "description": " "},
            {},
            422,
            {"detail": "Invalid field description: must be a non-empty string"},
            id="sdk-validation",
        ),
        pytest.param(
            TASK,
            {"emr_profile": "subject_assignee"},
            400,
            {"detail": "Missing required field: subject", "outcome_unknown": False},
            id="cobalt-400",
        ),
        pytest.param(
            {**TASK, "patient_mrn": "MRN-UNKNOWN"},
            {},
            404,
            {"detail": "Patient not found.", "outcome_unknown": False},
            id="cobalt-404",
        ),
        pytest.param(TASK, {"api_error_rate": 1.0}, 502, {"outcome_unknown": True}, id="5xx"),
        pytest.param(
            TASK, {"rate_limit_rate": 1.0, "retry_after": None}, 503, {}, id="rate-limited"
        ),
    ],
)
async def test_example_app_answers(
    request_body: dict[str, Any],
    knobs: dict[str, Any],
    status: int,
    expected: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``POST /tasks`` of the example maps outcomes and Cobalt's errors to its answers."""
    from examples.fastapi_app import app

    async with with_fake(app, monkeypatch, **knobs) as (http, fake):
        response = await http.post("/tasks", json=request_body)

    body = response.json()
    assert status == response.status_code
    assert expected.items() <= body.items()
    if body.get("status") == "succeeded":
        assert fake.events[0]["data"]["emr_task_id"] == body["emr_task_id"]
    if body.get("status") == "failed":
        assert body["failure_reason"]


async def test_example_app_answers_503_when_cobalt_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that never reached Cobalt is a 503."""
    from examples.fastapi_app import app

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = partial(CobaltClient, transport=httpx.MockTransport(refuse), max_retries=0)
    monkeypatch.setattr(cobalt_async.fastapi, "CobaltClient", client)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)

    async with serve(app) as http:
        response = await http.post("/tasks", json=TASK)

    assert (503, False) == (response.status_code, response.json()["outcome_unknown"])
