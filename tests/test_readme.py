"""The README's example runs as printed, against a simulated Cobalt over real HTTP."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio
import pytest

from cobalt_async._servers import serve
from cobalt_async.testing import FakeCobalt

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT = 60.0


def readme_example() -> str:
    """The fenced python block between the readme-example markers."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"<!-- readme-example -->(.*?)<!-- /readme-example -->", text, re.S)
    assert section is not None, "README.md has no <!-- readme-example --> section"
    block = re.fullmatch(r"\s*```python\n(.*?)```\s*", section.group(1), re.S)
    assert block is not None, "the readme-example section is not one fenced python block"
    return block.group(1)


def test_the_readme_example_is_a_complete_program() -> None:
    """It compiles, and it takes its credentials from the environment, not from the text."""
    code = readme_example()

    compile(code, "README.md", "exec")
    assert "CobaltClient()" in code
    assert "anyio.run(main)" in code


@pytest.mark.e2e
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio only
async def test_the_readme_example_writes_a_note_against_a_served_fake_cobalt(
    tmp_path: Path,
) -> None:
    """Run as a script with COBALT_* set: it notes the created task and staff's own."""
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example(), encoding="utf-8")
    fake = FakeCobalt(latency=0.05)
    fake.add_task("MRN-12345", subject="Refill request")  # made by clinic staff in the EHR
    with anyio.fail_after(TIMEOUT):
        async with serve(fake) as url:
            env = {
                **os.environ,
                "COBALT_BASE_URL": f"{url}/v1",
                "COBALT_CLIENT_ID": fake.client_id,
                "COBALT_CLIENT_SECRET": fake.client_secret,
                "COBALT_ACCESS_TOKEN": fake.access_token,
            }
            result = await anyio.run_process([sys.executable, str(script)], env=env, check=False)

    stdout = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    notes = [event["data"] for event in fake.events if event["type"] == "task_note.created"]
    assert stdout == "".join(f"note written: {note['emr_note_id']}\n" for note in notes)
    created = next(event["data"] for event in fake.events if event["type"] == "task.created")
    assert created["emr_task_id"] in {note["emr_task_id"] for note in notes}
    counts = fake.stats.tasks_accepted, fake.stats.fetches_accepted, fake.stats.notes_accepted
    assert (1, 1, 2) == counts


def test_every_test_the_readme_names_exists() -> None:
    """The Guarantees section is backed by tests that exist under the names it gives."""
    readme = (ROOT / "README.md").read_text()
    references = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)*)`", readme)
    assert references
    missing = []
    for path, names in references:
        source = (ROOT / path).read_text()
        for name in names.split("::")[1:]:
            if not re.search(rf"^\s*(?:async )?(?:def|class) {name}\b", source, re.MULTILINE):
                missing.append(f"{path}::{name}")
    assert [] == missing
