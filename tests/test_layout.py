"""
The package's layout: imports run downward only.

The graph is built from the source, counting every ``import`` wherever it stands (module
level, ``TYPE_CHECKING`` blocks, function bodies), since each one is a dependency a reader
has to hold in mind, whether or not it runs at import time.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cobalt_async"
ROOT = PACKAGE.name


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> Iterator[str]:
    """The package's modules that module *name* imports, by any statement anywhere in it."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            yield from _targets(node, package)


def _targets(node: ast.ImportFrom, package: str) -> Iterator[str]:
    if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    for alias in node.names:
        # ``from . import x`` names a module when x is one; otherwise it is the package.
        submodule = f"{source}.{alias.name}"
        target = submodule if submodule in MODULES else source
        if target in MODULES:
            yield target


GRAPH = {name: set(imported_modules(name)) - {name} for name in MODULES}


def cycles() -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in MODULES:
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_every_kind_of_import() -> None:
    """Guard the guard: type-only and function-local imports are edges too."""
    assert f"{ROOT}.models" in GRAPH[f"{ROOT}._errors"]  # under TYPE_CHECKING
    assert f"{ROOT}._commands" in GRAPH[f"{ROOT}._cli"]  # inside a function
    assert f"{ROOT}.sinks._redis" in GRAPH[f"{ROOT}.sinks"]  # both


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No cycle, however long: every import runs downward."""
    assert [] == cycles()


@pytest.mark.parametrize("name", [name for name in MODULES if name.startswith(f"{ROOT}.models")])
def test_models_import_nothing_else_of_the_package(name: str) -> None:
    """The models are the bottom layer: everything else may import them, they import nothing."""
    outside = {target for target in GRAPH[name] if not target.startswith(f"{ROOT}.models")}
    assert set() == outside


def private_imports(source: str, name: str) -> list[str]:
    """The ``_names`` that *source*, as module *name*, imports from the package's modules."""
    path = MODULES.get(name, PACKAGE / "__probe__.py")
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        targets = set(_targets(node, package))  # empty for anything outside the package
        for alias in node.names:
            private = alias.name.startswith("_") and not alias.name.startswith("__")
            # ``from .sinks import _memory`` imports a module of the package, not a name.
            if private and targets and not any(t.endswith(f".{alias.name}") for t in targets):
                found.append(alias.name)
    return found


def test_the_private_name_check_tells_names_from_modules() -> None:
    """Guard the guard: a sibling's ``_name`` is caught, a private module is not."""
    source = "from ._signing import _secret\nfrom .sinks import _memory\nimport json"
    assert ["_secret"] == private_imports(source, f"{ROOT}._webhooks")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_private_name_of_a_sibling(name: str) -> None:
    """What a module shares, it names without an underscore; ``_name`` stays where it is."""
    assert [] == private_imports(MODULES[name].read_text(encoding="utf-8"), name)


def unit(name: str) -> str:
    """The top-level module or subpackage *name* belongs to, as the README lists it."""
    part = name.split(".")[1] if name != ROOT else "__init__"
    return f"{part}/" if (PACKAGE / part).is_dir() else f"{part}.py"


def readme_layout() -> list[str]:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = re.search(r"<!-- layout -->(.*?)<!-- /layout -->", readme, re.S)
    assert section is not None, "README.md has no <!-- layout --> section"
    return re.findall(r"^- `([\w/.]+)`", section.group(1), re.M)


def test_the_readme_lists_every_module_once_in_the_order_of_its_imports() -> None:
    """Bottom to top: each module the README names comes after every module it imports."""
    listed = readme_layout()
    units = {unit(name) for name in MODULES} - {"__main__.py"}
    assert sorted(units) == sorted(listed)
    position = {name: index for index, name in enumerate(listed)}
    backwards = [
        f"{unit(name)} imports {unit(target)}"
        for name, targets in GRAPH.items()
        for target in targets
        if unit(name) in position
        and unit(target) != unit(name)
        and position[unit(target)] > position[unit(name)]
    ]
    assert [] == backwards
