"""The package's public surface is decided, not accidental: ``consumer`` exports its version
and nothing else (see its ``__init__``), and that version is the one the wheel is built with."""

from __future__ import annotations

import importlib
import tomllib
import types
from pathlib import Path

import pytest

import consumer

ROOT = Path(__file__).resolve().parents[2]


def _defined(module: types.ModuleType) -> set[str]:
    """Public names a package defines itself (its submodules, once imported, do not count)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_the_package_exports_its_version_only() -> None:
    assert consumer.__all__ == ["__version__"]
    assert _defined(consumer) == set()


def test_the_version_is_the_wheels() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert consumer.__version__ == project["version"]


@pytest.mark.parametrize(
    "package", ["consumer.klaviyo", "consumer.handlers", "consumer.pipeline", "consumer.tools"]
)
def test_subpackages_are_no_fronts(package: str) -> None:
    """Names are imported from the module that defines them, never through a package."""
    assert _defined(importlib.import_module(package)) == set()
