"""
What Cobalt's Node service signs, produced by Node itself: ``JSON.stringify`` and
``crypto.createHmac``. The SDK must verify, parse and re-serialise every such body.

Node is the judge here, not a restatement of its rules: the doubles, the strings and the
signed deliveries below all come out of a ``node`` process.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess

import anyio
import httpx
import pytest

from cobalt_async import CobaltClient, InMemorySink, WebhookReceiver, WebhookVerificationError
from cobalt_async._signing import RAW, Verifier, compact_json
from cobalt_async.testing import make_task_note_created_event

pytestmark = pytest.mark.anyio

SECRET = "whsec_node"
TIMEOUT = 60.0


def node() -> str:
    """The path of ``node``; skip without it, or fail under ``CI=true``."""
    path = shutil.which("node")
    if path is None:
        msg = "node is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}; under CI=true this is a failure, not a skip", pytrace=False)
        pytest.skip(msg)
    return path


def run_node(script: str, stdin: bytes) -> bytes:
    done = subprocess.run(
        [node(), "-e", script], input=stdin, capture_output=True, timeout=TIMEOUT, check=True
    )
    return done.stdout


def doubles(count: int) -> list[float]:
    """Random bit patterns, and the neighbourhoods where JavaScript switches formats."""
    rng = random.Random(20261206)
    values = []
    while len(values) < count // 2:
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if value == value and abs(value) != float("inf"):
            values.append(value)
    for power in range(-326, 309):
        for mantissa in ("1", "1.5", "9.999999999999999", "1.2345678901234567"):
            value = float(f"{mantissa}e{power}")
            values += [value, -value] if value != float("inf") else []
    edges = [2.0**53 + offset for offset in range(-3, 4)] + [5e-324, 1.7976931348623157e308]
    values += edges + [rng.uniform(-1e6, 1e6) for _ in range(count // 4)]
    values += [round(rng.uniform(0, 100), rng.randrange(0, 8)) for _ in range(count // 8)]
    return values


def test_numbers_come_out_as_node_writes_them() -> None:
    """Every double, written as ``JSON.stringify`` writes it: 100,000 of them against Node."""
    values = doubles(100_000)
    packed = struct.pack(f"<{len(values)}d", *values)
    script = (
        "const chunks = []; process.stdin.on('data', c => chunks.push(c));"
        "process.stdin.on('end', () => { const b = Buffer.concat(chunks);"
        "const a = new Float64Array(b.buffer, b.byteOffset, b.length / 8);"
        "process.stdout.write(JSON.stringify(Array.from(a))); });"
    )
    expected = run_node(script, packed)

    mismatches = [
        (value, mine, theirs)
        for value, mine, theirs in zip(
            values,
            compact_json(values)[1:-1].split(b","),
            expected[1:-1].split(b","),
            strict=True,
        )
        if mine != theirs
    ]
    assert [] == mismatches[:10]


SIGN_SCRIPT = """
const crypto = require("crypto");
const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const event = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  event.data.note = "cut 😀 here".slice(0, 5);  // EHR text cut mid-emoji
  event.data.score = 1e-7;
  event.data.ratio = 0.00001;
  const body = JSON.stringify(event);
  const signature = crypto.createHmac("sha256", process.argv[1]).update(body).digest("hex");
  process.stdout.write(signature + "\\n" + body);
});
"""


def node_signed(job_id: str) -> tuple[bytes, str]:
    """A task_note.created delivery built and signed by Node: (body, signature)."""
    template = make_task_note_created_event(job_id=job_id, note="placeholder")
    done = subprocess.run(
        [node(), "-e", SIGN_SCRIPT, SECRET],
        input=json.dumps(template).encode(),
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    signature, _, body = done.stdout.partition(b"\n")
    return body, signature.decode()


async def test_a_node_signed_lone_surrogate_is_accepted_as_sent() -> None:
    """The raw body verifies and parses; the note keeps its cut character."""
    body, signature = node_signed("501")
    assert b"\\ud83d" in body  # what Node wrote, not what we assume
    assert b"1e-7" in body

    sink = InMemorySink()
    receipt = await WebhookReceiver(sink, secrets=[SECRET]).receive(
        body, {"cobalt-verification": signature}
    )

    assert (200, "accepted") == (receipt.status_code, receipt.result)
    stored = (await sink.get_outcomes(["501"]))["501"].event
    assert "cut \ud83d" == stored.data.note  # type: ignore[union-attr]


async def test_a_node_signed_body_reserialised_on_the_way_still_verifies() -> None:
    """A proxy that re-indents the body (escaping the surrogate its own way) changes nothing."""
    body, signature = node_signed("502")
    reindented = json.dumps(json.loads(body), indent=2).encode()
    assert reindented != body

    sink = InMemorySink()
    receipt = await WebhookReceiver(sink, secrets=[SECRET]).receive(
        reindented, {"cobalt-verification": signature}
    )

    assert (200, "accepted") == (receipt.status_code, receipt.result)
    assert compact_json(json.loads(reindented)) == body


HMAC_SCRIPT = """
const crypto = require("crypto");
const body = "{\\"id\\":\\"evt_1\\"}";
const secrets = JSON.parse(process.argv[1]);
const signatures = secrets.map((secret) =>
  crypto.createHmac("sha256", secret).update(body).digest("hex"));
process.stdout.write(JSON.stringify({ body, signatures }));
"""


def test_secrets_of_every_length_verify_what_node_signed_with_them() -> None:
    """
    Node's HMAC, for secrets shorter than, as long as and longer than SHA-256's 64-byte
    block (a longer key is hashed first), some of them not ASCII.
    """
    secrets = ["k", "k" * 63, "k" * 64, "k" * 65, "é" * 40, "whsec_" + "x" * 200]
    done = subprocess.run(
        [node(), "-e", HMAC_SCRIPT, json.dumps(secrets)],
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    signed = json.loads(done.stdout)
    body = signed["body"].encode()

    verified = [
        Verifier([secret]).verify(body, signature) is RAW
        for secret, signature in zip(secrets, signed["signatures"], strict=True)
    ]
    crossed = Verifier(secrets[:1]).verify  # another secret's signature never verifies

    assert [True] * len(secrets) == verified
    with pytest.raises(WebhookVerificationError):
        crossed(body, signed["signatures"][1])


LISTING_SCRIPT = """
const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const events = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  events[0].data.note = "cut 😀 here".slice(0, 5);
  const records = events.map((event) => ({
    event_id: event.id, event_type: event.type, job_id: event.job_id,
    delivery_status: "failed", created_at: event.created, data: event.data,
  }));
  const pagination = { current_page: 1, total_pages: 1, page_size: 100 };
  process.stdout.write(JSON.stringify({ success: true, webhook_events: records, pagination }));
});
"""


async def test_a_listing_page_node_wrote_with_a_lone_surrogate_is_read_whole() -> None:
    """Every record of the page is read, the cut one too, and it resolves its handle."""
    events = [make_task_note_created_event(job_id=job_id) for job_id in ("601", "602")]
    page = run_node(LISTING_SCRIPT, json.dumps(events).encode())
    assert b"\\ud83d" in page

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=page, headers={"content-type": "application/json"})

    async with CobaltClient(
        client_id="cid",
        client_secret="csecret",
        access_token="tok",
        base_url="https://api.cobalt.test/v1",
        transport=httpx.MockTransport(answer),
    ) as client:
        listed = await client.webhook_events.list()
        with anyio.fail_after(TIMEOUT):
            event = await client.jobs.attach("601", "task_note").wait(timeout=TIMEOUT)

    assert ["601", "602"] == [event.job_id for event in listed.events]
    assert "cut \ud83d" == event.data.note
