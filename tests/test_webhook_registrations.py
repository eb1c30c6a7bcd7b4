"""
``client.webhooks`` against FakeCobalt over real HTTP, Cobalt's two documented answer shapes
on the wire (respx), and a rotation during which deliveries keep flowing and none is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import respx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cobalt_async import (
    CobaltClient,
    ConfigurationError,
    InMemorySink,
    NotFoundError,
    RequestValidationError,
    ServerError,
    Webhook,
    WebhookList,
    WebhookReceiver,
)
from cobalt_async import _logs as logs
from cobalt_async import _telemetry as telemetry
from cobalt_async._secrets_file import SecretEntry, SecretsContent, SecretsFile
from cobalt_async._secrets_file import write as write_secrets
from cobalt_async._servers import serve
from cobalt_async._signing import SIGNATURE_HEADER, sign_webhook
from cobalt_async.asgi import WebhookApp
from cobalt_async.testing import FakeCobalt, make_task_created_event, signed_delivery

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

HOOK_URL = "https://example.com/webhooks/cobalt"
WIRE = "https://api.test/v1"


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn serves FakeCobalt over real sockets: asyncio only."""
    return "asyncio"


@asynccontextmanager
async def served(fake: FakeCobalt, sink: InMemorySink | None = None) -> AsyncIterator[CobaltClient]:
    """*fake* on a loopback port, and a client talking to it over HTTP."""
    async with fake, serve(fake) as url:
        async with CobaltClient(base_url=url + "/v1", sink=sink, **fake.credentials) as client:
            yield client


class TestOverHTTP:
    async def test_create_retrieve_rotate_delete(self) -> None:
        fake = FakeCobalt(webhook_secret="whsec_first")
        async with served(fake) as client:
            hook = await client.webhooks.create(HOOK_URL)
            assert hook.id is not None
            assert hook.id.startswith("wh_")
            assert hook.url == HOOK_URL
            assert hook.secret is not None
            assert hook.secret.get_secret_value() == "whsec_first"

            listed = await client.webhooks.retrieve()
            assert [(item.id, item.url) for item in listed.webhooks] == [(hook.id, HOOK_URL)]

            rotated = await client.webhooks.rotate_secret(hook.id)
            assert rotated.id == hook.id
            assert rotated.secret is not None
            new_secret = rotated.secret.get_secret_value()
            assert new_secret.startswith("whsec_")
            assert new_secret != "whsec_first"
            assert fake.webhook_secret == new_secret  # the fake signs with it from now on
            listed = await client.webhooks.retrieve()
            assert listed.webhooks[0].secret == rotated.secret

            await client.webhooks.delete(hook.id)
            assert (await client.webhooks.retrieve()).webhooks == []
            with pytest.raises(NotFoundError):
                await client.webhooks.delete(hook.id)
            with pytest.raises(NotFoundError):
                await client.webhooks.rotate_secret(hook.id)

    async def test_the_fake_refuses_an_http_url_as_cobalt_does(self) -> None:
        """What the SDK checks locally, Cobalt (and the fake) checks too."""
        fake = FakeCobalt()
        async with fake, serve(fake) as url, httpx.AsyncClient() as http:
            answer = await http.post(
                url + "/v1/webhook",
                json={"webhook_url": "http://x.test/"},
                headers=fake.credentials,
            )
            assert answer.status_code == 400
            unsigned = await http.get(url + "/v1/webhook")
            assert unsigned.status_code == 401


class TestLocalValidation:
    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("http://example.com/hook", "must use https"),
            ("example.com/hook", "absolute URL"),
            ("", "absolute URL"),
            (42, "must be a string"),
        ],
    )
    async def test_a_bad_url_is_refused_before_anything_is_sent(
        self, url: Any, problem: str
    ) -> None:
        sent: list[httpx.Request] = []
        transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(500))
        async with CobaltClient(
            base_url=WIRE, transport=transport, **FakeCobalt().credentials
        ) as client:
            with pytest.raises(RequestValidationError, match=problem) as caught:
                await client.webhooks.create(url)
        assert caught.value.field == "url"
        assert sent == []

    @pytest.mark.parametrize("webhook_id", ["", "  ", "wh_1/../tasks", "wh?x=1", None, True])
    async def test_a_bad_webhook_id_is_refused_before_anything_is_sent(
        self, webhook_id: Any
    ) -> None:
        sent: list[httpx.Request] = []
        transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(500))
        async with CobaltClient(
            base_url=WIRE, transport=transport, **FakeCobalt().credentials
        ) as client:
            for call in (client.webhooks.delete, client.webhooks.rotate_secret):
                with pytest.raises(RequestValidationError, match="webhook_id") as caught:
                    await call(webhook_id)
                assert caught.value.field == "webhook_id"
        assert sent == []


def wire_client() -> CobaltClient:
    return CobaltClient(
        base_url=WIRE, client_id="ci", client_secret="cs", access_token="at", max_retries=2
    )


class TestWireShapes:
    """Every answer shape Cobalt's documents show (reference §6.2) reads the same."""

    @pytest.mark.parametrize(
        "answer",
        [
            {"success": True, "webhook": {"id": "wh_1", "webhook_url": HOOK_URL, "secret": "s"}},
            {"success": True, "webhook_id": "wh_1", "webhook_url": HOOK_URL, "webhook_secret": "s"},
            {
                "success": True,
                "webhook": {
                    "webhook_id": "wh_1",
                    "webhook_url": HOOK_URL,
                    "webhook_secret_key": "s",
                },
            },
        ],
        ids=["api-reference", "api-reference-flat", "api-reference-schema"],
    )
    async def test_create_answers_of_the_api_reference(self, answer: dict[str, Any]) -> None:
        with respx.mock(base_url=WIRE) as router:
            route = router.post("/webhook").respond(200, json=answer)
            async with wire_client() as client:
                hook = await client.webhooks.create(HOOK_URL)
        assert (hook.id, hook.url) == ("wh_1", HOOK_URL)
        assert hook.secret is not None
        assert hook.secret.get_secret_value() == "s"
        # The body every version's example sends.
        assert json.loads(route.calls.last.request.content) == {"webhook_url": HOOK_URL}

    async def test_the_guides_create_answer_has_only_the_secret(self) -> None:
        answer = {
            "success": True,
            "message": "Webhook registered successfully",
            "webhook_secret_key": "k",
        }
        with respx.mock(base_url=WIRE) as router:
            router.post("/webhook").respond(200, json=answer)
            async with wire_client() as client:
                hook = await client.webhooks.create(HOOK_URL)
        assert (hook.id, hook.url) == (None, HOOK_URL)
        assert hook.secret is not None
        assert hook.secret.get_secret_value() == "k"

    async def test_the_guides_listing_with_its_account_secret(self) -> None:
        answer = {
            "success": True,
            "webhook_url": "https://your-domain.com/webhook",
            "webhook_urls": [
                {"id": "987654321", "url": "https://dev.your-domain.com/cobalt-webhook"},
                {"id": 123456789, "url": "https://your-domain.com/cobalt-webhook"},
            ],
            "webhook_secret_key": "your_webhook_secret_key",
        }
        with respx.mock(base_url=WIRE) as router:
            router.get("/webhook").respond(200, json=answer)
            async with wire_client() as client:
                listed = await client.webhooks.retrieve()
        assert [hook.id for hook in listed.webhooks] == ["987654321", "123456789"]
        assert listed.webhooks[1].url == "https://your-domain.com/cobalt-webhook"
        assert listed.secret is not None
        assert {hook.secret for hook in listed.webhooks} == {listed.secret}

    @pytest.mark.parametrize(
        "answer",
        [
            {"webhooks": [{"id": "wh_1", "webhook_url": HOOK_URL, "secret": "s"}]},
            {"webhook_url": HOOK_URL, "webhook_secret_key": "s"},
        ],
        ids=["list-of-webhooks", "one-url"],
    )
    async def test_other_listing_shapes(self, answer: dict[str, Any]) -> None:
        listed = WebhookList.model_validate({"success": True, **answer})
        assert [hook.url for hook in listed.webhooks] == [HOOK_URL]
        assert listed.webhooks[0].secret is not None
        assert listed.webhooks[0].secret.get_secret_value() == "s"

    @pytest.mark.parametrize(
        "answer",
        [
            {"success": True, "webhook": {"id": "wh_9", "secret": "whsec_new"}},
            {"success": True, "webhook_secret_key": "whsec_new"},
        ],
        ids=["api-reference", "guide-account-level"],
    )
    async def test_rotation_answers(self, answer: dict[str, Any]) -> None:
        with respx.mock(base_url=WIRE) as router:
            router.post("/webhook/wh_9/rotate-secret").respond(200, json=answer)
            async with wire_client() as client:
                rotated = await client.webhooks.rotate_secret("wh_9")
        assert rotated.id == "wh_9"
        assert rotated.secret is not None
        assert rotated.secret.get_secret_value() == "whsec_new"

    async def test_an_answer_that_is_no_json_is_a_typed_error(self) -> None:
        from cobalt_async import APIError

        with respx.mock(base_url=WIRE) as router:
            router.get("/webhook").respond(200, text="<html>proxy</html>")
            async with wire_client() as client:
                with pytest.raises(APIError, match="not with a webhook registration"):
                    await client.webhooks.retrieve()


class TestRetries:
    """GET and DELETE are retried; the two POSTs never once they may have reached Cobalt."""

    async def test_retrieve_and_delete_are_retried_after_a_503(self) -> None:
        with respx.mock(base_url=WIRE) as router:
            listing = router.get("/webhook").mock(
                side_effect=[httpx.Response(503), httpx.Response(200, json={"webhook_urls": []})]
            )
            removal = router.delete("/webhook/wh_1").mock(
                side_effect=[httpx.Response(503), httpx.Response(200, json={"success": True})]
            )
            async with wire_client() as client:
                await client.webhooks.retrieve()
                await client.webhooks.delete("wh_1")
        assert (listing.call_count, removal.call_count) == (2, 2)

    @pytest.mark.parametrize("call", ["create", "rotate_secret"])
    async def test_create_and_rotate_are_sent_once(self, call: str) -> None:
        with respx.mock(base_url=WIRE) as router:
            route = router.post(path__regex=r"/webhook.*").respond(503)
            async with wire_client() as client:
                argument = HOOK_URL if call == "create" else "wh_1"
                with pytest.raises(ServerError) as caught:
                    await getattr(client.webhooks, call)(argument)
        assert route.call_count == 1
        assert caught.value.outcome_unknown


class TestSecretsStayHidden:
    def test_reprs_strs_and_dumps_hide_the_secret(self) -> None:
        hook = Webhook.model_validate(
            {"id": "wh_1", "webhook_url": HOOK_URL, "secret": "whsec_hidden"}
        )
        listed = WebhookList.model_validate(
            {"webhook_urls": [{"id": "1"}], "webhook_secret_key": "whsec_hidden"}
        )
        receiver = WebhookReceiver(InMemorySink(), secrets=["whsec_hidden"])
        receiver.rotate_secret("whsec_hidden_2")
        texts = [
            repr(hook),
            str(hook),
            hook.model_dump_json(),
            repr(listed),
            str(listed),
            repr(receiver),
        ]
        for text in texts:
            assert "whsec_hidden" not in text
        assert "wh_1" in repr(hook)
        assert "secrets=2" in repr(receiver)

    async def test_no_secret_in_log_lines_cobalt_log_or_spans(
        self,
        caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
        monkeypatch.setenv(logs.ENV, "debug")
        telemetry.refresh()
        logs.configure_from_environment()
        caplog.set_level(logging.DEBUG, logger="cobalt_async")
        package_logger = logging.getLogger(logs.LOGGER)
        try:
            fake = FakeCobalt(webhook_secret="whsec_hidden_first")
            async with served(fake) as client:
                hook = await client.webhooks.create(HOOK_URL)
                assert hook.id is not None
                await client.webhooks.retrieve()
                rotated = await client.webhooks.rotate_secret(hook.id)
                receiver = WebhookReceiver(InMemorySink(), secrets=["whsec_hidden_first"])
                receiver.rotate_secret("whsec_hidden_first" + "x")
                receiver.retire_secret("whsec_hidden_first")
                body, headers = signed_delivery(make_task_created_event(), "whsec_hidden_first")
                assert (await receiver.receive(body, headers)).status_code == 401
                await client.webhooks.delete(hook.id)
        finally:
            for handler in list(package_logger.handlers):
                if type(handler).__name__ == "_StderrHandler":
                    package_logger.removeHandler(handler)
            package_logger.setLevel(logging.NOTSET)
            monkeypatch.undo()
            telemetry.refresh()
            provider.shutdown()
        assert rotated.secret is not None
        stderr = capsys.readouterr().err
        assert "/v1/webhook" in stderr  # COBALT_LOG did log these requests...
        spans = exporter.get_finished_spans()
        assert any("/webhook" in str(span.attributes) for span in spans)  # ...and spans exist
        texts = [
            stderr,
            caplog.text,
            *(f"{span.name} {dict(span.attributes or {})}" for span in spans),
        ]
        for text in texts:
            assert "whsec_hidden" not in text
            assert rotated.secret.get_secret_value() not in text


class TestReceiverRotation:
    """The receiver takes a new secret while running and retires the old one on time."""

    def clock(self) -> tuple[list[float], WebhookReceiver]:
        now = [1000.0]
        return now, WebhookReceiver(InMemorySink(), secrets=["whsec_old"], clock=lambda: now[0])

    async def status(self, receiver: WebhookReceiver, secret: str) -> int:
        body, headers = signed_delivery(make_task_created_event(), secret)
        return (await receiver.receive(body, headers)).status_code

    async def test_both_secrets_verify_during_the_grace_then_only_the_new(self) -> None:
        now, receiver = self.clock()
        receiver.rotate_secret("whsec_new", retire_old_after=timedelta(hours=24))
        assert (
            await self.status(receiver, "whsec_old"),
            await self.status(receiver, "whsec_new"),
        ) == (200, 200)
        now[0] += 24 * 3600 - 1
        assert await self.status(receiver, "whsec_old") == 200
        now[0] += 1
        assert (
            await self.status(receiver, "whsec_old"),
            await self.status(receiver, "whsec_new"),
        ) == (401, 200)
        assert receiver.secret_count == 1

    async def test_the_default_grace_is_cobalts_24_hours(self) -> None:
        now, receiver = self.clock()
        receiver.rotate_secret("whsec_new")
        now[0] += 24 * 3600 - 0.5
        assert await self.status(receiver, "whsec_old") == 200
        now[0] += 0.5
        assert await self.status(receiver, "whsec_old") == 401

    async def test_two_rotations_keep_the_earlier_deadline(self) -> None:
        now, receiver = self.clock()
        receiver.rotate_secret("whsec_mid", retire_old_after=10)
        receiver.rotate_secret("whsec_new", retire_old_after=100)
        now[0] += 10
        assert await self.status(receiver, "whsec_old") == 401
        assert await self.status(receiver, "whsec_mid") == 200
        now[0] += 90
        assert await self.status(receiver, "whsec_mid") == 401
        assert await self.status(receiver, "whsec_new") == 200

    async def test_add_and_retire_secret(self) -> None:
        now, receiver = self.clock()
        receiver.add_secret("whsec_new")
        assert await self.status(receiver, "whsec_new") == 200
        receiver.retire_secret("whsec_old", after=5)
        now[0] += 5
        assert await self.status(receiver, "whsec_old") == 401
        receiver.retire_secret("whsec_new")
        assert await self.status(receiver, "whsec_new") == 401
        receiver.add_secret("whsec_new")  # a retired secret can be accepted again
        assert await self.status(receiver, "whsec_new") == 200

    def test_bad_arguments_are_named_and_never_echo_a_secret(self) -> None:
        _, receiver = self.clock()
        with pytest.raises(ConfigurationError, match="does not accept that secret") as caught:
            receiver.retire_secret("whsec_unknown")
        assert "whsec_unknown" not in str(caught.value)
        for grace in (-1, float("nan"), "1h", True):
            with pytest.raises(ConfigurationError, match="grace period"):
                receiver.rotate_secret("whsec_new", retire_old_after=grace)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="non-empty string"):
            receiver.add_secret("")

    async def test_while_expecting_a_new_secret_an_unknown_signature_gets_503(self) -> None:
        now, receiver = self.clock()
        receiver.expect_new_secret(within=30)
        assert await self.status(receiver, "whsec_next") == 503  # Cobalt retries a 5xx
        assert await self.status(receiver, "whsec_old") == 200
        receiver.rotate_secret("whsec_next")
        assert await self.status(receiver, "whsec_other") == 401  # the hold ended
        receiver.expect_new_secret(within=30)
        now[0] += 30
        assert await self.status(receiver, "whsec_other") == 401  # and it times out


class Recorder:
    """An ASGI app in front of the receiver's: keeps each delivery's signature and answer."""

    def __init__(self, app: WebhookApp) -> None:
        self.app = app
        self.deliveries: list[tuple[bytes, str, int]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        status: list[int] = []

        async def recording_receive() -> Any:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, recording_receive, recording_send)
        signature = dict(scope["headers"]).get(SIGNATURE_HEADER.encode(), b"").decode()
        self.deliveries.append((b"".join(chunks), signature, status[0]))

    def signed_with(self, secret: str) -> list[int]:
        return [
            status for body, sig, status in self.deliveries if sign_webhook(body, secret) == sig
        ]


class TestNoDeliveryDropped:
    """Tasks keep completing while the secret rotates: every webhook is stored, none refused."""

    async def rotate_during_traffic(
        self, *, hold: bool
    ) -> tuple[FakeCobalt, Recorder, str, list[Any]]:
        sink = InMemorySink()
        receiver = WebhookReceiver(sink, secrets=["whsec_old"])
        recorder = Recorder(WebhookApp(receiver))
        async with serve(recorder) as receiver_url:
            # Answers take 0.3 s and jobs 0.45 s, so the jobs submitted just before the
            # rotation finish, signed with the new secret, while its answer is on the way.
            fake = FakeCobalt(
                webhook_secret="whsec_old",
                webhook_url=receiver_url,
                latency=0.45,
                response_delay=0.3,
                retry_delay=0.2,
            )
            async with served(fake, sink) as client:
                hook = await client.webhooks.create(HOOK_URL)
                assert hook.id is not None
                before = [
                    await client.tasks.create(patient_mrn="MRN-1", description="d")
                    for _ in range(3)
                ]
                with anyio.fail_after(10):
                    for handle in before:
                        await handle  # delivered and signed with the old secret
                async with anyio.create_task_group() as tg:
                    handles: list[Any] = []

                    async def submit() -> None:
                        handles.append(
                            await client.tasks.create(patient_mrn="MRN-1", description="d")
                        )

                    for _ in range(5):
                        tg.start_soon(submit)
                if hold:
                    receiver.expect_new_secret(within=30)
                rotated = await client.webhooks.rotate_secret(hook.id)
                assert rotated.secret is not None
                new_secret = rotated.secret.get_secret_value()
                receiver.rotate_secret(new_secret)
                after = [
                    await client.tasks.create(patient_mrn="MRN-1", description="d")
                    for _ in range(3)
                ]
                with anyio.fail_after(20):
                    await fake.drain()
                    # Without the hold a refused webhook leaves its handle to the slow backstop.
                    every = [*before, *handles, *after] if hold else []
                    results = [(await handle).type for handle in every]
        return fake, recorder, new_secret, results

    async def test_deliveries_signed_with_the_old_then_the_new_secret_all_land(self) -> None:
        fake, recorder, new_secret, statuses = await self.rotate_during_traffic(hold=True)
        assert fake.stats.deliveries_failed == 0
        assert fake.stats.deliveries_succeeded == fake.stats.jobs_finished == 11
        assert recorder.signed_with("whsec_old") == [200, 200, 200]
        by_new = recorder.signed_with(new_secret)
        assert by_new.count(200) == 8
        assert 503 in by_new  # one landed before the receiver had the secret: held, retried
        assert statuses == ["task.created"] * 11

    async def test_without_the_hold_that_delivery_would_be_refused(self) -> None:
        """The control: what the hold prevents, so the test above could fail."""
        fake, recorder, new_secret, _ = await self.rotate_during_traffic(hold=False)
        assert 401 in recorder.signed_with(new_secret)
        assert fake.stats.deliveries_failed > 0


class TestSecretsFile:
    """The shared file a fleet of receivers re-reads: what a rotation writes, they accept."""

    async def status(self, receiver: WebhookReceiver, secret: str) -> int:
        body, headers = signed_delivery(make_task_created_event(), secret)
        return (await receiver.receive(body, headers)).status_code

    async def test_a_secret_written_to_the_file_verifies_at_its_first_delivery(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "secrets"
        path.write_text("# comment\nwhsec_old\n")
        receiver = WebhookReceiver(InMemorySink(), secrets_file=path)
        assert await self.status(receiver, "whsec_new") == 401
        write_secrets(path, SecretsContent((SecretEntry("whsec_old"), SecretEntry("whsec_new"))))
        # No waiting for the periodic look: a signature no secret fits re-reads the file.
        assert await self.status(receiver, "whsec_new") == 200
        assert await self.status(receiver, "whsec_old") == 200

    async def test_retire_at_and_expect_new_secret_lines(self, tmp_path: Path) -> None:
        path = tmp_path / "secrets"
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        path.write_text(f"expect-new-secret\nwhsec_gone retire-at={past}\nwhsec_old\n")
        receiver = WebhookReceiver(InMemorySink(), secrets_file=path)
        assert await self.status(receiver, "whsec_gone") == 503  # held, not refused
        assert await self.status(receiver, "whsec_old") == 200
        path.write_text(f"whsec_gone retire-at={past}\nwhsec_old\n")
        assert await self.status(receiver, "whsec_gone") == 401

    async def test_a_broken_edit_keeps_the_secrets_in_force(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = tmp_path / "secrets"
        path.write_text("whsec_old\n")
        receiver = WebhookReceiver(InMemorySink(), secrets_file=path)
        path.write_text("whsec_old retire-at=tomorrow\n")
        assert await self.status(receiver, "whsec_other") == 401
        assert await self.status(receiver, "whsec_old") == 200
        assert "line 1" in caplog.text
        assert "whsec_old" not in caplog.text

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("", "lists no secret"),
            ("whsec_x expires=1\n", "line 1: unknown option"),
            ("whsec_x retire-at=2026-01-01T00:00:00\n", "with its offset"),
        ],
    )
    def test_a_bad_file_fails_at_startup_without_its_secret(
        self, tmp_path: Path, text: str, problem: str
    ) -> None:
        path = tmp_path / "secrets"
        path.write_text(text)
        with pytest.raises(ConfigurationError, match=problem) as caught:
            WebhookReceiver(InMemorySink(), secrets_file=path)
        assert "whsec_x" not in str(caught.value)

    def test_a_missing_file_or_both_sources_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigurationError, match="cannot read the webhook secrets file"):
            WebhookReceiver(InMemorySink(), secrets_file=tmp_path / "absent")
        (tmp_path / "secrets").write_text("whsec_x\n")
        with pytest.raises(ConfigurationError, match="not both"):
            WebhookReceiver(InMemorySink(), secrets=["whsec_y"], secrets_file=tmp_path / "secrets")

    async def test_rotate_secret_rolls_the_file_around_the_call(self, tmp_path: Path) -> None:
        path = tmp_path / "secrets"
        path.write_text("whsec_old\n")
        receiver = WebhookReceiver(InMemorySink(), secrets_file=path)
        fake = FakeCobalt(webhook_secret="whsec_old")
        seen_during_call: list[str] = []
        async with served(fake) as client:
            hook = await client.webhooks.create(HOOK_URL)
            assert hook.id is not None
            original = fake.webhooks._rotate

            def spying(webhook_id: str) -> Any:
                seen_during_call.append(path.read_text())
                return original(webhook_id)

            fake.webhooks._rotate = spying  # type: ignore[method-assign]
            rotated = await client.webhooks.rotate_secret(
                hook.id, secrets_file=path, retire_old_after=timedelta(hours=2)
            )
        assert "expect-new-secret" in seen_during_call[0]
        assert rotated.secret is not None
        new_secret = rotated.secret.get_secret_value()
        content = SecretsFile(path).read()
        assert not content.expecting
        assert [entry.secret for entry in content.entries] == ["whsec_old", new_secret]
        old_retires = content.entries[0].retire_at
        assert old_retires is not None
        remaining = old_retires - datetime.now(UTC)
        assert timedelta(hours=2) - timedelta(minutes=1) < remaining <= timedelta(hours=2)
        assert await self.status(receiver, new_secret) == 200
        assert await self.status(receiver, "whsec_old") == 200

    async def test_a_refused_rotation_puts_the_file_back(self, tmp_path: Path) -> None:
        path = tmp_path / "secrets"
        path.write_text("whsec_old\n")
        fake = FakeCobalt(webhook_secret="whsec_old")
        async with served(fake) as client:
            with pytest.raises(NotFoundError):
                await client.webhooks.rotate_secret("wh_unknown", secrets_file=path)
        assert SecretsFile(path).read() == SecretsContent((SecretEntry("whsec_old"),))
