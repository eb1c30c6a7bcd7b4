"""The public surface: sorted and complete __all__, public module paths, version."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import types

import pytest

import cobalt_async

PUBLIC_SUBMODULES = [
    "cobalt_async.asgi",
    "cobalt_async.fastapi",
    "cobalt_async.models",
    "cobalt_async.sinks",
    "cobalt_async.testing",
]
OPTIONAL_EXPORTS = {
    "cobalt_async": {"PostgresSink": "asyncpg"},
    "cobalt_async.sinks": {"PostgresSink": "asyncpg", "RedisSink": "redis"},
}
"""Names that need an extra: importing them without it must fail with an install hint."""


def export_order(name: str) -> tuple[bool, str]:
    """The package's order: SCREAMING_CASE constants first, then sorted() order."""
    return (not name.isupper(), name)


def installed(module_name: str, name: str) -> bool:
    """Whether *name* of *module_name* can be imported here (its extra, if any, is installed)."""
    package = OPTIONAL_EXPORTS.get(module_name, {}).get(name)
    return package is None or importlib.util.find_spec(package) is not None


def _exported_classes() -> list[object]:
    params = []
    for name in cobalt_async.__all__:
        if not installed("cobalt_async", name) or not inspect.isclass(getattr(cobalt_async, name)):
            continue
        params.append(pytest.param(name, id=name))
    return params


class TestRootPackage:
    """cobalt_async itself."""

    def test_all_is_sorted(self) -> None:
        """__all__ lists constants first, then everything else in sorted() order."""
        assert sorted(cobalt_async.__all__, key=export_order) == cobalt_async.__all__
        assert len(set(cobalt_async.__all__)) == len(cobalt_async.__all__)

    def test_all_is_complete(self) -> None:
        """Every public name of the package namespace is in __all__, and only those."""
        public = {
            name
            for name, value in vars(cobalt_async).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        }

        # Names behind an extra are there once asked for.
        assert public | cobalt_async._LAZY == set(cobalt_async.__all__) - {"__version__"}

    @pytest.mark.parametrize("name", cobalt_async.__all__)
    def test_every_name_is_importable(self, name: str) -> None:
        """`from cobalt_async import <name>` works for each exported name."""
        if not installed("cobalt_async", name):
            pytest.skip(f"{name} needs an extra that is not installed")
        namespace: dict[str, object] = {}

        exec(f"from cobalt_async import {name}", namespace)

        assert namespace[name] is getattr(cobalt_async, name)

    @pytest.mark.parametrize("name", _exported_classes())
    def test_exported_classes_report_the_public_module(self, name: str) -> None:
        """Reprs and tracebacks name cobalt_async.X, not the private module."""
        assert "cobalt_async" == getattr(cobalt_async, name).__module__

    def test_exported_functions_report_the_public_module(self) -> None:
        """Exported functions are rewritten like classes."""
        functions = [
            name for name in cobalt_async.__all__ if inspect.isfunction(getattr(cobalt_async, name))
        ]

        assert functions
        assert {"cobalt_async"} == {getattr(cobalt_async, name).__module__ for name in functions}

    def test_version_matches_the_installed_metadata(self) -> None:
        """__version__ is the version packaging reports."""
        assert importlib.metadata.version("cobalt-async") == cobalt_async.__version__


class TestPublicSubmodules:
    """The public subpackages define a sorted __all__ of names that resolve."""

    @pytest.mark.parametrize("module_name", PUBLIC_SUBMODULES)
    def test_all_is_sorted(self, module_name: str) -> None:
        """Each public submodule has a sorted __all__ without duplicates."""
        module = importlib.import_module(module_name)

        assert sorted(module.__all__, key=export_order) == module.__all__
        assert len(set(module.__all__)) == len(module.__all__)

    @pytest.mark.parametrize("module_name", PUBLIC_SUBMODULES)
    def test_every_name_resolves(self, module_name: str) -> None:
        """Each name in a submodule's __all__ is an attribute of that module."""
        module = importlib.import_module(module_name)

        for name in module.__all__:
            if installed(module_name, name):
                assert getattr(module, name) is not None

    @pytest.mark.parametrize(
        ("name", "package", "module", "extra"),
        [
            ("RedisSink", "redis", "_redis", "redis"),
            ("PostgresSink", "asyncpg", "_postgres", "postgres"),
        ],
    )
    def test_optional_export_without_its_extra_names_the_extra(
        self, monkeypatch: pytest.MonkeyPatch, name: str, package: str, module: str, extra: str
    ) -> None:
        """A sink without its driver raises ImportError with the pip install hint."""
        monkeypatch.setitem(sys.modules, package, None)
        monkeypatch.delitem(sys.modules, f"cobalt_async.sinks.{module}", raising=False)
        sinks = importlib.import_module("cobalt_async.sinks")

        with pytest.raises(ImportError, match=rf"cobalt-async\[{extra}\]"):
            getattr(sinks, name)

    def test_postgres_sink_at_the_root_without_asyncpg_names_the_extra(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``from cobalt_async import PostgresSink`` says what to install, too."""
        monkeypatch.setitem(sys.modules, "asyncpg", None)
        monkeypatch.delitem(sys.modules, "cobalt_async.sinks._postgres", raising=False)
        monkeypatch.delitem(vars(cobalt_async), "PostgresSink", raising=False)

        with pytest.raises(ImportError, match=r"cobalt-async\[postgres\]"):
            cobalt_async.PostgresSink  # noqa: B018

    def test_unknown_attribute_of_the_root_is_an_attribute_error(self) -> None:
        with pytest.raises(AttributeError, match="NoSuchThing"):
            cobalt_async.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018

    def test_unknown_attribute_of_sinks_is_an_attribute_error(self) -> None:
        """The lazy loader does not turn every missing name into an import."""
        sinks = importlib.import_module("cobalt_async.sinks")

        with pytest.raises(AttributeError, match="NoSuchSink"):
            sinks.NoSuchSink  # noqa: B018


class TestRenamedFields:
    """Names that moved keep working for a while, with a warning that says where they went."""

    def test_receipt_outcome_is_result_with_a_deprecation_warning(self) -> None:
        receipt = cobalt_async.Receipt(200, "accepted", "accepted")

        with pytest.warns(DeprecationWarning, match=r"Receipt\.result"):
            assert "accepted" == receipt.outcome

    def test_batch_progress_outcome_is_result_with_a_deprecation_warning(self) -> None:
        error = cobalt_async.RequestValidationError("Missing required field: note")
        progress = cobalt_async.BatchProgress(1, 0, 1, 0, 0, error)

        with pytest.warns(DeprecationWarning, match=r"BatchProgress\.result"):
            assert error is progress.outcome
