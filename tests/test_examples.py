"""The examples are documentation: each one runs as written, with no arguments."""

from __future__ import annotations

import ast
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60.0


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``examples/<name>`` with stdout a pipe; returns its exit status and stdout."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout


def run_on_a_terminal(name: str, *args: str) -> tuple[int, str]:
    """Run ``examples/<name>`` with stdout a pseudo-terminal; returns status and output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + TIMEOUT
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([controller], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
        return process.wait(timeout=TIMEOUT), output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)


@pytest.fixture(scope="module")
def cobalt_url() -> Iterator[str]:
    """``python -m cobalt_async simulate`` on a free loopback port, stopped at the end."""
    port = free_port()
    with server("simulate", "--port", str(port), ready="simulating Cobalt") as process:
        yield f"http://127.0.0.1:{port}/v1"
        process.interrupt()


@pytest.mark.e2e
def test_quickstart_creates_a_task_and_writes_a_note_against_the_simulator() -> None:
    """No arguments: an in-process FakeCobalt; the task is created and its note written."""
    status, out = run_example("quickstart.py")

    assert status == 0
    lines = out.splitlines()
    assert re.fullmatch(r"task accepted: job_id=\d+", lines[0])
    assert re.fullmatch(r"task created: emr_task_id=[0-9a-f-]{36}", lines[1])
    assert re.fullmatch(r"note written: emr_note_id=[0-9a-f-]{36}", lines[2])


@pytest.mark.e2e
def test_quickstart_real_reads_its_credentials_and_url_from_the_environment(
    cobalt_url: str,
) -> None:
    """``--real`` builds ``CobaltClient()`` from the COBALT_* variables: here, a real server."""
    env = {
        **os.environ,
        "COBALT_BASE_URL": cobalt_url,
        "COBALT_CLIENT_ID": "ci_test",
        "COBALT_CLIENT_SECRET": "cs_test",
        "COBALT_ACCESS_TOKEN": "at_test",
    }
    status, out = run_example("quickstart.py", "--real", env=env)

    assert status == 0
    assert "note written: emr_note_id=" in out


@pytest.mark.e2e
def test_batch_submit_follows_1000_tasks_with_plain_progress_lines() -> None:
    """No arguments, stdout not a terminal: a line per 10 % and a summary with nothing unknown."""
    status, out = run_example("batch_submit.py")

    assert status == 0
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("submitted ")] == [
        f"submitted {done}/1000 (0 refused)" for done in range(100, 1001, 100)
    ]
    assert [line for line in lines if line.startswith("resolved ")] == [
        f"resolved {done}/1000" for done in range(100, 1001, 100)
    ]
    summary = re.fullmatch(
        r"1000 tasks: (\d+) created, (\d+) failed, 0 refused, 0 unknown", lines[-1]
    )
    assert summary is not None, lines[-1]
    created, failed = map(int, summary.groups())
    assert created + failed == 1000
    assert failed > 0  # the simulator fails 1 % of the jobs


@pytest.mark.e2e
def test_batch_submit_draws_a_progress_bar_on_a_terminal() -> None:
    """On a terminal the progress is a rich bar, not lines, and the summary still follows."""
    status, out = run_on_a_terminal("batch_submit.py", "--tasks", "50")

    assert status == 0
    assert "submitted" in out
    assert "resolved" in out
    assert "━" in out  # rich's bar
    assert "resolved 50/50" not in out  # the plain lines are for pipes
    assert re.search(r"50 tasks: \d+ created, \d+ failed, 0 refused, 0 unknown", out)


@pytest.mark.parametrize(
    "path",
    sorted(path for path in EXAMPLES.glob("*.py") if path.name != "__init__.py"),
    ids=lambda path: path.name,
)
def test_every_example_is_in_the_readme_and_says_how_to_run_it(path: Path) -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))

    assert f"`examples/{path.name}`" in readme
    assert docstring is not None
    module = f"examples.{path.stem}:app"
    assert f"python examples/{path.name}" in docstring or f"uvicorn {module}" in docstring
