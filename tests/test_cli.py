"""The command line: help, usage errors, ``verify``, and ``simulate`` / ``listen`` as processes."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from cobalt_async import CobaltClient, Event, InMemorySink, WebhookReceiver
from cobalt_async._cli import main
from cobalt_async._servers import serve
from cobalt_async.asgi import WebhookApp
from cobalt_async.testing import FakeCobalt, make_task_created_event, sign_webhook, signed_delivery
from tests.support import START_TIMEOUT, Server, free_port, server, until

SECRET = "whsec_cli_test"
HTTP_TIMEOUT = 5.0
COBALT_HEADERS = {"client_id": "ci_test", "client_secret": "cs_test", "access_token": "at_test"}


def run_cli(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> tuple[int | str | None, str, str]:
    """Run the command line in-process; returns its exit status, stdout and stderr."""
    try:
        status: int | str | None = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- help and usage errors --------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "demo", "simulate", "listen", "verify"])
def test_every_help_exits_0_and_shows_runnable_examples(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """``--help`` of the program and of each command ends with examples to copy."""
    status, out, err = run_cli(capsys, [*command.split(), "--help"])

    assert status == 0
    assert err == ""
    examples = out.partition("examples:")[2]
    assert f"python -m cobalt_async {command}".strip() in examples


USAGE_ERRORS = {
    "negative task count": ["demo", "--tasks", "-3"],
    "zero concurrency": ["demo", "--concurrency", "0"],
    "rate above one": ["demo", "--failure-rate", "2"],
    "rate not a number": ["simulate", "--port", "8001", "--drop-rate", "lots"],
    "port not a number": ["simulate", "--port", "x"],
    "port out of range": ["listen", "--port", "70000", "--secret", SECRET],
    "unknown flag": ["demo", "--bogus"],
    "unknown command": ["deploy"],
    "no command": [],
    "missing required flag": ["listen", "--port", "8000"],
    "value not among the choices": ["simulate", "--port", "8001", "--job-id-type", "float"],
    "flag without its value": ["verify", "--secret", SECRET, "--signature"],
    "listen with neither a port nor --forward-to": ["listen", "--secret", SECRET],
    "listen with both": [
        "listen",
        "--port",
        "8000",
        "--forward-to",
        "http://a.test/",
        "--secret",
        SECRET,
    ],
    "forward-to not a URL": ["listen", "--forward-to", "127.0.0.1:8000", "--secret", SECRET],
    "poll interval of zero": [
        "listen",
        "--forward-to",
        "http://a.test/",
        "--secret",
        SECRET,
        "--interval",
        "0",
    ],
}


@pytest.mark.parametrize("argv", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_a_usage_error_is_one_line_on_stderr_and_exit_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A wrong flag or value: one line naming the problem, pointing at --help; status 2."""
    status, out, err = run_cli(capsys, argv)

    assert status == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "error:" in err
    assert "--help" in err


def test_a_usage_error_from_python_dash_m_is_one_line_and_status_2() -> None:
    """The real entry point behaves the same: ``python -m cobalt_async demo --tasks -3``."""
    result = subprocess.run(
        [sys.executable, "-m", "cobalt_async", "demo", "--tasks", "-3"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "cobalt-async demo: error: argument --tasks: expected a positive number, got '-3' "
        "(see --help)"
    ]


# -- verify ---------------------------------------------------------------------------------


def captured_delivery(job_id: str = "4242") -> tuple[bytes, str]:
    """A webhook body and its signature header, as captured from Cobalt."""
    body, headers = signed_delivery(make_task_created_event(job_id=job_id), SECRET)
    return body, headers["cobalt-verification"]


def verify(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: bytes = b"",
) -> tuple[int | str | None, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return run_cli(capsys, ["verify", *args])


@pytest.mark.parametrize("source", ["stdin", "body file"])
def test_verify_accepts_a_genuine_delivery_and_names_its_type_and_job(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    source: str,
) -> None:
    """A body signed with the secret verifies, from standard input or from --body-file."""
    body, signature = captured_delivery()
    args = ["--secret", SECRET, "--signature", signature]
    if source == "body file":
        (tmp_path / "body.json").write_bytes(body)
        args += ["--body-file", str(tmp_path / "body.json")]

    status, out, err = verify(capsys, monkeypatch, *args, stdin=body if source == "stdin" else b"")

    assert status == 0
    assert out == "valid: task.created job_id=4242\n"
    assert err == ""


def test_verify_tries_every_secret_given_as_during_a_rotation(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--secret OLD --secret NEW`` a body signed with either verifies."""
    body, signature = captured_delivery("77")
    status, out, _ = verify(
        capsys,
        monkeypatch,
        *("--secret", "whsec_old", "--secret", SECRET, "--signature", signature),
        stdin=body,
    )

    assert status == 0
    assert "job_id=77" in out


def test_verify_reads_standard_input_in_a_real_process() -> None:
    """``cat body.json | python -m cobalt_async verify ...`` works end to end."""
    body, signature = captured_delivery("31337")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cobalt_async",
            "verify",
            "--secret",
            SECRET,
            "--signature",
            signature,
        ],
        input=body,
        capture_output=True,
        timeout=START_TIMEOUT,
        check=False,
    )

    assert result.returncode == 0
    assert result.stdout.decode() == "valid: task.created job_id=31337\n"


def bad_deliveries(tmp_path: Path) -> dict[str, tuple[list[str], bytes, str]]:
    """Arguments, standard input and the reason expected on stderr, per failure."""
    body, signature = captured_delivery()
    not_json = b"this is not JSON"
    not_an_event = json.dumps({"hello": "world"}).encode()
    return {
        "wrong secret": (["--secret", "whsec_other", "--signature", signature], body, "match"),
        "forged signature": (["--secret", SECRET, "--signature", "ab" * 32], body, "match"),
        "garbage signature": (
            ["--secret", SECRET, "--signature", "zz-top"],
            body,
            "the signature is not 64 hex digits",
        ),
        "altered body": (
            ["--secret", SECRET, "--signature", signature],
            body.replace(b"4242", b"4243"),
            "match",
        ),
        "signed body not JSON": (
            ["--secret", SECRET, "--signature", sign_webhook(not_json, SECRET)],
            not_json,
            "not a Cobalt event",
        ),
        "signed JSON not an event": (
            ["--secret", SECRET, "--signature", sign_webhook(not_an_event, SECRET)],
            not_an_event,
            "not a Cobalt event",
        ),
        "missing body file": (
            [
                "--secret",
                SECRET,
                "--signature",
                signature,
                "--body-file",
                str(tmp_path / "nope.json"),
            ],
            b"",
            "cannot read the body from " + str(tmp_path / "nope.json") + ": No such file",
        ),
        "body file is a directory": (
            ["--secret", SECRET, "--signature", signature, "--body-file", str(tmp_path)],
            b"",
            f"cannot read the body from {tmp_path}",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong secret",
        "forged signature",
        "garbage signature",
        "altered body",
        "signed body not JSON",
        "signed JSON not an event",
        "missing body file",
        "body file is a directory",
    ],
)
def test_verify_refuses_a_bad_delivery_with_status_1_and_the_reason(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: str,
) -> None:
    """Each failure: exit status 1, one ``invalid: <reason>`` line, and no secret echoed."""
    args, stdin, reason = bad_deliveries(tmp_path)[case]

    status, out, err = verify(capsys, monkeypatch, *args, stdin=stdin)

    assert status == 1
    assert out == ""
    assert err.startswith("invalid: ")
    assert reason in err
    assert len(err.splitlines()) == 1
    assert SECRET not in err


# -- simulate and listen, as real processes ----------------------------------------------------


def assert_port_closed(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT).close()


@pytest.mark.e2e
def test_listen_prints_a_verified_delivery_and_answers_401_to_a_forged_one() -> None:
    """A signed POST is printed as an event line; a forged one is refused and printed nowhere."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/cobalt"
    with server("listen", "--port", str(port), "--secret", SECRET, ready="listening") as listen:
        with httpx.Client(timeout=HTTP_TIMEOUT) as http:
            body, headers = signed_delivery(make_task_created_event(job_id="1001"), SECRET)
            assert http.post(url, content=body, headers=headers).status_code == 200
            assert listen.expect("job_id=1001").startswith("task.created job_id=1001 id=evt_")

            forged, forged_headers = signed_delivery(
                make_task_created_event(job_id="666"), "whsec_attacker"
            )
            assert http.post(url, content=forged, headers=forged_headers).status_code == 401
            elsewhere = http.post(url.replace("cobalt", "other"), content=body, headers=headers)
            assert elsewhere.status_code == 404

            body, headers = signed_delivery(make_task_created_event(job_id="1002"), SECRET)
            assert http.post(url, content=body, headers=headers).status_code == 200
            line = listen.next_line()
            assert line is not None
            assert line.startswith("task.created job_id=1002")  # nothing printed for job 666
        assert listen.interrupt() in (0, 130)
    assert_port_closed(port)


@pytest.mark.e2e
def test_simulate_answers_task_posts_with_the_default_credentials_and_logs_them() -> None:
    """POST /v1/tasks with ci_test/cs_test/at_test is accepted and logged; bad credentials 401."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    with server("simulate", "--port", str(port), ready="simulating Cobalt") as simulate:
        with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT) as http:
            task = {"patient_mrn": "MRN-1", "description": "Call back"}
            accepted = http.post("/tasks", json=task, headers=COBALT_HEADERS)
            assert accepted.status_code == 200
            job_id = accepted.json()["job_id"]
            assert simulate.expect("POST /v1/tasks") == f"POST /v1/tasks -> 200 job_id={job_id}"

            wrong = {**COBALT_HEADERS, "client_secret": "cs_wrong"}
            assert http.post("/tasks", json=task, headers=wrong).status_code == 401
            assert simulate.expect("POST /v1/tasks") == "POST /v1/tasks -> 401"
        status = simulate.interrupt()
        assert status in (0, 130)  # 0 when our parent had SIGINT ignored: see below
        if status == 130:
            assert simulate.errors == ["cobalt-async simulate: stopped\n"]
    assert_port_closed(port)


@pytest.mark.e2e
def test_simulate_delivers_signed_webhooks_that_listen_verifies() -> None:
    """The two commands together: a task posted to simulate shows up as an event in listen."""
    hook_port, cobalt_port = free_port(), free_port()
    hook_url = f"http://127.0.0.1:{hook_port}/webhooks/cobalt"
    with (
        server("listen", "--port", str(hook_port), "--secret", SECRET, ready="listening") as listen,
        server(
            "simulate",
            "--port",
            str(cobalt_port),
            "--webhook-url",
            hook_url,
            "--secret",
            SECRET,
            "--latency",
            "0.05",
            ready="simulating Cobalt",
        ) as simulate,
        httpx.Client(timeout=HTTP_TIMEOUT) as http,
    ):
        accepted = http.post(
            f"http://127.0.0.1:{cobalt_port}/v1/tasks",
            json={"patient_mrn": "MRN-9", "description": "Call back"},
            headers=COBALT_HEADERS,
        )
        job_id = accepted.json()["job_id"]
        assert listen.expect(f"job_id={job_id}").startswith(f"task.created job_id={job_id}")
        assert simulate.expect("webhook task.created") == (
            f"webhook task.created job_id={job_id} attempt=1 -> 200"
        )
        assert simulate.interrupt() in (0, 130)
        assert listen.interrupt() in (0, 130)
    assert_port_closed(hook_port)
    assert_port_closed(cobalt_port)


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["simulate", "listen"])
def test_ctrl_c_also_stops_a_server_a_shell_started_in_the_background(command: str) -> None:
    """With SIGINT ignored on entry (``cmd &``), SIGINT still ends it and frees the port."""
    port = free_port()
    args = [command, "--port", str(port)]
    if command == "listen":
        args += ["--secret", SECRET]
    with server(*args, ready="http://", sigint_ignored=True) as process:
        with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT):
            pass  # it is listening
        status = process.interrupt()

    assert status in (0, 130)
    assert_port_closed(port)


# -- listen --forward-to ---------------------------------------------------------------------


@pytest.mark.usefixtures("clean_environment")
def test_forward_without_credentials_names_each_flag_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing is polled: one line says what to pass or set, and the exit status is 2."""
    argv = ["listen", "--forward-to", "http://127.0.0.1:1/hooks", "--secret", SECRET]
    status, out, err = run_cli(capsys, [*argv, "--client-id", "ci_mine"])

    assert (2, "") == (status, out)
    assert err == (
        "cobalt-async listen: missing Cobalt credentials: pass --client-secret "
        "(or COBALT_CLIENT_SECRET), --access-token (or COBALT_ACCESS_TOKEN)\n"
    )


@pytest.mark.usefixtures("clean_environment")
def test_forward_to_a_base_url_that_is_not_one_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*FORWARD[3:], "--forward-to", "http://127.0.0.1:1/hooks", "--base-url", "cobalt"]
    credentials = ["--client-id", "c", "--client-secret", "s", "--access-token", "t"]
    status, out, err = run_cli(capsys, [*argv, *credentials])

    assert (2, "") == (status, out)
    assert err.startswith("cobalt-async listen: base_url must be an http(s) URL")
    assert len(err.splitlines()) == 1


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.timeout(90)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn serves both sides
async def test_forward_to_delivers_each_new_event_once_to_a_real_app() -> None:
    """
    ``listen --forward-to`` as a process polls FakeCobalt over HTTP, and POSTs each event
    recorded after it started to a receiver app served by uvicorn: signed with the secret,
    verified there, one line each, none twice however many polls see it.
    """
    hooked: list[Event] = []
    receiver = WebhookReceiver(InMemorySink(), secrets=[SECRET], on_event=hooked.append)
    fake = FakeCobalt(latency=0.0)  # no webhook registered: only the listing has the events
    with anyio.fail_after(60):
        async with (
            fake,
            serve(fake) as cobalt_url,
            serve(WebhookApp(receiver)) as app_url,
            CobaltClient(
                base_url=cobalt_url + "/v1",
                client_id=fake.client_id,
                client_secret=fake.client_secret,
                access_token=fake.access_token,
            ) as client,
        ):
            before = await create_tasks(client, fake, 2)
            forward = forwarder(cobalt_url, app_url + "/webhooks/cobalt", fake)
            try:
                await anyio.to_thread.run_sync(forward.expect, "forwarding Cobalt events")
                created = await create_tasks(client, fake, 3)
                lines = [await anyio.to_thread.run_sync(forward.next_line) for _ in created]
                polls = fake.stats.requests
                await until(lambda: fake.stats.requests >= polls + 3, timeout=30)
                status = await anyio.to_thread.run_sync(forward.interrupt)
            finally:
                await anyio.to_thread.run_sync(forward.kill)

    assert created == [str(event.job_id) for event in hooked]
    assert [
        f"{line}".startswith(f"task.created job_id={job_id} id=evt_")
        and f"{line}".endswith(" -> 200")
        for line, job_id in zip(lines, created, strict=True)
    ] == [True] * 3
    assert not set(before) & {str(event.job_id) for event in hooked}
    assert forward.lines.get_nowait() is None  # nothing more was printed: the output ended
    assert status in (0, 130)


@pytest.mark.e2e
def test_forward_with_credentials_cobalt_refuses_exits_1_without_the_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Against ``simulate``: a wrong client secret is a 401, which polling again cannot mend."""
    port = free_port()
    with server("simulate", "--port", str(port), ready="simulating Cobalt"):
        status, out, err = run_cli(
            capsys,
            [
                *FORWARD[3:],
                "--forward-to",
                "http://127.0.0.1:1/hooks",
                "--base-url",
                f"http://127.0.0.1:{port}/v1",
                "--client-id",
                "ci_test",
                "--client-secret",
                "cs_wrong",
                "--access-token",
                "at_test",
            ],
        )

    assert (1, "") == (status, out)
    assert err.startswith("cobalt-async listen: cannot poll Cobalt's webhook-events: ")
    assert "401" in err
    assert len(err.splitlines()) == 1
    assert "cs_wrong" not in err


FORWARD = [sys.executable, "-m", "cobalt_async", "listen", "--secret", SECRET]


def forwarder(cobalt_url: str, app_url: str, fake: FakeCobalt) -> Server:
    """``listen --forward-to`` as a process, polling every 0.1 s."""
    return Server(
        *FORWARD[3:],
        "--forward-to",
        app_url,
        "--base-url",
        cobalt_url + "/v1",
        "--client-id",
        fake.client_id,
        "--client-secret",
        fake.client_secret,
        "--access-token",
        fake.access_token,
        "--interval",
        "0.1",
    )


async def create_tasks(client: CobaltClient, fake: FakeCobalt, count: int) -> list[str]:
    """Submit *count* tasks; once they finished, their job ids in the order they did."""
    handles = [
        await client.tasks.create(patient_mrn="MRN-1", description="Call back")
        for _ in range(count)
    ]
    await fake.drain()
    ids = {handle.job_id for handle in handles}
    return [event["job_id"] for event in fake.events if event["job_id"] in ids]
