"""
OpenTelemetry spans and metrics, once the application configured a provider.

Without ``opentelemetry-api`` (the ``otel`` extra), or before a tracer or meter provider is
set, every function here returns at its first check: the hot paths pay one call. Providers are
looked up at most once a second (the API's lookup reads the environment, too slow to do per
webhook), so one set after start-up takes effect within a second. Attributes carry ids,
kinds, types and status codes only: never a field of a request or an event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from ._version import __version__

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the tests run with the otel extra installed
    metrics = trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, Meter
    from opentelemetry.trace import Span, Tracer

    from ._outcome import JobKind, Outcome

NAME = "cobalt_async"
_PROPAGATOR = TraceContextTextMapPropagator() if trace is not None else None


class _Instruments:
    """The package's metrics, made once per meter provider."""

    def __init__(self, meter: Meter) -> None:
        self.submitted: Counter = meter.create_counter(
            "cobalt.jobs.submitted", unit="{job}", description="Jobs Cobalt accepted"
        )
        self.resolved: Counter = meter.create_counter(
            "cobalt.jobs.resolved", unit="{job}", description="Outcomes learnt, by webhook or poll"
        )
        self.duration: Histogram = meter.create_histogram(
            "cobalt.job.duration", unit="s", description="From acceptance to the outcome"
        )
        self.deliveries: Counter = meter.create_counter(
            "cobalt.webhook.deliveries", unit="{delivery}", description="Deliveries, by answer"
        )
        self.sink_errors: Counter = meter.create_counter(
            "cobalt.sink.errors", unit="{error}", description="Sink operations that failed"
        )


_LOOKUP_INTERVAL = 1.0
_looked_up_until = -1.0
_tracer: Tracer | None = None
_instruments: _Instruments | None = None
# The last provider seen and what was made from it: providers are set once in practice.
_tracer_of: tuple[object, Tracer] | None = None
_instruments_of: tuple[object, _Instruments] | None = None


def refresh() -> None:
    """Look the providers up again now, not at the next second (for tests)."""
    global _looked_up_until
    _looked_up_until = -1.0
    _look_up()


def _look_up() -> None:
    global _looked_up_until, _tracer, _instruments
    now = time.monotonic()
    if now < _looked_up_until:
        return
    _looked_up_until = now + _LOOKUP_INTERVAL
    _tracer, _instruments = _tracer_from_provider(), _instruments_from_provider()


def _tracer_from_provider() -> Tracer | None:
    global _tracer_of
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None
    if _tracer_of is None or _tracer_of[0] is not provider:
        _tracer_of = provider, provider.get_tracer(NAME, __version__)
    return _tracer_of[1]


def _instruments_from_provider() -> _Instruments | None:
    global _instruments_of
    if metrics is None:
        return None
    provider = metrics.get_meter_provider()
    if type(provider).__name__ == "_ProxyMeterProvider":  # the API's default: none is set
        return None
    if _instruments_of is None or _instruments_of[0] is not provider:
        _instruments_of = provider, _Instruments(provider.get_meter(NAME, __version__))
    return _instruments_of[1]


def tracer() -> Tracer | None:
    """The package's tracer, or ``None`` while no tracer provider is configured."""
    _look_up()
    return _tracer


def _metrics() -> _Instruments | None:
    _look_up()
    return _instruments


def observing() -> bool:
    """Whether a tracer or a meter provider is configured: one check for a hot path."""
    _look_up()
    return _tracer is not None or _instruments is not None


@contextmanager
def request_span(method: str, path: str) -> Iterator[Span | None]:
    """A client span around one API request, retries included."""
    found = tracer()
    if found is None:
        yield None
        return
    attributes = {"http.request.method": method, "url.path": path}
    with found.start_as_current_span(
        f"cobalt {method} {path}", kind=trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def delivery_span(found: Tracer) -> AbstractContextManager[Span]:
    """A server span for one webhook delivery, from the :func:`tracer` the caller found."""
    return found.start_as_current_span("cobalt webhook delivery", kind=trace.SpanKind.SERVER)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, for an outcome to carry through a sink."""
    if _PROPAGATOR is None or tracer() is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def delivered(span: Span | None, status: int, answer: str, job_id: str | None) -> None:
    """Count a delivery by its answer, and describe its span."""
    if span is not None:
        attributes: dict[str, str | int] = {
            "http.response.status_code": status,
            "cobalt.webhook.answer": answer,
        }
        if job_id is not None:
            attributes["cobalt.job_id"] = job_id
        span.set_attributes(attributes)
    instruments = _metrics()
    if instruments is not None:
        instruments.deliveries.add(1, {"cobalt.webhook.answer": answer})


def job_submitted(kind: JobKind) -> None:
    instruments = _metrics()
    if instruments is not None:
        instruments.submitted.add(1, {"cobalt.job.kind": kind})


def job_resolved(
    job_id: str, kind: JobKind, outcome: Outcome, submitted_at: float | None, resolved_at: float
) -> None:
    """Record an awaited job: a span from acceptance to outcome, linked to its delivery."""
    if not observing():
        return
    attributes = {
        "cobalt.job_id": job_id,
        "cobalt.job.kind": kind,
        "cobalt.job.resolved_via": outcome.via,
        "cobalt.event.type": outcome.event.type,
    }
    instruments = _metrics()
    if instruments is not None:
        labels = {key: attributes[key] for key in attributes if key != "cobalt.job_id"}
        instruments.resolved.add(1, labels)
        if submitted_at is not None:
            instruments.duration.record(max(0.0, resolved_at - submitted_at), labels)
    found = tracer()
    if found is None:
        return
    started = submitted_at if submitted_at is not None else resolved_at
    span = found.start_span(
        f"cobalt job {kind}",
        attributes=attributes,
        links=_links(outcome.trace),
        start_time=int(started * 1e9),
    )
    span.end(end_time=int(resolved_at * 1e9))


def sink_error(operation: str) -> None:
    instruments = _metrics()
    if instruments is not None:
        instruments.sink_errors.add(1, {"cobalt.sink.operation": operation})


def _links(traceparent: str | None) -> list[trace.Link]:
    if traceparent is None or _PROPAGATOR is None:
        return []
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return [trace.Link(span_context)] if span_context.is_valid else []
