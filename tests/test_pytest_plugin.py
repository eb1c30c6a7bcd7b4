"""The pytest plugin, as a user meets it: fixtures found by entry point in a fresh project."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from cobalt_async.testing.pytest_plugin import _in_own_task

pytest_plugins = ["pytester"]

USER_CONFTEST = """
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
"""

USER_TESTS = """
import pytest

from cobalt_async import CobaltClient, InMemorySink, JobFailedError, NotFoundError
from cobalt_async.testing import FakeCobalt

{marker}


async def test_books_a_callback(cobalt_client, fake_cobalt):
    assert isinstance(cobalt_client, CobaltClient)
    assert isinstance(fake_cobalt, FakeCobalt)
    handle = await cobalt_client.tasks.create(patient_mrn="MRN-1", description="Call")
    event = await handle.wait(timeout=5)
    assert event.data.emr_task_id
    assert fake_cobalt.stats.tasks_accepted == 1


async def test_outcomes_arrive_by_webhook_in_the_sink(cobalt_client, cobalt_sink):
    assert isinstance(cobalt_sink, InMemorySink)
    handle = await cobalt_client.tasks.create(patient_mrn="MRN-1", description="Call")
    await handle.wait(timeout=5)
    assert handle.resolved_via == "webhook"
    assert cobalt_sink.stats().backstop_polls == 0


async def test_knobs_turn_faults_on(cobalt_client, fake_cobalt):
    fake_cobalt.failure_rate = 1.0
    handle = await cobalt_client.tasks.create(patient_mrn="MRN-1", description="Call")
    with pytest.raises(JobFailedError):
        await handle.wait(timeout=5)


async def test_unknown_patients_are_404(cobalt_client):
    with pytest.raises(NotFoundError):
        await cobalt_client.tasks.create(patient_mrn="MRN-UNKNOWN", description="Call")


async def test_every_test_gets_a_fresh_fake(fake_cobalt, cobalt_sink):
    assert fake_cobalt.stats.requests == 0
    assert cobalt_sink.stats().pending == 0


async def test_a_wrong_expectation_still_fails(cobalt_client):
    handle = await cobalt_client.tasks.create(patient_mrn="MRN-1", description="Call")
    assert (await handle).data.emr_task_id == "not the id the fake made up"
"""


def test_the_plugin_is_registered_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    """Installing the package is enough: pytest loads ``cobalt_async`` from its entry point."""
    assert pytestconfig.pluginmanager.has_plugin("cobalt_async")


@pytest.mark.e2e
def test_a_user_project_uses_the_fixtures_on_both_backends(pytester: pytest.Pytester) -> None:
    """A project with no setup of its own gets working fixtures; failures still fail."""
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS.format(marker="pytestmark = pytest.mark.anyio"))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)

    result.assert_outcomes(passed=10, failed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_user.py::test_a_wrong_expectation_still_fails[[]asyncio[]]*",
            "FAILED test_user.py::test_a_wrong_expectation_still_fails[[]trio[]]*",
        ]
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("mode", "marker"),
    [("strict", "pytestmark = pytest.mark.asyncio"), ("auto", "")],
)
def test_a_user_project_uses_the_fixtures_under_pytest_asyncio(
    pytester: pytest.Pytester, mode: str, marker: str
) -> None:
    """Strict mode with marked tests, auto mode with none: no setup error, no teardown error."""
    pytester.makeini(
        f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_user=USER_TESTS.format(marker=marker))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=60)

    result.assert_outcomes(passed=5, failed=1, errors=0)
    result.stdout.fnmatch_lines(["FAILED test_user.py::test_a_wrong_expectation_still_fails*"])
    result.stdout.no_fnmatch_line("*cancel scope*")


def test_a_sync_test_asking_for_an_async_fixture_is_told_what_to_do(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_user="""
def test_sync(fake_cobalt):
    pass
"""
    )

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*fake_cobalt is an async fixture: use it from an `async def` test marked*"]
    )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_context_hosted_in_its_own_task_may_be_left_from_another() -> None:
    """What pytest-asyncio does to a fixture: set up in one task, torn down in another."""
    events: list[str] = []

    @asynccontextmanager
    async def with_task_group() -> AsyncIterator[str]:
        async with anyio.create_task_group():
            events.append("entered")
            yield "value"
            events.append("exited")

    hosted = _in_own_task(with_task_group())
    value = await asyncio.create_task(hosted.__aenter__())
    await asyncio.create_task(hosted.__aexit__(None, None, None))

    assert ("value", ["entered", "exited"]) == (value, events)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_hosted_context_that_fails_to_enter_raises_its_error() -> None:
    @asynccontextmanager
    async def broken() -> AsyncIterator[None]:
        raise OSError("port in use")
        yield

    with anyio.fail_after(5), pytest.raises(OSError, match="port in use"):
        async with _in_own_task(broken()):
            pass
