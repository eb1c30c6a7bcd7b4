"""
The static checks, as tests: ``mypy --strict`` on the package and on ``tests/typing/api.py``,
``ruff check`` on every Python tree, and ``py.typed`` in the built wheel.

Each runs a tool in a subprocess: a few seconds with a warm ``.mypy_cache``, about 15 s cold,
so the module is marked ``e2e`` (deselect with ``-m "not e2e"``).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
TYPING_TESTS = "tests/typing/api.py"


def run_module(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` in the project root, with the project's configuration."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_succeeded(result: subprocess.CompletedProcess[str]) -> None:
    command = " ".join(["python", *result.args[1:]])
    output = f"{result.stdout}\n{result.stderr}".strip()
    assert result.returncode == 0, f"{command} exited with {result.returncode}:\n{output}"


def test_mypy_strict_passes_on_the_package_and_the_typing_tests() -> None:
    # The pyproject configuration applies (pydantic plugin, ignore-without-code); --strict
    # also reports unused "type: ignore" comments, which is what makes api.py's lines that
    # must not type-check count.
    assert_succeeded(run_module("mypy", "--strict", "cobalt_async", TYPING_TESTS))


def test_ruff_check_passes() -> None:
    assert_succeeded(run_module("ruff", "check", "cobalt_async", "tests", "examples", "bench"))


def test_the_wheel_ships_py_typed(tmp_path: Path) -> None:
    result = run_module("pip", "wheel", "--no-deps", "--quiet", ".", "-w", str(tmp_path))
    assert_succeeded(result)
    (wheel,) = tmp_path.glob("cobalt_async-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "cobalt_async/py.typed" in names
    assert not [name for name in names if name.startswith("tests/")]
