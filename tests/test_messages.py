"""
What errors, events and receipts say: ids, types and reason codes, never EHR text; and,
when something is wrong, what happened and what to do.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import cobalt_async
from cobalt_async import (
    APIError,
    CobaltClient,
    ConfigurationError,
    InMemorySink,
    JobFailedError,
    JobHandle,
    MalformedEventError,
    MalformedJobEvent,
    NotFoundError,
    Receipt,
    ServerError,
    WebhookReceiver,
)
from cobalt_async._cli import main
from cobalt_async.models import TaskCreateRequest, TaskNoteCreateRequest, parse_event
from cobalt_async.testing import (
    make_task_created_event,
    make_task_failed_event,
    make_task_note_created_event,
    make_task_note_failed_event,
)
from tests.support import free_port

pytestmark = pytest.mark.anyio

MARKER = "PHI-Jane-Doe-1970"
"""Stands for EHR text: a patient's name, an MRN, a note."""


def text_everywhere() -> list[dict[str, Any]]:
    """One event of each type with the marker in every free-text field, extras included."""
    reasons = [{"code": "chart_locked", "description": MARKER}]
    extras = {"patient_mrn": MARKER, "patient_name": MARKER, "comment": [MARKER]}
    events = [
        make_task_created_event(subject=MARKER, description=MARKER, **extras),
        make_task_failed_event(failure_reason=MARKER, reasons=reasons, **extras),
        make_task_note_created_event(note=MARKER, **extras),
        make_task_note_failed_event(failure_reason=MARKER, reasons=reasons, **extras),
        {**make_task_created_event(), "type": "patient.updated", "data": {"name": MARKER}},
    ]
    malformed = make_task_created_event(description=MARKER)
    del malformed["data"]["emr_task_id"]
    return [*events, malformed]


def rendered(value: object) -> Iterator[str]:
    yield repr(value)
    yield str(value)


def test_no_event_repr_or_str_shows_ehr_text() -> None:
    """Every event type and its data: the text stays on the attributes only."""
    for payload in text_everywhere():
        event = parse_event(json.dumps(payload))
        data = event.data if isinstance(event.data, BaseModel) else None  # a dict is the user's
        for text in (*rendered(event), *rendered(data)):
            assert MARKER not in text, type(event).__name__
        assert MARKER in json.dumps(event.model_dump(mode="json"))  # still all there


def test_no_error_message_shows_ehr_text() -> None:
    """JobFailedError names reason codes; the reason's text is on exc.failure_reason."""
    failed = parse_event(json.dumps(text_everywhere()[1]))
    error = JobFailedError(failed)  # type: ignore[arg-type]
    malformed = parse_event(json.dumps(text_everywhere()[-1]))
    assert isinstance(malformed, MalformedJobEvent)

    for exc in (error, MalformedEventError(malformed)):
        for text in (*rendered(exc), *rendered(exc.args)):
            assert MARKER not in text
    assert "chart_locked" in str(error)
    assert MARKER == error.failure_reason


async def test_no_receipt_shows_ehr_text() -> None:
    """A receipt holds the event; its repr shows ids and types."""
    receiver = WebhookReceiver(InMemorySink(), secrets=["whsec_t"])
    for payload in text_everywhere():
        body = json.dumps(payload).encode()
        signature = cobalt_async.sign_webhook(body, "whsec_t")
        receipt = await receiver.receive(body, {"cobalt-verification": signature})
        assert isinstance(receipt, Receipt)
        for text in rendered(receipt):
            assert MARKER not in text


def test_no_request_repr_shows_ehr_text() -> None:
    """A request model in a traceback shows which fields are set, not their values."""
    requests = [
        TaskCreateRequest(patient_mrn=MARKER, description=MARKER, subject=MARKER),
        TaskNoteCreateRequest(emr_task_id="emr-1", note=MARKER),
    ]
    for request in requests:
        for text in rendered(request):
            assert MARKER not in text


def test_every_public_error_type_is_covered() -> None:
    """A new public error must be added to the walk above, or here with its reason."""
    errors = {name for name in cobalt_async.__all__ if name.endswith("Error")}
    carries_no_ehr_text = {
        # Their messages are built from ids, paths, statuses and Cobalt's error message.
        "APIError", "APIStatusError", "AuthenticationError", "BadRequestError", "ClientClosedError",
        "CobaltConnectionError", "CobaltError", "CobaltTimeoutError", "ConfigurationError",
        "JobTimeoutError", "LoginRequiredError", "NotFoundError", "RateLimitError",
        "RequestValidationError", "ServerError", "SinkUnavailableError",
        "WebhookVerificationError",
    }  # fmt: skip
    assert errors == carries_no_ehr_text | {"JobFailedError", "MalformedEventError"}


# -- errors that say what happened ---------------------------------------------------------


@pytest.mark.parametrize(
    "base_url", ["not a url", "ftp://api.usecobalt.com/v1", "api.usecobalt.com/v1", "https://"]
)
def test_a_base_url_that_cannot_be_requested_is_refused_when_the_client_is_built(
    base_url: str,
) -> None:
    """Not later as an outcome-unknown create: nothing could ever have left the machine."""
    with pytest.raises(ConfigurationError, match="base_url must be an http"):
        CobaltClient(client_id="c", client_secret="s", access_token="t", base_url=base_url)


def cobalt_answering(status: int, message: str) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"success": False, "message": message})

    return httpx.MockTransport(answer)


async def create(base_url: str, transport: httpx.MockTransport) -> JobHandle[Any]:
    async with CobaltClient(
        client_id="c",
        client_secret="s",
        access_token="t",
        base_url=base_url,
        transport=transport,
        max_retries=0,
    ) as client:
        return await client.tasks.create(patient_mrn="MRN-1", description="Call")


async def test_a_404_from_a_base_url_without_v1_says_where_the_api_is() -> None:
    """The usual slip: the host without its /v1."""
    with pytest.raises(NotFoundError, match=r"Cobalt's API is under /v1"):
        await create("https://api.usecobalt.com", cobalt_answering(404, "Not found"))


async def test_a_404_under_v1_has_no_such_hint() -> None:
    with pytest.raises(NotFoundError) as caught:
        await create("https://api.usecobalt.com/v1", cobalt_answering(404, "Patient not found"))
    assert "/v1" not in caught.value.message


@pytest.mark.parametrize("message", ["Service unavailable", "Service unavailable.", "Down!"])
async def test_outcome_unknown_advice_is_sentences_of_its_own(message: str) -> None:
    """Never "... unavailable The request may have reached Cobalt"."""
    with pytest.raises(ServerError) as caught:
        await create("https://api.usecobalt.com/v1", cobalt_answering(503, message))

    text = str(caught.value)
    assert ". The request may have reached Cobalt" in text or "! The request" in text
    assert ".." not in text


async def test_a_create_that_never_left_is_not_outcome_unknown() -> None:
    """A transport refusing the URL's protocol sent nothing: the create may be resent."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.UnsupportedProtocol("no such protocol", request=request)

    with pytest.raises(APIError) as caught:
        await create("https://api.usecobalt.com/v1", httpx.MockTransport(refuse))
    assert not caught.value.outcome_unknown
    assert "may have reached" not in str(caught.value)


# -- the command line's errors: one line, exit status 2 -----------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code  # type: ignore[assignment]
    return status, capsys.readouterr().err


def test_a_port_in_use_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        status, err = run(capsys, "listen", "--port", port, "--secret", "whsec_t")

    assert 2 == status
    assert [f"cobalt-async listen: cannot listen on 127.0.0.1:{port}: Address already in use"] == (
        err.splitlines()
    )


def test_a_host_that_does_not_resolve_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = str(free_port())
    status, err = run(capsys, "simulate", "--host", "no-such-host.invalid", "--port", port)

    assert 2 == status
    assert 1 == len(err.splitlines())
    assert "cannot listen on no-such-host.invalid" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["listen", "--port", "0", "--secret", ""],
        ["verify", "--secret", " ", "--signature", "ab" * 32],
        ["simulate", "--port", "0", "--webhook-url", "ftp://127.0.0.1/hooks"],
        ["simulate", "--port", "0", "--webhook-url", "127.0.0.1:8000/hooks"],
    ],
    ids=["empty secret", "blank secret", "ftp webhook url", "webhook url without scheme"],
)
def test_a_bad_argument_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, err = run(capsys, *argv)

    assert 2 == status
    assert 1 == len(err.splitlines())
    assert "expected" in err
