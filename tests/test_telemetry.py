"""
OpenTelemetry, judged by the OpenTelemetry SDK's own in-memory exporter and metric reader:
a span per request, a span per awaited job linked to the delivery that resolved it (across
processes too, through Redis), the metrics, and nothing of the EHR in any attribute.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cobalt_async import CobaltClient, InMemorySink, Sink, SinkUnavailableError, WebhookReceiver
from cobalt_async import _telemetry as telemetry
from cobalt_async.testing import FakeCobalt, make_task_created_event, signed_delivery
from tests._redis_server import RedisServer

pytestmark = pytest.mark.anyio

PHI = "Jane Doe DOB 1961-04-02"


@dataclass
class Recorded:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for found in scope.metrics
            if found.name == metric
            for point in found.data.data_points
        ]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    """Providers of the SDK for this test only: the API's globals may be set once per process."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracer_provider)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: meter_provider)
    telemetry.refresh()
    yield Recorded(exporter, reader)
    monkeypatch.undo()
    telemetry.refresh()  # no test after this one records into these providers
    tracer_provider.shutdown()
    meter_provider.shutdown()


def client_of(fake: FakeCobalt, sink: Sink) -> CobaltClient:
    return CobaltClient(
        base_url=fake.base_url, transport=fake.transport, sink=sink, **fake.credentials
    )


def all_attributes(recorded: Recorded) -> list[object]:
    return [
        value for span in recorded.spans.get_finished_spans() for value in span.attributes.values()
    ]


async def test_a_request_a_delivery_and_the_awaited_job_are_spans(recorded: Recorded) -> None:
    sink = InMemorySink()
    fake = FakeCobalt(latency=0.01)
    fake.receiver = WebhookReceiver(sink, secrets=[fake.webhook_secret])
    with anyio.fail_after(10):
        async with fake, client_of(fake, sink) as client:
            handle = await client.tasks.create(patient_mrn="MRN-1", description=PHI)
            await handle

    (request,) = recorded.named("cobalt POST /v1/tasks")
    assert trace.SpanKind.CLIENT == request.kind
    assert {
        "http.request.method": "POST",
        "url.path": "/v1/tasks",
    }.items() <= request.attributes.items()
    assert 200 == request.attributes["http.response.status_code"]
    (delivery,) = recorded.named("cobalt webhook delivery")
    assert trace.SpanKind.SERVER == delivery.kind
    assert ("accepted", handle.job_id) == (
        delivery.attributes["cobalt.webhook.answer"],
        delivery.attributes["cobalt.job_id"],
    )
    (job,) = recorded.named("cobalt job task")
    assert {
        "cobalt.job_id": handle.job_id,
        "cobalt.job.kind": "task",
        "cobalt.job.resolved_via": "webhook",
        "cobalt.event.type": "task.created",
    } == dict(job.attributes)
    assert [delivery.context.span_id] == [link.context.span_id for link in job.links]
    assert handle.submitted_at is not None
    assert handle.resolved_at is not None
    assert job.start_time == int(handle.submitted_at * 1e9)
    assert job.end_time == int(handle.resolved_at * 1e9)
    assert all(PHI not in str(value) for value in all_attributes(recorded))


async def test_the_metrics_count_jobs_deliveries_and_latency(recorded: Recorded) -> None:
    sink = InMemorySink()
    fake = FakeCobalt(latency=0.01, duplicate_rate=1.0)
    fake.receiver = WebhookReceiver(sink, secrets=[fake.webhook_secret])
    with anyio.fail_after(10):
        async with fake, client_of(fake, sink) as client:
            handles = [
                await client.tasks.create(patient_mrn="MRN-1", description="Call") for _ in range(3)
            ]
            for handle in handles:
                await handle
            await fake.drain()

    (submitted,) = recorded.points("cobalt.jobs.submitted")
    assert (3, {"cobalt.job.kind": "task"}) == (submitted.value, dict(submitted.attributes))
    (resolved,) = recorded.points("cobalt.jobs.resolved")
    assert 3 == resolved.value
    assert "webhook" == resolved.attributes["cobalt.job.resolved_via"]
    (duration,) = recorded.points("cobalt.job.duration")
    assert 3 == duration.count
    assert 0 < duration.sum < 10
    answers = {
        point.attributes["cobalt.webhook.answer"]: point.value
        for point in recorded.points("cobalt.webhook.deliveries")
    }
    assert {"accepted": 3, "duplicate": 3} == answers


class DownSink(InMemorySink):
    async def put_if_absent(self, job_id: str, outcome: Any) -> Any:
        raise SinkUnavailableError("down")


async def test_a_sink_outage_is_counted_and_answered_503(recorded: Recorded) -> None:
    receiver = WebhookReceiver(DownSink(), secrets=["whsec_t"])

    receipt = await receiver.receive(*signed_delivery(make_task_created_event(), "whsec_t"))

    assert 503 == receipt.status_code
    (errors,) = recorded.points("cobalt.sink.errors")
    assert (1, {"cobalt.sink.operation": "publish"}) == (errors.value, dict(errors.attributes))
    (delivery,) = recorded.named("cobalt webhook delivery")
    assert "unavailable" == delivery.attributes["cobalt.webhook.answer"]


@pytest.mark.redis
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_job_span_links_to_a_delivery_received_by_another_sink(
    recorded: Recorded, redis_server: RedisServer, redis_namespace: str
) -> None:
    """The traceparent travels with the outcome through Redis to the waiting process."""
    from cobalt_async.sinks import RedisSink

    fake = FakeCobalt(latency=0.01)
    receiving = RedisSink(redis_server.url, namespace=redis_namespace)
    fake.receiver = WebhookReceiver(receiving, secrets=[fake.webhook_secret])
    waiting = RedisSink(redis_server.url, namespace=redis_namespace)
    with anyio.fail_after(15):
        async with receiving, fake, client_of(fake, waiting) as client:
            handle = await client.tasks.create(patient_mrn="MRN-1", description="Call")
            await handle

    (delivery,) = recorded.named("cobalt webhook delivery")
    (job,) = recorded.named("cobalt job task")
    assert [delivery.context.span_id] == [link.context.span_id for link in job.links]
    assert delivery.context.trace_id == job.links[0].context.trace_id


def test_without_a_configured_provider_nothing_is_made() -> None:
    """The API's defaults (no SDK set up) cost one check and record nothing."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert telemetry.tracer() is None
    assert telemetry.current_traceparent() is None
    assert not telemetry.observing()
    with telemetry.request_span("GET", "/v1/webhook-events") as span:
        assert span is None


def test_without_opentelemetry_installed_every_call_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(telemetry, "trace", None)
    monkeypatch.setattr(telemetry, "metrics", None)
    monkeypatch.setattr(telemetry, "_PROPAGATOR", None)
    telemetry.refresh()

    telemetry.job_submitted("task")
    telemetry.sink_error("publish")
    telemetry.delivered(None, 200, "accepted", "1")
    assert telemetry.tracer() is None
    assert telemetry.current_traceparent() is None
    assert not telemetry.observing()
