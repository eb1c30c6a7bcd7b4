"""
Fuzzing the one ingestion path: ``WebhookReceiver.receive`` and the ASGI ``WebhookApp``.

Whatever arrives, the answer is one of 200, 400, 401, 413 or 422 (docs/webhooks.md; the
503 of a failing sink is not injected here), no exception escapes, and nothing is resolved
without a valid signature: no outcome stored, ``sink.stats()`` unchanged, no waiter woken,
no hook run.

The Hypothesis tests are sync; each example runs its async part through a blocking portal
on a backend Hypothesis draws, so asyncio and trio share the examples instead of doubling
them, and no example pays for starting an event loop (``anyio.run`` costs more than the
delivery itself).

Examples (each test checks that it ran at least its share):

    RECEIVER_EXAMPLES        3,000   any delivery -> WebhookReceiver.receive
    ASGI_EXAMPLES            3,000   any delivery -> WebhookApp, chunked, raw header lists
    VALID_RECEIVER_EXAMPLES  2,000   any valid event, compact or pretty -> receive: 200
    VALID_ASGI_EXAMPLES      2,000   the same through WebhookApp
                            ------
                            10,000
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cobalt_async import Event, InMemorySink, Receipt, SinkStats, UnknownEvent, WebhookReceiver
from cobalt_async._signing import compact_json
from cobalt_async._types import Message, Scope
from cobalt_async.asgi import WebhookApp
from cobalt_async.sinks import Outcome, PublishResult

SECRET = "whsec_fuzz_current_0123456789"
OLD_SECRET = "whsec_fuzz_previous_9876543210"
"""Both are configured, as during a rotation."""
FOREIGN_SECRET = "whsec_fuzz_not_ours"
SECRETS = (SECRET, OLD_SECRET)
LIMIT = 4096
"""
A small ``max_body_bytes`` makes bodies around the limit, and 413s, cheap. Not smaller: a
body must be able to nest past the recursion limit, which Hypothesis raises to the test's
stack depth + 2,000 while a test runs (1,000 is the default a server runs with).
"""
PHI = "PHI-Jane-Doe-1961"
"""Patient text put in generated events: it must never reach a log line."""
WATCHED = "job-fuzz"
"""A job_id that is always awaited, whatever the body names."""
SIGNATURE = "cobalt-verification"
TERMINAL_TYPES = ("task.created", "task.failed", "task_note.created", "task_note.failed")
ALLOWED = frozenset({200, 400, 401, 413, 422})
STORED = {200: "accepted", 422: "unreadable"}
"""The answers that store the event: a new one, and a terminal one that cannot be read."""

RECEIVER_EXAMPLES = 3_000
ASGI_EXAMPLES = 3_000
VALID_RECEIVER_EXAMPLES = 2_000
VALID_ASGI_EXAMPLES = 2_000
TOTAL_EXAMPLES = RECEIVER_EXAMPLES + ASGI_EXAMPLES + VALID_RECEIVER_EXAMPLES + VALID_ASGI_EXAMPLES
assert TOTAL_EXAMPLES >= 10_000


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,  # nothing written into the work tree; a failure prints its example
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- the oracle: docs/webhooks.md restated, independently of cobalt_async._webhooks ----------


def node_stringify(value: Any) -> bytes:
    """``JSON.stringify`` of a parsed body (judged against Node in tests/test_node_json.py)."""
    return compact_json(value)


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def compact_form(body: bytes) -> bytes | None:
    """The compact re-serialisation of *body*, or None when there is none to verify."""
    try:
        return node_stringify(json.loads(body))
    except (ValueError, RecursionError):
        # Not JSON, or nested too deep to re-serialise.
        return None


def valid_digests(body: bytes) -> set[str]:
    """Every signature a holder of one of our secrets could have sent for *body*."""
    digests = {hex_hmac(secret, body) for secret in SECRETS}
    compact = compact_form(body)
    if compact is not None:
        digests |= {hex_hmac(secret, compact) for secret in SECRETS}
    return digests


def signature_ok(body: bytes, value: str) -> bool:
    # Hex is case-insensitive and surrounding whitespace is no part of a signature: both
    # are tolerated. Anything else about the value must be exact.
    return value.strip().lower() in valid_digests(body)


def header_values(headers: Any, name: str) -> list[str]:
    """The values of *name* in any header container ``receive()`` accepts, in order."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    found = []
    for key, value in items:
        key_text = key.decode("latin-1") if isinstance(key, bytes) else key
        if key_text.lower() == name:
            found.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return found


def expected_status(body: bytes, signature_values: Sequence[str]) -> set[int]:
    """The answers docs/webhooks.md allows for *body* with these signature header values."""
    if len(body) > LIMIT:
        return {413}
    valid = [signature_ok(body, value) for value in signature_values]
    if valid and all(valid):
        return {200, 400, 422}
    if not any(valid):
        return {401}
    return {200, 400, 401, 422}  # one valid and one not: either reading is defensible


def watched_job_ids(body: bytes) -> list[str]:
    """Job ids to await during a delivery: a fixed one, and the one the body names."""
    watched = [WATCHED]
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return watched
    if isinstance(parsed, dict):
        job_id = parsed.get("job_id")
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            job_id = str(job_id)
        if isinstance(job_id, str) and job_id not in watched:
            watched.append(job_id)
    return watched


def is_terminal(event: Event) -> bool:
    return event.type in TERMINAL_TYPES and event.job_id is not None


# -- the harness: a fresh sink, waiters on the watched job ids, a hook, captured logs --------


class RecordingSink(InMemorySink):
    """An in-memory sink that records every event the receiver publishes to it."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Event] = []

    async def publish(
        self, event: Event, *, delivery_id: str | None = None, via: str = "webhook"
    ) -> PublishResult:
        self.published.append(event)
        return await super().publish(event, delivery_id=delivery_id, via=via)


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module", autouse=True)
def log_lines() -> Iterator[LogLines]:
    """Every log line of the library, kept away from pytest's capture (thousands of them)."""
    logger = logging.getLogger("cobalt_async")
    handler = LogLines()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


BACKENDS = ("asyncio", "trio")
Portals: TypeAlias = dict[str, BlockingPortal]


@pytest.fixture(scope="module")
def portals() -> Iterator[Portals]:
    """One running event loop per backend for the whole module."""
    with ExitStack() as stack:
        yield {backend: stack.enter_context(start_blocking_portal(backend)) for backend in BACKENDS}


def assert_logs_clean(lines: Iterable[str], signatures: Iterable[str]) -> None:
    leaks = [*SECRETS, FOREIGN_SECRET, PHI, *(s for s in signatures if len(s) >= 16)]
    for line in lines:
        for text in leaks:
            assert text not in line, f"a log line leaks {text!r}: {line!r}"


@dataclass
class Observed:
    """What one delivery did, seen from outside the receiver."""

    status: int | None
    before: SinkStats
    after: SinkStats
    published: list[Event]
    hooked: list[Event]
    woken: dict[str, Outcome]
    stored: dict[str, Outcome]


Deliver: TypeAlias = Callable[[WebhookReceiver], Awaitable[int | None]]


async def observe(deliver: Deliver, watched: Sequence[str]) -> Observed:
    sink = RecordingSink()
    hooked: list[Event] = []
    receiver = WebhookReceiver(
        sink, secrets=list(SECRETS), max_body_bytes=LIMIT, on_event=hooked.append
    )
    woken: dict[str, Outcome] = {}

    async def wait(job_id: str) -> None:
        woken[job_id] = await sink.wait_for(job_id, timeout=None)

    async with anyio.create_task_group() as task_group:
        for job_id in watched:
            task_group.start_soon(wait, job_id)
        await anyio.wait_all_tasks_blocked()
        before = sink.stats()
        assert before.pending == len(watched)
        status = await deliver(receiver)
        # A woken waiter finishes now; one that was not woken stays blocked.
        await anyio.wait_all_tasks_blocked()
        after = sink.stats()
        task_group.cancel_scope.cancel()
    stored = await sink.get_outcomes(list(watched))
    return Observed(status, before, after, sink.published, hooked, woken, stored)


def assert_nothing_resolved(seen: Observed) -> None:
    assert seen.published == []
    assert seen.hooked == []
    assert seen.woken == {}
    assert seen.stored == {}
    assert seen.after == seen.before


def assert_accepted_once(seen: Observed) -> Event:
    """A 200 for a new delivery: published and hooked once; if terminal, stored and woken."""
    assert len(seen.published) == 1
    event = seen.published[0]
    assert seen.hooked == [event]
    if is_terminal(event):
        job_id = str(event.job_id)
        assert job_id in seen.stored, "json.loads and the receiver disagree on the job_id"
        assert seen.stored[job_id].event == event
        assert seen.woken[job_id].event == event
        assert seen.after.buffered == seen.before.buffered + 1
    else:
        assert seen.woken == {}
        assert seen.stored == {}
    return event


# -- generators --------------------------------------------------------------------------------
# A Hypothesis draw costs tens of microseconds, and a realistic event needs about sixty of
# them: 10,000 examples would take minutes. So Hypothesis draws the structure (the kind of
# body, the mutation, the signature, the headers) and a seed, and a seeded random.Random
# fills in the content from curated nasty values. A failure prints the exact body and
# headers, and replays from its seed.

# fmt: off
NASTY_TEXT = [
    "", " ", "0", "-1", "1e3", "null", "true", '"', "\\", '\\"', "\\u0000", "\x00", "\x1f",
    "\x7f", "\t\r\n", "é", "東京", "\u2028\u2029", "\ufeff", "\U0001f600", "e\u0301",
    "\u202eevil", "١٢٣", "İı", "NaN", "task.created", "{}", "[]", '{"a":1}', "</script>",
]
# What a JavaScript sender holds exactly: integers within 2**53 (larger ones it rounds).
NASTY_INTS = [0, 1, -1, 2**31, 2**53, -(2**53), 2**53 - 1]
NASTY_FLOATS = [0.0, -0.0, 0.1, 1.5, 1e308, -1e308, 5e-324]
TRICKY_KEYS = [
    "model_config", "model_fields", "__class__", "__dict__", "_private", "__pydantic_extra__",
    "copy", "json", "dict", "raw", "data", "type", "job_id", "id",
]
"""Member names that could collide with pydantic's or our own attributes."""
UNKNOWN_TYPES = [
    "", "task", "task.updated", "TASK.CREATED", "task.created ", "task_note", "patient.updated",
]
# Mostly printable ASCII; then controls, Latin-1, the rest of the BMP and the astral planes.
CODEPOINT_BANDS = [(0x20, 0x7E)] * 4 + [
    (0x00, 0x1F), (0x80, 0xFF), (0x100, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF),
]
ENVELOPE = ("id", "type", "job_id", "data", "created", "object", "access_token_reference_id")
REQUIRED = {"task.created": "emr_task_id", "task_note.created": "emr_note_id"}
"""The one required member of each success's data: the EHR's id of what was written."""
DATA_FIELDS = {
    "task.created": ("emr_task_id", "task_id", "subject", "description"),
    "task.failed": ("task_id", "failure_reason", "reasons"),
    "task_note.created": ("task_note_id", "emr_note_id", "emr_task_id", "note"),
    "task_note.failed": ("task_note_id", "failure_reason", "reasons"),
}
# fmt: on
ID_FIELDS = frozenset({"emr_task_id", "task_id", "task_note_id", "emr_note_id"})


def rand_text(rng: random.Random, max_len: int = 8) -> str:
    if rng.random() < 0.4:
        return rng.choice(NASTY_TEXT)
    length = rng.randint(0, max_len)
    return "".join(chr(rng.randint(*rng.choice(CODEPOINT_BANDS))) for _ in range(length))


def rand_int(rng: random.Random) -> int:
    # Within 2**53: a JavaScript sender holds no other integer exactly.
    return rng.choice(NASTY_INTS) if rng.random() < 0.5 else rng.randint(-(2**53), 2**53)


def rand_scalar(rng: random.Random) -> Any:
    pick = rng.randrange(5)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rand_int(rng)
    if pick == 3:
        return rng.choice(NASTY_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e9, 1e9)
    return rand_text(rng)


def rand_key(rng: random.Random) -> str:
    return rng.choice(TRICKY_KEYS) if rng.random() < 0.3 else rand_text(rng)


def rand_json(rng: random.Random, depth: int = 2) -> Any:
    pick = rng.randrange(7 if depth else 5)
    if pick < 5:
        return rand_scalar(rng)
    size = rng.randint(0, 3)
    if pick == 5:
        return [rand_json(rng, depth - 1) for _ in range(size)]
    return {rand_key(rng): rand_json(rng, depth - 1) for _ in range(size)}


def rand_id(rng: random.Random) -> str | int:
    """What Cobalt sends as ids: strings, or JSON numbers (never booleans or floats)."""
    return rand_text(rng) if rng.random() < 0.5 else rand_int(rng)


def rand_phi(rng: random.Random) -> str | None:
    return None if rng.random() < 0.2 else f"{rand_text(rng)} {PHI}"


def rand_extras(rng: random.Random, target: dict[str, Any], forbidden: Iterable[str]) -> None:
    """Members Cobalt may add one day: ignored or kept, never fatal."""
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        key = rand_key(rng)
        if key not in forbidden and key not in target:
            target[key] = rand_json(rng)


def rand_data(rng: random.Random, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in DATA_FIELDS[kind]:
        if REQUIRED.get(kind) == name:
            data[name] = rand_id(rng)
        elif rng.random() < 0.5:
            continue
        elif name in ID_FIELDS:
            data[name] = None if rng.random() < 0.2 else rand_id(rng)
        elif name == "reasons":
            data[name] = [
                {key: rand_phi(rng) for key in ("code", "description") if rng.random() < 0.7}
                for _ in range(rng.randint(0, 2))
            ]
        else:
            data[name] = rand_phi(rng)
    rand_extras(rng, data, DATA_FIELDS[kind])
    return data


def random_event(rng: random.Random) -> dict[str, Any]:
    """Any event Cobalt could send: the four terminal types, or a type we do not model."""
    event: dict[str, Any] = {}
    for name, values in (
        ("id", ["evt_1", "", None]),
        ("access_token_reference_id", ["atr_1", None]),
        ("object", ["event", None]),
        ("created", ["2025-10-09T10:30:00.000Z", "2025-10-09T10:30:00+0000", None]),
    ):
        if rng.random() < 0.5:
            event[name] = rng.choice(values) if rng.random() < 0.5 else rand_text(rng)
    if rng.random() < 0.7:
        kind = rng.choice(TERMINAL_TYPES)
        event["type"] = kind
        if rng.random() < 0.9:  # without a job_id, a known type is not terminal
            event["job_id"] = rand_id(rng)
        event["data"] = rand_data(rng, kind)
    else:
        kind = rng.choice(UNKNOWN_TYPES) if rng.random() < 0.5 else rand_text(rng)
        event["type"] = "patient.updated" if kind in TERMINAL_TYPES else kind
        if rng.random() < 0.5:
            event["job_id"] = None if rng.random() < 0.2 else rand_id(rng)
        if rng.random() < 0.5:
            event["data"] = rand_json(rng)
    # Not "raw": UnknownEvent keeps the whole payload under that name, and a body's own "raw"
    # member takes its place (or, not being an object, makes the event invalid: a 400).
    rand_extras(rng, event, (*ENVELOPE, "raw"))
    keys = list(event)
    if rng.random() < 0.3:
        rng.shuffle(keys)
    return {key: event[key] for key in keys}


def random_serialisation(rng: random.Random, value: Any) -> str:
    return json.dumps(
        value,
        ensure_ascii=rng.random() < 0.5,
        indent=rng.choice([None, None, 0, 2, "\t"]),
        separators=rng.choice([None, (",", ":"), (", ", ": ")]),
    )


# fmt: off
WRONG_TYPES: list[Any] = [
    None, True, 0, 1.5, -1, 2**80, "", "task.created\x00", "Task.Created", [], {}, ["task.created"],
]
WRONG_JOB_IDS: list[Any] = [
    True, False, 1.5, -0.0, 1e300, math.inf, math.nan, -1, -(2**80), 2**80, 10**100, 0, "",
    [], ["1"], {}, {"id": 1}, None,
]
# fmt: on
HUGE_DIGITS = "__HUGE_DIGITS__"


def mutated_body(rng: random.Random) -> bytes:
    """A valid event with one to three members broken, serialised compactly or not."""
    event = random_event(rng)
    digits = None
    for _ in range(rng.randint(1, 3)):
        target = event
        if isinstance(event.get("data"), dict) and rng.random() < 0.5:
            target = event["data"]
        key = rng.choice(sorted({*target, "type", "job_id", "data", "emr_task_id"}))
        action = rng.choice(["delete", "wrong", "job_id", "huge", "garbage", "digits"])
        if action == "delete":
            target.pop(key, None)
        elif action == "wrong":
            target[key] = rng.choice(WRONG_TYPES) if key == "type" else rand_json(rng)
        elif action == "job_id":
            event["job_id"] = rng.choice(WRONG_JOB_IDS)
        elif action == "huge":
            target[key] = rng.choice('xé東\U0001f600"\\') * rng.randint(LIMIT - 300, LIMIT + 300)
        elif action == "garbage" and key != "type":
            target[key] = rand_json(rng, depth=5)
        else:
            # Past Python's int/str conversion limit: json.loads refuses it, pydantic may not.
            digits = "9" * rng.randint(4_301, 6_000)
            event["job_id"] = HUGE_DIGITS
    text = random_serialisation(rng, event)
    if digits is not None:
        text = text.replace(f'"{HUGE_DIGITS}"', digits)
    return text.encode()


def surrogate_body(rng: random.Random) -> bytes:
    """JSON that escapes a lone surrogate: json.loads accepts it, UTF-8 cannot encode it."""
    event = random_event(rng)
    bad = rand_text(rng) + chr(rng.randint(0xD800, 0xDFFF)) + rand_text(rng)
    holder = event["data"] if isinstance(event.get("data"), dict) else event
    holder[rng.choice(["type", "job_id", "id", "note", "emr_task_id"])] = bad
    return json.dumps(event, ensure_ascii=True).encode()


def deep_body(rng: random.Random) -> bytes:
    """Nesting past the interpreter's recursion limit (a "[" is one byte), or close to it."""
    depth = rng.randint(900, LIMIT)
    opener, closer = rng.choice([("[", "]"), ("[", "]"), ('{"a":', "}"), ('{"data":[', "]}")])
    inner = rng.choice(["", "1", "null", '"x"'])
    tail = closer * depth if rng.random() < 0.5 else ""
    return (opener * depth + inner + tail).encode()[: LIMIT + rng.randint(-1, 1)]


def sized_body(rng: random.Random) -> bytes:
    """A valid event padded to a few bytes either side of max_body_bytes."""
    event = random_event(rng)
    holder = event["data"] if isinstance(event.get("data"), dict) else event
    holder["padding"] = ""
    missing = LIMIT + rng.randint(-4, 4) - len(node_stringify(event))
    holder["padding"] = "p" * max(0, missing)
    return node_stringify(event)


def json_body(rng: random.Random) -> bytes:
    """Random JSON, formatted any way, sometimes cut short or in another Unicode encoding."""
    value = rand_json(rng, depth=3)
    if rng.random() < 0.5:
        value = {rand_key(rng): rand_json(rng) for _ in range(rng.randint(0, 5))}
    body = random_serialisation(rng, value).encode(
        rng.choice(["utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32"])
    )
    return body[: rng.randint(0, len(body))] if rng.random() < 0.3 else body


def json_ish_body(rng: random.Random) -> bytes:
    alphabet = '{}[]":,0123456789.-+eE \\/ntrufalsu\t\n\x00é'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))).encode()


BODY_MAKERS: dict[str, Callable[[random.Random], bytes]] = {
    "valid event": lambda rng: node_stringify(random_event(rng)),
    "valid event, pretty": lambda rng: random_serialisation(rng, random_event(rng)).encode(),
    "mutated event": mutated_body,
    "mutated event 2": mutated_body,
    "lone surrogate": surrogate_body,
    "deep": deep_body,
    "near the limit": sized_body,
    "json": json_body,
    "json-ish": json_ish_body,
    "bytes": lambda rng: rng.randbytes(rng.randint(0, 64)),
    "bytes near the limit": lambda rng: rng.randbytes(LIMIT + rng.randint(-2, 2)),
}
FIXED_BODIES = [b"", b"null", b"[]", b"{}", b"0", b'""', b"NaN", b"\xef\xbb\xbf{}", b"\xff"]

backends = st.sampled_from(BACKENDS)
seeds = st.integers(0, 2**32 - 1)
body_kinds = st.sampled_from([*BODY_MAKERS, "fixed", "hypothesis bytes"])
fixed_bodies = st.sampled_from(FIXED_BODIES)
small_binary = st.binary(max_size=64)


def draw_body(draw: st.DrawFn) -> bytes:
    kind = draw(body_kinds)
    if kind == "fixed":
        return draw(fixed_bodies)
    if kind == "hypothesis bytes":
        return draw(small_binary)
    return BODY_MAKERS[kind](random.Random(draw(seeds)))


# fmt: off
SIGNATURE_KINDS = (
    "raw", "raw", "raw_old", "compact", "foreign", "truncated", "extended", "non_hex",
    "non_ascii", "uppercase", "whitespace", "missing_value", "random", "list", "prefixed",
)
# fmt: on
signature_kinds = st.sampled_from(SIGNATURE_KINDS)
secrets_ = st.sampled_from(SECRETS)
positions = st.integers(0, 63)
non_ascii_chars = st.sampled_from(["é", "\xa0", "\u0660", "\uff10", "\U0001f600", "\udc80"])
spaces = st.sampled_from([" ", "\t", "  ", " \t", "\n"])
short_texts = st.sampled_from(NASTY_TEXT) | st.text(max_size=8)


def draw_signature(draw: st.DrawFn, body: bytes) -> str:
    """A signature header value for *body*: valid, valid by another reading, or not."""
    kind = draw(signature_kinds)
    if kind == "compact":
        compact = compact_form(body)
        if compact is not None and compact != body:
            return hex_hmac(draw(secrets_), compact)
    good = hex_hmac(OLD_SECRET if kind == "raw_old" else SECRET, body)
    if kind == "foreign":
        return hex_hmac(FOREIGN_SECRET, compact_form(body) or body)
    if kind == "truncated":
        return good[: draw(positions)]
    if kind == "extended":
        return good + draw(st.sampled_from(["0", "f", "00", good]))
    if kind == "non_hex":
        at = draw(positions)
        return good[:at] + draw(st.sampled_from("ghxyzG-_+/= ")) + good[at + 1 :]
    if kind == "non_ascii":
        at = draw(positions)
        return good[:at] + draw(non_ascii_chars) + good[at + 1 :]
    if kind == "uppercase":
        return good.upper()
    if kind == "whitespace":
        return draw(spaces) + good + draw(spaces)
    if kind == "missing_value":
        return ""
    if kind == "random":
        return draw(short_texts)
    if kind == "list":
        return f"{good},{hex_hmac(FOREIGN_SECRET, body)}"
    if kind == "prefixed":
        return f"sha256={good}"
    return good


def random_case(draw: st.DrawFn, name: str) -> str:
    """*name* with each letter in either case (one draw: a bit mask)."""
    mask = draw(st.integers(0, 2 ** len(name) - 1))
    return "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(name))


@dataclass
class Delivery:
    body: bytes
    headers: list[tuple[str, str]]
    """Names in random case, duplicates possible, in sending order."""
    shape: str = "str"
    """How they reach ``receive()``: a dict, a list of str pairs or of bytes pairs."""

    def container(self) -> Any:
        if self.shape == "dict":
            return dict(self.headers)
        if self.shape == "str":
            return list(self.headers)
        return [(k.encode(), v.encode("utf-8", "surrogatepass")) for k, v in self.headers]


OTHER_HEADERS = [
    ("content-type", st.sampled_from(["application/json", "text/plain", ""])),
    ("webhook-id", st.sampled_from(["msg_1", "", "é"]) | short_texts),
    ("webhook-timestamp", st.sampled_from(["1700000000", ""]) | short_texts),
    ("webhook-attempt", st.sampled_from(["1", "2", "x", ""])),
    ("x-junk", short_texts),
]
signature_counts = st.sampled_from([0, 1, 1, 1, 1, 1, 2, 3])
shapes = st.sampled_from(["dict", "str", "bytes"])


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    body = draw_body(draw)
    headers: list[tuple[str, str]] = []
    present = draw(st.integers(0, 2 ** len(OTHER_HEADERS) - 1))
    for index, (name, values) in enumerate(OTHER_HEADERS):
        if present >> index & 1:
            headers.append((random_case(draw, name), draw(values)))
    for _ in range(draw(signature_counts)):
        at = draw(st.integers(0, len(headers)))
        headers.insert(at, (random_case(draw, SIGNATURE), draw_signature(draw, body)))
    return Delivery(body, headers, draw(shapes))


# -- 1. any delivery, straight to WebhookReceiver.receive -----------------------------------

SURROGATE_BODY = b'{"type":"task.created","job_id":"1","data":{"emr_task_id":"\\ud800"}}'
DEEP_BODY = b"[" * 4_000


@pytest.mark.slow
def test_receiver_answers_any_delivery(log_lines: LogLines, portals: Portals) -> None:
    runs = 0

    @fuzz_settings(RECEIVER_EXAMPLES)
    @given(delivery=deliveries(), backend=backends)
    @example(Delivery(SURROGATE_BODY, [(SIGNATURE, "0" * 64)]), "asyncio")
    @example(Delivery(DEEP_BODY, [(SIGNATURE, "0" * 64)], "bytes"), "trio")
    def check(delivery: Delivery, backend: str) -> None:
        nonlocal runs
        runs += 1
        log_lines.lines.clear()
        headers = delivery.container()
        receipts: list[Receipt] = []

        async def deliver(receiver: WebhookReceiver) -> int:
            receipts.append(await receiver.receive(delivery.body, headers))
            return receipts[0].status_code

        seen = portals[backend].call(observe, deliver, watched_job_ids(delivery.body))
        receipt = receipts[0]
        signatures = header_values(headers, SIGNATURE)
        assert receipt.status_code in ALLOWED
        assert receipt.status_code in expected_status(delivery.body, signatures)
        if receipt.status_code in STORED:
            assert receipt.result == STORED[receipt.status_code]
            assert assert_accepted_once(seen) == receipt.event
        else:
            assert receipt.event is None
            assert_nothing_resolved(seen)
        assert_logs_clean(log_lines.lines, signatures)

    check()
    assert runs >= RECEIVER_EXAMPLES


# -- 2. any delivery, through the ASGI app, chunked, with raw header lists --------------------


@dataclass
class AsgiDelivery:
    body: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]
    disconnect_after: int | None = None
    """Chunks sent before the client hangs up; None for a complete request."""
    method: str = "POST"

    @property
    def received(self) -> bytes:
        if self.disconnect_after is None:
            return self.body
        return b"".join(self.chunks[: self.disconnect_after])

    def declared_lengths(self) -> list[int]:
        lengths = []
        for name, value in self.headers:
            if name.lower() == b"content-length":
                try:
                    lengths.append(int(value))
                except ValueError:
                    pass
        return lengths


# fmt: off
ODD_LENGTHS = [
    str(LIMIT), str(LIMIT + 1), "-1", "0", " 12 ", "1_000", "abc", "", "9" * 5_000, "\xff",
]
# fmt: on
"""Content-Length values besides the true one and its neighbours."""
cut_lists = st.lists(st.integers(0, LIMIT + 8), max_size=4)
content_length_counts = st.sampled_from([0, 1, 1, 2])
one_in_twenty = st.integers(0, 19)
other_methods = st.sampled_from(["GET", "PUT", "post"])


def chunked(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({min(cut, len(body)) for cut in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@st.composite
def asgi_deliveries(draw: st.DrawFn) -> AsgiDelivery:
    delivery = draw(deliveries())
    body = delivery.body
    chunks = chunked(body, draw(cut_lists))
    if draw(st.booleans()):
        chunks.insert(draw(st.integers(0, len(chunks))), b"")  # an empty message mid-body
    raw = [(k.encode(), v.encode("utf-8", "surrogatepass")) for k, v in delivery.headers]
    n = len(body)
    lengths = st.sampled_from([str(n), str(n + 1), str(max(0, n - 1)), *ODD_LENGTHS])
    for _ in range(draw(content_length_counts)):
        at = draw(st.integers(0, len(raw)))
        value = draw(lengths).encode("latin-1")
        raw.insert(at, (random_case(draw, "content-length").encode(), value))
    disconnect_after = None
    if draw(one_in_twenty) == 0:
        disconnect_after = draw(st.integers(0, len(chunks) - 1))
    method = "POST" if draw(one_in_twenty) else draw(other_methods)
    return AsgiDelivery(body, raw, chunks, disconnect_after, method)


def http_scope(method: str, headers: list[tuple[bytes, bytes]]) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": "/webhooks/cobalt",
        "raw_path": b"/webhooks/cobalt",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("198.51.100.7", 40000),
        "server": ("sdk.test", 443),
    }


async def call_app(app: WebhookApp, request: AsgiDelivery) -> list[Message]:
    incoming: list[Message] = []
    for index, chunk in enumerate(request.chunks):
        if index == request.disconnect_after:
            incoming.append({"type": "http.disconnect"})
            break
        more = index < len(request.chunks) - 1
        incoming.append({"type": "http.request", "body": chunk, "more_body": more})
    sent: list[Message] = []

    async def receive() -> Message:
        # Once the body is read, an ASGI server's receive() waits for the client to go.
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(10):
        await app(http_scope(request.method, request.headers), receive, send)
    return sent


def answered_status(sent: list[Message]) -> int | None:
    """The status of a well-formed answer (a start, then one body), or None if none was sent."""
    if not sent:
        return None
    start, body = sent
    assert start["type"] == "http.response.start"
    assert body["type"] == "http.response.body"
    assert not body.get("more_body", False)
    assert set(json.loads(body["body"])) == {"status"}  # never echoes the body
    assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
    return int(start["status"])


@pytest.mark.slow
def test_asgi_app_answers_any_delivery(log_lines: LogLines, portals: Portals) -> None:
    runs = 0

    @fuzz_settings(ASGI_EXAMPLES)
    @given(request=asgi_deliveries(), backend=backends)
    @example(
        AsgiDelivery(
            SURROGATE_BODY,
            [(SIGNATURE.upper().encode(), b"\xff" * 64)],
            [SURROGATE_BODY[:10], b"", SURROGATE_BODY[10:]],
        ),
        "trio",
    )
    @example(AsgiDelivery(DEEP_BODY, [(b"content-length", b"2000")], [DEEP_BODY]), "asyncio")
    def check(request: AsgiDelivery, backend: str) -> None:
        nonlocal runs
        runs += 1
        log_lines.lines.clear()
        sent: list[Message] = []

        async def deliver(receiver: WebhookReceiver) -> int | None:
            sent.extend(await call_app(WebhookApp(receiver), request))
            return answered_status(sent)

        seen = portals[backend].call(observe, deliver, watched_job_ids(request.body))
        signatures = header_values(request.headers, SIGNATURE)
        status = seen.status
        if request.method != "POST":
            assert status == 405
            assert dict(sent[0]["headers"])[b"allow"] == b"POST"
        elif status is None:
            assert request.disconnect_after is not None, "a complete request got no answer"
        elif status == 413:
            declared = request.declared_lengths()
            assert len(request.received) > LIMIT or any(n > LIMIT for n in declared)
            assert dict(sent[0]["headers"])[b"connection"] == b"close"
        else:
            assert request.disconnect_after is None
            assert status in expected_status(request.body, signatures)
        if status in STORED:
            assert_accepted_once(seen)
        else:
            assert_nothing_resolved(seen)
        assert_logs_clean(log_lines.lines, signatures)

    check()
    assert runs >= ASGI_EXAMPLES


# -- 3. and 4. every valid event is accepted, compact or pretty, signed on what was sent ------


@dataclass
class ValidDelivery:
    event: dict[str, Any]
    body: bytes
    signature: str
    form: str


FORMS = ("compact", "pretty, signed as sent", "pretty, signed compact")
forms = st.sampled_from(FORMS)


@st.composite
def valid_deliveries(draw: st.DrawFn) -> ValidDelivery:
    """An event, the bytes sent and their signature, in one of three honest forms."""
    rng = random.Random(draw(seeds))
    event = random_event(rng)
    compact = node_stringify(event)
    secret = draw(secrets_)
    form = draw(forms)
    if form == "compact":
        return ValidDelivery(event, compact, hex_hmac(secret, compact), form)
    pretty = json.dumps(
        event,
        indent=rng.choice([0, 1, 2, 4, "\t", " "]),
        ensure_ascii=rng.random() < 0.5,
        # Sorting keys changes the compact form too: only a body signed as sent may.
        sort_keys=form == "pretty, signed as sent" and rng.random() < 0.5,
    ).encode()
    signed = pretty if form == "pretty, signed as sent" else compact
    return ValidDelivery(event, pretty, hex_hmac(secret, signed), form)


def check_valid(valid: ValidDelivery, seen: Observed) -> None:
    if len(valid.body) > LIMIT:
        assert seen.status == 413
        assert_nothing_resolved(seen)
        return
    assert seen.status == 200
    published = assert_accepted_once(seen)
    assert published.type == valid.event["type"]
    job_id = valid.event.get("job_id")
    assert published.job_id == (None if job_id is None else str(job_id))
    if valid.event["type"] not in TERMINAL_TYPES:
        assert isinstance(published, UnknownEvent)
        assert published.raw == valid.event


@pytest.mark.slow
def test_receiver_accepts_every_valid_event(log_lines: LogLines, portals: Portals) -> None:
    runs = 0

    @fuzz_settings(VALID_RECEIVER_EXAMPLES)
    @given(valid=valid_deliveries(), backend=backends)
    def check(valid: ValidDelivery, backend: str) -> None:
        nonlocal runs
        runs += 1
        log_lines.lines.clear()
        headers = {"Content-Type": "application/json", "Cobalt-Verification": valid.signature}

        async def deliver(receiver: WebhookReceiver) -> int:
            return (await receiver.receive(valid.body, headers)).status_code

        seen = portals[backend].call(observe, deliver, watched_job_ids(valid.body))
        check_valid(valid, seen)
        assert_logs_clean(log_lines.lines, [valid.signature])

    check()
    assert runs >= VALID_RECEIVER_EXAMPLES


@pytest.mark.slow
def test_asgi_app_accepts_every_valid_event(log_lines: LogLines, portals: Portals) -> None:
    runs = 0

    @fuzz_settings(VALID_ASGI_EXAMPLES)
    @given(valid=valid_deliveries(), cuts=cut_lists, backend=backends)
    def check(valid: ValidDelivery, cuts: list[int], backend: str) -> None:
        nonlocal runs
        runs += 1
        log_lines.lines.clear()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(valid.body)).encode()),
            (b"cobalt-verification", valid.signature.encode()),
            (b"webhook-id", b"msg_1"),
        ]
        request = AsgiDelivery(valid.body, headers, chunked(valid.body, cuts))

        async def deliver(receiver: WebhookReceiver) -> int | None:
            return answered_status(await call_app(WebhookApp(receiver), request))

        seen = portals[backend].call(observe, deliver, watched_job_ids(valid.body))
        check_valid(valid, seen)
        assert_logs_clean(log_lines.lines, [valid.signature])

    check()
    assert runs >= VALID_ASGI_EXAMPLES


# -- found by fuzzing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(SURROGATE_BODY, id="lone surrogate"),
        pytest.param(b"[" * 100_000, id="nested past the recursion limit"),
    ],
)
def test_unsigned_body_the_compact_form_cannot_be_built_for_is_401(body: bytes) -> None:
    # Both raised out of receive() (UnicodeEncodeError, RecursionError) before the fix in
    # _Verifier.verify: anyone could make the endpoint answer 500, without any secret.
    sink = InMemorySink()
    receiver = WebhookReceiver(sink, secrets=[SECRET])
    receipt = anyio.run(receiver.receive, body, {SIGNATURE: hex_hmac(FOREIGN_SECRET, body)})
    assert (receipt.status_code, receipt.result) == (401, "unauthorized")
    assert sink.stats().buffered == 0


@pytest.mark.parametrize("kind", [[], {}, ["task.created"]])
def test_signed_event_with_an_unhashable_type_is_refused_as_invalid(kind: object) -> None:
    """A list or dict as "type" is not an event: 400, not a crash."""
    body = node_stringify({"type": kind, "job_id": "1", "data": {"emr_task_id": "e"}})
    receiver = WebhookReceiver(InMemorySink(), secrets=[SECRET])
    receipt = anyio.run(receiver.receive, body, {SIGNATURE: hex_hmac(SECRET, body)})
    assert (receipt.status_code, receipt.result) == (400, "invalid")


def test_the_oracle_agrees_with_design_section_5() -> None:
    """Its verdicts on the obvious cases, so that the fuzz tests' verdicts mean something."""
    body = b'{"type":"task.created"}'
    good = hex_hmac(SECRET, body)
    assert signature_ok(body, good)
    assert signature_ok(body, f" {good.upper()}\t")
    assert signature_ok(json.dumps(json.loads(body), indent=2).encode(), good)
    assert not signature_ok(body, hex_hmac(FOREIGN_SECRET, body))
    assert not signature_ok(body, good[:-1])
    assert expected_status(b"x" * (LIMIT + 1), [good]) == {413}
    assert expected_status(body, []) == {401}
    assert expected_status(body, [good, "0" * 64]) == {200, 400, 401, 422}
    assert compact_form(SURROGATE_BODY) == SURROGATE_BODY  # escaped again, as Node does
    assert compact_form(DEEP_BODY) is None
