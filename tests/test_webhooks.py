"""WebhookReceiver, verify_webhook and sign_webhook: docs/webhooks.md row by row."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
import pytest

from cobalt_async import (
    CobaltError,
    ConfigurationError,
    Event,
    InMemorySink,
    TaskCreatedEvent,
    UnknownEvent,
    WebhookReceiver,
    WebhookVerificationError,
    sign_webhook,
    verify_webhook,
)
from tests.support import HangingSink, UnavailableSink

pytestmark = pytest.mark.anyio

SECRET = "whsec_current_5ecret_value"
OLD_SECRET = "whsec_previous_5ecret_value"
OTHER_SECRET = "whsec_not_ours_at_all"
PHI = "Jane Doe, DOB 1961-04-02"
"""Patient text carried in bodies: it must never reach a log line or a receipt."""

# A known answer computed with Node, exactly as Cobalt's docs verify a delivery:
#   crypto.createHmac('sha256', 'whsec_known_answer_secret')
#       .update(JSON.stringify(KNOWN_PAYLOAD)).digest('hex')
# NODE_BODY is what JSON.stringify(KNOWN_PAYLOAD) printed, encoded as UTF-8.
KNOWN_SECRET = "whsec_known_answer_secret"
KNOWN_PAYLOAD: dict[str, Any] = {
    "id": "evt_ka_1",
    "access_token_reference_id": "atr_ka",
    "object": "event",
    "created": "2025-10-09T10:30:00.000Z",
    "type": "task.created",
    "job_id": "12345",
    "data": {
        "task_id": "abc123def456789012345678",
        "emr_task_id": "emr-77",
        "subject": "Café – 東京",
        "description": 'Rappel: résultats "labo" \\ ok\n',
    },
}
NODE_BODY = (
    '{"id":"evt_ka_1","access_token_reference_id":"atr_ka","object":"event",'
    '"created":"2025-10-09T10:30:00.000Z","type":"task.created","job_id":"12345",'
    '"data":{"task_id":"abc123def456789012345678","emr_task_id":"emr-77",'
    '"subject":"Café – 東京","description":"Rappel: résultats \\"labo\\" \\\\ ok\\n"}}'
).encode()
NODE_SIGNATURE = "f350e1806cd2be50a755f73f6a5b696b12b1534df3836625297a195d8ae2cc92"


def task_created(job_id: str | int = "job-1", *, event_id: str = "evt_1") -> dict[str, Any]:
    return {
        "id": event_id,
        "access_token_reference_id": "atr_1",
        "object": "event",
        "created": "2025-10-09T10:30:00.000Z",
        "type": "task.created",
        "job_id": job_id,
        "data": {"task_id": "t_1", "emr_task_id": "emr_1", "subject": "Labs", "description": PHI},
    }


def task_failed(job_id: str = "job-1", *, event_id: str = "evt_2") -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": "task.failed",
        "job_id": job_id,
        "data": {
            "task_id": "t_1",
            "failure_reason": f"Patient not found: {PHI}",
            "reasons": [{"code": "patient_not_found", "description": PHI}],
        },
    }


def compact(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signed(
    payload: Any, secret: str = SECRET, *, delivery_id: str = "dlv_1"
) -> tuple[bytes, dict[str, str]]:
    """A delivery as Cobalt sends it: compact JSON, signed, with its delivery headers."""
    body = payload if isinstance(payload, bytes) else compact(payload)
    headers = {
        "content-type": "application/json",
        "cobalt-verification": sign_webhook(body, secret),
        "webhook-id": delivery_id,
        "webhook-timestamp": "2025-10-09T10:30:00.000Z",
        "webhook-attempt": "1",
    }
    return body, headers


class Recorder:
    """An on_event hook that records what it was given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def hook() -> Recorder:
    return Recorder()


@pytest.fixture
def receiver(sink: InMemorySink, hook: Recorder) -> WebhookReceiver:
    return WebhookReceiver(sink, secrets=[SECRET], on_event=hook)


async def stored(sink: InMemorySink, job_id: str) -> Event | None:
    outcomes = await sink.get_outcomes([job_id])
    return outcomes[job_id].event if job_id in outcomes else None


class TestAccepted:
    """Row 1: a valid, new, terminal event with a job_id is stored, wakes its waiter, 200."""

    async def test_valid_terminal_event_is_stored_and_answered_200(
        self, receiver: WebhookReceiver, sink: InMemorySink
    ) -> None:
        """A signed task.created delivery is answered 200 and its outcome is stored."""
        receipt = await receiver.receive(*signed(task_created("job-1")))

        assert 200 == receipt.status_code
        assert "accepted" == receipt.result
        assert isinstance(receipt.event, TaskCreatedEvent)
        event = await stored(sink, "job-1")
        assert isinstance(event, TaskCreatedEvent)
        assert "emr_1" == event.data.emr_task_id

    @pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
    async def test_a_stored_delivery_is_logged_at_debug_level_only(
        self, receiver: WebhookReceiver, level: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Each delivery's result is one debug line: type, job and result, nothing more."""
        caplog.set_level(level, logger="cobalt_async")

        await receiver.receive(*signed(task_created("job-1")))

        line = "webhook task.created for job job-1: accepted"
        assert ([line] if level == logging.DEBUG else []) == caplog.messages

    async def test_delivery_wakes_a_waiter_that_is_already_waiting(
        self, receiver: WebhookReceiver, sink: InMemorySink
    ) -> None:
        """A waiter registered before the delivery is woken by it, with the event."""
        results: list[Event] = []

        async def wait() -> None:
            outcome = await sink.wait_for("job-1", timeout=5)
            results.append(outcome.event)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                assert 1 == sink.stats().pending
                receipt = await receiver.receive(*signed(task_created("job-1")))

        assert 200 == receipt.status_code
        assert ["task.created"] == [event.type for event in results]
        assert 0 == sink.stats().pending

    async def test_on_event_hook_sees_each_accepted_event_once(
        self, receiver: WebhookReceiver, hook: Recorder
    ) -> None:
        """The hook is run for a newly accepted terminal event."""
        await receiver.receive(*signed(task_created("job-1")))

        assert ["job-1"] == [event.job_id for event in hook.events]

    async def test_async_on_event_hook_is_awaited(self, sink: InMemorySink) -> None:
        """An async hook is awaited before receive() returns."""
        seen = anyio.Event()

        async def on_event(event: Event) -> None:
            await anyio.lowlevel.checkpoint()
            seen.set()

        receiver = WebhookReceiver(sink, secrets=[SECRET], on_event=on_event)
        await receiver.receive(*signed(task_created()))

        assert seen.is_set()

    async def test_dispatch_false_defers_the_hook(
        self, receiver: WebhookReceiver, hook: Recorder
    ) -> None:
        """With dispatch=False the hook runs only when dispatch() is called."""
        receipt = await receiver.receive(*signed(task_created()), dispatch=False)

        assert [] == hook.events
        await receiver.dispatch(receipt)
        assert 1 == len(hook.events)

    @pytest.mark.parametrize("body_type", [bytearray, memoryview])
    async def test_bytes_like_bodies_are_accepted(
        self, receiver: WebhookReceiver, body_type: type[Any]
    ) -> None:
        """A bytearray or memoryview body is verified like bytes."""
        body, headers = signed(task_created())

        receipt = await receiver.receive(body_type(body), headers)

        assert 200 == receipt.status_code


class TestDuplicates:
    """Row 2: a duplicate delivery or terminal event is answered 200, counted, never re-run."""

    async def test_redelivery_is_200_counted_and_resolves_nothing_twice(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder
    ) -> None:
        """Cobalt's retry of the same delivery is a 200 duplicate; the hook ran once."""
        delivery = signed(task_created("job-1"))

        first = await receiver.receive(*delivery)
        second = await receiver.receive(*delivery)

        assert (200, "accepted") == (first.status_code, first.result)
        assert (200, "duplicate") == (second.status_code, second.result)
        assert 1 == sink.stats().duplicates
        assert 1 == len(hook.events)
        assert 1 == sink.stats().buffered

    async def test_same_terminal_event_under_a_new_id_is_a_duplicate(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder
    ) -> None:
        """The same outcome sent again as a new event is a duplicate, not a conflict."""
        await receiver.receive(*signed(task_created("job-1", event_id="evt_a")))
        receipt = await receiver.receive(
            *signed(task_created("job-1", event_id="evt_b"), delivery_id="dlv_2")
        )

        assert (200, "duplicate") == (receipt.status_code, receipt.result)
        assert (1, 0) == (sink.stats().duplicates, sink.stats().conflicts)
        assert 1 == len(hook.events)

    async def test_redelivered_event_without_job_id_is_a_duplicate(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder
    ) -> None:
        """A non-terminal event delivered twice reaches the hook once."""
        delivery = signed({"id": "evt_sync_1", "type": "patient.updated", "data": {}})

        await receiver.receive(*delivery)
        receipt = await receiver.receive(*delivery)

        assert (200, "duplicate") == (receipt.status_code, receipt.result)
        assert 1 == sink.stats().duplicates
        assert 1 == len(hook.events)

    async def test_conflicting_second_terminal_event_is_200_and_first_is_kept(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder
    ) -> None:
        """A task.failed after task.created for one job is counted as conflict; created stays."""
        await receiver.receive(*signed(task_created("job-1")))
        receipt = await receiver.receive(*signed(task_failed("job-1"), delivery_id="dlv_2"))

        assert (200, "conflict") == (receipt.status_code, receipt.result)
        assert 1 == sink.stats().conflicts
        kept = await stored(sink, "job-1")
        assert kept is not None
        assert "task.created" == kept.type
        assert ["task.created"] == [event.type for event in hook.events]


class TestEarlyArrival:
    """Row 3: an event for a job nobody awaits yet is stored and found by a later wait."""

    async def test_event_before_any_wait_is_found_by_a_later_wait(
        self, receiver: WebhookReceiver, sink: InMemorySink
    ) -> None:
        """The webhook lands first; a wait started afterwards returns it at once."""
        receipt = await receiver.receive(*signed(task_created("job-early")))
        assert 0 == sink.stats().pending

        outcome = await sink.wait_for("job-early", timeout=1)

        assert 200 == receipt.status_code
        assert "task.created" == outcome.event.type
        assert "webhook" == outcome.via

    async def test_numeric_job_id_resolves_a_wait_on_its_string(
        self, receiver: WebhookReceiver, sink: InMemorySink
    ) -> None:
        """A webhook with "job_id": 12345 (a JSON number) resolves a wait on "12345"."""
        body, headers = signed(task_created(12345))
        assert b'"job_id":12345' in body

        receipt = await receiver.receive(body, headers)
        outcome = await sink.wait_for("12345", timeout=1)

        assert 200 == receipt.status_code
        assert "12345" == outcome.event.job_id


class TestNonTerminalEvents:
    """Row 4: events without job_id or of unknown type are 200, go to the hook, never crash."""

    async def test_unknown_type_is_200_and_reaches_the_hook(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder
    ) -> None:
        """An appointment.created event is passed to the hook whole, and nothing is stored."""
        payload = {
            "id": "evt_appt",
            "type": "appointment.created",
            "job_id": "job-9",
            "data": {"appointment_id": "a1", "mrn": 123},
        }

        receipt = await receiver.receive(*signed(payload))

        assert (200, "accepted") == (receipt.status_code, receipt.result)
        [event] = hook.events
        assert isinstance(event, UnknownEvent)
        assert payload == event.raw
        assert None is await stored(sink, "job-9")

    async def test_known_type_without_job_id_is_200_and_not_stored(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder
    ) -> None:
        """A task.created without job_id (a sync event) reaches the hook but resolves nothing."""
        payload = task_created()
        del payload["job_id"]

        receipt = await receiver.receive(*signed(payload))

        assert 200 == receipt.status_code
        assert [None] == [event.job_id for event in hook.events]
        assert 0 == sink.stats().buffered

    @pytest.mark.parametrize("payload", [task_created(), {"type": "login_required"}])
    async def test_hook_that_raises_never_crashes_ingestion(
        self, sink: InMemorySink, payload: dict[str, Any], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A failing hook is logged; the delivery is still answered 200."""

        def on_event(event: Event) -> None:
            raise RuntimeError("hook bug")

        receiver = WebhookReceiver(sink, secrets=[SECRET], on_event=on_event)

        receipt = await receiver.receive(*signed(payload))

        assert 200 == receipt.status_code
        assert any("on_event hook failed" in record.getMessage() for record in caplog.records)

    async def test_async_hook_that_raises_never_crashes_ingestion(self, sink: InMemorySink) -> None:
        """An async hook's exception is swallowed as a sync hook's is."""

        async def on_event(event: Event) -> None:
            raise ValueError("async hook bug")

        receiver = WebhookReceiver(sink, secrets=[SECRET], on_event=on_event)

        receipt = await receiver.receive(*signed(task_created()))

        assert 200 == receipt.status_code
        assert None is not await stored(sink, "job-1")


def _unsigned(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, headers = signed(payload)
    del headers["cobalt-verification"]
    return body, headers


def _wrong_secret(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    return signed(payload, OTHER_SECRET)


def _tampered(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, headers = signed(payload)
    return body.replace(b"emr_1", b"emr_2"), headers


def _garbage_signature(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, headers = signed(payload)
    headers["cobalt-verification"] = "not-a-signature"
    return body, headers


def _empty_signature(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, headers = signed(payload)
    headers["cobalt-verification"] = ""
    return body, headers


def _non_ascii_signature(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, headers = signed(payload)
    headers["cobalt-verification"] = "é" * 64
    return body, headers


def _surrogate_signature(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, headers = signed(payload)
    headers["cobalt-verification"] = "\udc80" * 64
    return body, headers


def _prefixed_signature(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, headers = signed(payload)
    headers["cobalt-verification"] = "sha256=" + headers["cobalt-verification"]
    return body, headers


UNAUTHENTIC = [
    pytest.param(_unsigned, id="missing-header"),
    pytest.param(_wrong_secret, id="unknown-secret"),
    pytest.param(_tampered, id="body-altered"),
    pytest.param(_garbage_signature, id="garbage"),
    pytest.param(_empty_signature, id="empty"),
    pytest.param(_non_ascii_signature, id="non-ascii"),
    pytest.param(_surrogate_signature, id="lone-surrogate"),
    pytest.param(_prefixed_signature, id="sha256-prefix"),
]


class TestUnauthorized:
    """Row 5: a missing or wrong signature, or an unknown secret, is 401 and stores nothing."""

    @pytest.mark.parametrize("make", UNAUTHENTIC)
    async def test_unauthentic_delivery_is_401_and_nothing_is_stored(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder, make: Any
    ) -> None:
        """Nothing from an unverified body reaches the store or the hook."""
        receipt = await receiver.receive(*make(task_created("job-1")))

        assert (401, "unauthorized") == (receipt.status_code, receipt.result)
        assert None is receipt.event
        assert {} == await sink.get_outcomes(["job-1"])
        assert [] == hook.events

    async def test_asgi_header_with_high_bytes_is_401_not_a_crash(
        self, receiver: WebhookReceiver, sink: InMemorySink
    ) -> None:
        """A signature header of non-ASCII bytes (decoded as latin-1) is a plain mismatch."""
        body, _ = signed(task_created("job-1"))

        receipt = await receiver.receive(body, [(b"cobalt-verification", b"\xe9\xff" * 32)])

        assert 401 == receipt.status_code
        assert {} == await sink.get_outcomes(["job-1"])

    @pytest.mark.parametrize("make", UNAUTHENTIC)
    def test_verify_webhook_raises_for_each_failure(self, make: Any) -> None:
        """verify_webhook() raises WebhookVerificationError, a ValueError and CobaltError."""
        body, headers = make(task_created())

        with pytest.raises(WebhookVerificationError) as info:
            verify_webhook(body, headers, [SECRET])

        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, CobaltError)


class TestSignatures:
    """Cobalt's scheme (docs/webhooks.md): hex HMAC-SHA256 of JSON.stringify(payload)."""

    def test_sign_webhook_matches_node_known_answer(self) -> None:
        """sign_webhook() of a non-ASCII payload equals the hex Node computed for it."""
        assert NODE_SIGNATURE == sign_webhook(KNOWN_PAYLOAD, KNOWN_SECRET)
        assert NODE_SIGNATURE == sign_webhook(NODE_BODY, KNOWN_SECRET)
        assert NODE_SIGNATURE == sign_webhook(NODE_BODY.decode(), KNOWN_SECRET)

    async def test_receiver_verifies_node_signed_body(self, sink: InMemorySink) -> None:
        """The exact bytes Node would send, with Node's signature, are accepted."""
        receiver = WebhookReceiver(sink, secrets=[KNOWN_SECRET])

        receipt = await receiver.receive(NODE_BODY, {"cobalt-verification": NODE_SIGNATURE})

        assert 200 == receipt.status_code
        assert isinstance(receipt.event, TaskCreatedEvent)
        assert "Café – 東京" == receipt.event.data.subject

    def test_verify_webhook_returns_the_parsed_event(self) -> None:
        """verify_webhook() verifies Node's signature and returns the typed event."""
        event = verify_webhook(NODE_BODY, {"cobalt-verification": NODE_SIGNATURE}, [KNOWN_SECRET])

        assert isinstance(event, TaskCreatedEvent)
        assert "12345" == event.job_id

    async def test_pretty_printed_body_verifies_over_raw_bytes(
        self, receiver: WebhookReceiver
    ) -> None:
        """A body signed over its own (indented) bytes verifies without re-serialising."""
        body = json.dumps(task_created(), indent=2, ensure_ascii=False).encode()

        receipt = await receiver.receive(body, {"cobalt-verification": sign_webhook(body, SECRET)})

        assert 200 == receipt.status_code

    @pytest.mark.parametrize("ensure_ascii", [False, True], ids=["literal", "escaped"])
    async def test_spaced_body_signed_compactly_verifies_by_reserialising(
        self, receiver: WebhookReceiver, ensure_ascii: bool
    ) -> None:
        """A body sent with spaces (or \\u escapes) but signed as JSON.stringify verifies."""
        payload = task_created()
        payload["data"]["subject"] = "Café – 東京"
        body = json.dumps(payload, ensure_ascii=ensure_ascii).encode()
        assert body != compact(payload)

        receipt = await receiver.receive(
            body, {"cobalt-verification": sign_webhook(payload, SECRET)}
        )

        assert 200 == receipt.status_code
        assert isinstance(receipt.event, TaskCreatedEvent)
        assert "Café – 東京" == receipt.event.data.subject

    @pytest.mark.parametrize("secret", [SECRET, OLD_SECRET])
    async def test_any_of_several_secrets_verifies_during_rotation(
        self, sink: InMemorySink, secret: str
    ) -> None:
        """During a rotation both the new and the previous secret are accepted."""
        receiver = WebhookReceiver(sink, secrets=[SECRET, OLD_SECRET])

        receipt = await receiver.receive(*signed(task_created(), secret))

        assert 200 == receipt.status_code

    async def test_rotation_still_refuses_an_unknown_secret(self, sink: InMemorySink) -> None:
        """Several secrets do not widen acceptance to a third one."""
        receiver = WebhookReceiver(sink, secrets=[SECRET, OLD_SECRET])

        receipt = await receiver.receive(*signed(task_created(), OTHER_SECRET))

        assert 401 == receipt.status_code

    @pytest.mark.parametrize(
        "name", ["Cobalt-Verification", "COBALT-VERIFICATION", "cObAlT-vErIfIcAtIoN"]
    )
    async def test_signature_header_name_is_case_insensitive(
        self, receiver: WebhookReceiver, name: str
    ) -> None:
        """The signature header is found whatever case the server passed its name in."""
        body, headers = signed(task_created())

        receipt = await receiver.receive(body, {name: headers["cobalt-verification"]})

        assert 200 == receipt.status_code

    async def test_asgi_list_of_byte_tuples_is_accepted(self, receiver: WebhookReceiver) -> None:
        """ASGI scope headers, a list of (bytes, bytes) with any case, are understood."""
        body, headers = signed(task_created())
        asgi_headers = [
            (b"content-type", b"application/json"),
            (b"Cobalt-Verification", headers["cobalt-verification"].encode()),
            (b"webhook-id", b"dlv_1"),
        ]

        receipt = await receiver.receive(body, asgi_headers)

        assert 200 == receipt.status_code

    @pytest.mark.parametrize(
        "names",
        [
            (b"cobalt-verification", b"cobalt-verification"),
            (b"Cobalt-Verification", b"cobalt-verification"),
        ],
        ids=["lower", "another-case-first"],
    )
    async def test_of_a_repeated_signature_header_the_last_counts(
        self, receiver: WebhookReceiver, names: tuple[bytes, bytes]
    ) -> None:
        """The last signature sent is the one checked, as ASGI servers spell it or not."""
        body, headers = signed(task_created())
        good = headers["cobalt-verification"].encode()
        wrong = b"0" * 64
        for first, last, status in ((wrong, good, 200), (good, wrong, 401)):
            asgi_headers = [
                (names[0], first),
                (b"webhook-id", b"dlv_1"),
                (b"content-length", str(len(body)).encode()),
                (names[1], last),
            ]

            receipt = await receiver.receive(body, asgi_headers)

            assert status == receipt.status_code

    async def test_httpx_headers_are_accepted(self, receiver: WebhookReceiver) -> None:
        """A framework's case-insensitive headers mapping works as a plain dict does."""
        body, headers = signed(task_created())

        receipt = await receiver.receive(body, httpx.Headers(headers))

        assert 200 == receipt.status_code

    @pytest.mark.parametrize("transform", [str.upper, lambda sig: f"  {sig}\t"])
    async def test_uppercase_or_padded_hex_signature_verifies(
        self, receiver: WebhookReceiver, transform: Any
    ) -> None:
        """Hex case and surrounding whitespace in the header do not matter."""
        body, headers = signed(task_created())
        headers["cobalt-verification"] = transform(headers["cobalt-verification"])

        receipt = await receiver.receive(body, headers)

        assert 200 == receipt.status_code

    def test_non_ascii_secret_is_used_as_utf8(self) -> None:
        """The secret string's UTF-8 bytes are the key, as Node's createHmac uses them."""
        # node -e "crypto.createHmac('sha256', 'clé-東京').update(JSON.stringify({a: 1}))
        #          .digest('hex')"
        expected = "6eed86e6900f19b67603634056f9dbb0da53c27f1e07d20d9ac5b7a386131c8b"

        assert expected == sign_webhook({"a": 1}, "clé-東京")

    async def test_raw_body_is_required_not_a_parsed_dict(self, receiver: WebhookReceiver) -> None:
        """receive() given a dict raises TypeError explaining that raw bytes are needed."""
        _, headers = signed(task_created())

        with pytest.raises(TypeError, match="raw request body as bytes"):
            await receiver.receive(task_created(), headers)  # type: ignore[arg-type]

    async def test_raw_body_is_required_not_text(self, receiver: WebhookReceiver) -> None:
        """A str body is refused too: its encoding is not known to be Cobalt's bytes."""
        body, headers = signed(task_created())

        with pytest.raises(TypeError, match="not str"):
            await receiver.receive(body.decode(), headers)  # type: ignore[arg-type]

    @pytest.mark.parametrize("secrets", [[], [""], "whsec_a_single_string"])
    def test_receiver_refuses_missing_or_malformed_secrets(self, secrets: Any) -> None:
        """An empty list, an empty secret or a bare string is a ConfigurationError."""
        with pytest.raises(ConfigurationError, match="secrets"):
            WebhookReceiver(InMemorySink(), secrets=secrets)


class TestInvalidBody:
    """Row 6: a verified body that is not JSON, or not an event, is 400."""

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"not json at all", id="not-json"),
            pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
            pytest.param(b"[1, 2, 3]", id="list"),
            pytest.param(b'"task.created"', id="string"),
            pytest.param(b'{"job_id": "job-1", "data": {}}', id="missing-type"),
            pytest.param(b'{"type": 5, "job_id": "job-1"}', id="type-not-string"),
            pytest.param(b'{"type": "task.created", "data": {}}', id="terminal-without-job-id"),
        ],
    )
    async def test_verified_body_that_is_not_an_event_is_400(
        self, receiver: WebhookReceiver, sink: InMemorySink, hook: Recorder, body: bytes
    ) -> None:
        """A correctly signed body that is not an event object is refused with 400."""
        receipt = await receiver.receive(body, {"cobalt-verification": sign_webhook(body, SECRET)})

        assert (400, "invalid") == (receipt.status_code, receipt.result)
        assert {} == await sink.get_outcomes(["job-1"])
        assert [] == hook.events

    @pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"data": {}}'])
    def test_verify_webhook_raises_for_a_signed_non_event(self, body: bytes) -> None:
        """verify_webhook() reports a signed non-event as WebhookVerificationError."""
        headers = {"cobalt-verification": sign_webhook(body, SECRET)}

        with pytest.raises(WebhookVerificationError, match="not a Cobalt event"):
            verify_webhook(body, headers, [SECRET])


class TestTooLarge:
    """Row 7: a body over the size limit is 413."""

    async def test_body_over_the_limit_is_413_even_if_signed(self, sink: InMemorySink) -> None:
        """One byte over max_body_bytes is refused before verification."""
        body, headers = signed(task_created())
        receiver = WebhookReceiver(sink, secrets=[SECRET], max_body_bytes=len(body) - 1)

        receipt = await receiver.receive(body, headers)

        assert (413, "too_large") == (receipt.status_code, receipt.result)
        assert 0 == sink.stats().buffered

    async def test_body_at_the_limit_is_accepted(self, sink: InMemorySink) -> None:
        """A body of exactly max_body_bytes is within the limit."""
        body, headers = signed(task_created())
        receiver = WebhookReceiver(sink, secrets=[SECRET], max_body_bytes=len(body))

        receipt = await receiver.receive(body, headers)

        assert 200 == receipt.status_code

    def test_default_limit_is_one_mebibyte(self, receiver: WebhookReceiver) -> None:
        """The default size limit is 1 MiB, as docs/webhooks.md states."""
        assert 1024 * 1024 == receiver.max_body_bytes


class TestSinkUnavailable:
    """Row 8: a sink that cannot persist gets a 503 quickly, so Cobalt's retry can land."""

    async def test_sink_raising_unavailable_is_503(self) -> None:
        """SinkUnavailableError from the sink becomes a 503 receipt, not an exception."""
        receiver = WebhookReceiver(UnavailableSink(), secrets=[SECRET])

        with anyio.fail_after(1):
            receipt = await receiver.receive(*signed(task_created()))

        assert (503, "unavailable") == (receipt.status_code, receipt.result)

    async def test_hanging_sink_is_503_after_publish_timeout(self) -> None:
        """A sink that never answers is given up on after publish_timeout, with 503."""
        sink = HangingSink()
        receiver = WebhookReceiver(sink, secrets=[SECRET], publish_timeout=0.05)

        with anyio.fail_after(2):
            receipt = await receiver.receive(*signed(task_created()))

        assert sink.entered.is_set()
        assert (503, "unavailable") == (receipt.status_code, receipt.result)

    async def test_hook_is_not_run_when_the_event_was_not_stored(self) -> None:
        """A 503'd delivery will be retried: running the hook now would run it twice."""
        hook = Recorder()
        receiver = WebhookReceiver(UnavailableSink(), secrets=[SECRET], on_event=hook)

        await receiver.receive(*signed(task_created()))

        assert [] == hook.events

    def test_default_publish_timeout_leaves_room_for_cobalts_retry(
        self, receiver: WebhookReceiver
    ) -> None:
        """The default publish timeout is at most 1.5 s (Cobalt's retry waits 2 s)."""
        assert 0 < receiver.publish_timeout <= 1.5


def _scenarios() -> list[Any]:
    body, headers = signed(task_created())
    return [
        pytest.param(UnavailableSink, body, headers, id="sink-unavailable"),
        pytest.param(InMemorySink, body, headers, id="accepted"),
        pytest.param(InMemorySink, *_wrong_secret(task_created()), id="wrong-secret"),
        pytest.param(InMemorySink, *_tampered(task_created()), id="tampered"),
        pytest.param(InMemorySink, *_unsigned(task_created()), id="unsigned"),
        pytest.param(
            InMemorySink,
            PHI.encode(),
            {"cobalt-verification": sign_webhook(PHI.encode(), SECRET)},
            id="signed-non-json",
        ),
        pytest.param(InMemorySink, *signed(task_failed()), id="failure-event"),
    ]


class TestNoLeaks:
    """No secret, signature or body text in any log record or receipt detail."""

    @pytest.mark.parametrize(("sink_type", "body", "headers"), _scenarios())
    async def test_logs_and_receipts_hold_no_secret_signature_or_body_text(
        self,
        sink_type: type[InMemorySink],
        body: bytes,
        headers: dict[str, str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Whatever the outcome, logs and receipt details carry metadata only."""
        caplog.set_level(logging.DEBUG, logger="cobalt_async")

        def on_event(event: Event) -> None:
            raise RuntimeError("hook failed")

        receiver = WebhookReceiver(sink_type(), secrets=[SECRET, OLD_SECRET], on_event=on_event)

        receipt = await receiver.receive(body, headers)

        texts = [caplog.text, receipt.detail, repr(receiver)]
        forbidden = [SECRET, OLD_SECRET, OTHER_SECRET, PHI, "Labs", "emr_1"]
        if "cobalt-verification" in headers:
            forbidden.append(headers["cobalt-verification"])
        for text in texts:
            for secret in forbidden:
                assert secret not in text

    def test_verification_errors_hold_no_secret_or_signature(self) -> None:
        """WebhookVerificationError's message names the failure, not the values."""
        body, headers = _wrong_secret(task_created())

        with pytest.raises(WebhookVerificationError) as info:
            verify_webhook(body, headers, [SECRET])

        message = str(info.value)
        assert "does not match" in message
        for value in (SECRET, OTHER_SECRET, headers["cobalt-verification"], PHI):
            assert value not in message
