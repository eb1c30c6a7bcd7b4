"""What the sdist and wheel hatchling builds hold, and what the README says of them."""

from __future__ import annotations

import re
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from hatchling.builders.sdist import SdistBuilder
from hatchling.builders.wheel import WheelBuilder

from cobalt_async import __version__

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    (path,) = SdistBuilder(str(ROOT)).build(directory=str(tmp_path_factory.mktemp("sdist")))
    with tarfile.open(path) as archive:
        # Without the leading "cobalt_async-<version>/".
        return {name.partition("/")[2] for name in archive.getnames()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    directory = tmp_path_factory.mktemp("wheel")
    (path,) = WheelBuilder(str(ROOT)).build(directory=str(directory), versions=["standard"])
    return zipfile.ZipFile(path)


def test_the_sdist_holds_what_its_own_tests_need(sdist_names: set[str]) -> None:
    """The examples' and docs' tests run from an unpacked sdist, and the licence ships."""
    for name in ("LICENSE", "README.md", "CHANGELOG.md", "examples/quickstart.py"):
        assert name in sdist_names
    assert {"docs/correlation.md", "docs/webhooks.md", "docs/writing-a-sink.md"} <= sdist_names
    assert "tests/test_examples.py" in sdist_names
    assert not any(name.endswith(".pyc") for name in sdist_names)


def test_the_wheel_ships_types_licence_and_truthful_metadata(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "cobalt_async/py.typed" in names
    dist_info = f"cobalt_async-{__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "MIT"
    assert all(url.split(", ")[1].startswith("https://") for url in metadata.get_all("Project-URL"))
    assert not any(name.startswith(("tests/", "examples/", "bench/")) for name in names)


def test_the_readme_installs_from_a_checkout_not_from_an_index() -> None:
    """Not published yet: the install section says so, and names the wheel this version builds."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme[readme.index("## Install") : readme.index("## Example")]
    assert "not published" in install
    assert not re.search(r"^pip install cobalt-async", install, re.MULTILINE)
    assert f"cobalt_async-{__version__}-py3-none-any.whl" in install
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")
