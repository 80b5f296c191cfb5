"""The sandbox's own Klaviyo facts against Klaviyo's documents, and its independence.

The sandbox is the relay's opponent in tests: its paths, limits, revision and error shapes
come from :mod:`klaviyo_sandbox.facts`, checked here against ``../shared/klaviyo/`` (the README
and the OpenAPI spec), and it imports nothing from ``consumer``, so a wrong value in the
client is never mirrored by the stand-in it is tested against.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import klaviyo_sandbox
from klaviyo_sandbox import jsonapi
from klaviyo_sandbox.facts import (
    BURST_SECONDS,
    LATEST_REVISION,
    OPERATIONS,
    PARTIAL_FAILURE_HEADER,
    STEADY_SECONDS,
    Operation,
)
from tests.fixtures.klaviyo_schemas import SHARED_KLAVIYO

README = SHARED_KLAVIYO / "README.md"
OPENAPI = SHARED_KLAVIYO / f"openapi-stable-{LATEST_REVISION}.json"

# | create_event | POST /api/events | 202 | 350/s, 3500/min |
_ROW = re.compile(
    r"^\| (?P<op>\w+)[^|]* \| (?P<method>[A-Z]+) (?P<path>/[^ ?|]+)[^|]* \| (?P<success>[^|]+) \|"
    r" (?P<burst>\d+)/s, (?P<steady>\d+)/min \|$",
    re.MULTILINE,
)


def _read(path: Path) -> str:
    if not path.is_file():
        pytest.skip(f"Klaviyo's documents not found at {path} (../shared/klaviyo absent)")
    return path.read_text(encoding="utf-8")


@cache
def _openapi() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(_read(OPENAPI))
    return spec


def _readme_rows() -> dict[str, re.Match[str]]:
    return {row["op"]: row for row in _ROW.finditer(_read(README))}


def test_every_operation_matches_the_readme_table() -> None:
    rows = _readme_rows()
    assert set(rows) == {str(op) for op in Operation}, "the README's endpoint table changed"
    for op, facts in OPERATIONS.items():
        row = rows[op]
        assert (facts.method, facts.path) == (row["method"], row["path"]), op
        assert facts.success == {int(code) for code in re.findall(r"\d{3}", row["success"])}, op
        burst, steady = facts.limit.burst, facts.limit.steady
        assert (burst.requests, steady.requests) == (int(row["burst"]), int(row["steady"])), op
        assert (burst.seconds, steady.seconds) == (BURST_SECONDS, STEADY_SECONDS), op


@pytest.mark.parametrize("operation", list(Operation))
def test_every_operation_matches_the_openapi_spec(operation: Operation) -> None:
    spec = _openapi()
    found = [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and op.get("operationId") == operation
    ]
    assert len(found) == 1, f"{operation} is not one operation of the spec"
    method, path, op = found[0]
    facts = OPERATIONS[operation]
    assert (facts.method, facts.path) == (method, path)
    assert facts.success == {int(code) for code in op["responses"] if code.isdigit()}
    published = op["x-klaviyo-ratelimit"]
    limit = facts.limit
    assert published == {
        "burst": f"{limit.burst.requests}/s",
        "steady": f"{limit.steady.requests}/m",
    }


def test_the_latest_revision_is_the_documented_one() -> None:
    assert _openapi()["info"]["version"] == LATEST_REVISION
    assert f"`revision: {LATEST_REVISION}`" in _read(README)


def test_error_shapes_and_codes_are_klaviyos() -> None:
    readme = _read(README)
    members = re.search(r'`\{"errors":\[\{(?P<keys>[^]]+)\}\]\}`', readme)
    assert members, "the README's error body changed"
    keys = set(re.findall(r'"(\w+)"', members["keys"])) - {"pointer", "parameter"}
    error = jsonapi.error(400, "x", pointer="/data")
    assert set(error) == keys
    assert set(error["source"]) <= {"pointer", "parameter"}
    seen = re.search(r"Status codes seen: (?P<codes>[\d, ]+)\.", readme)
    assert seen, "the README's list of status codes changed"
    documented = {int(code) for code in seen["codes"].split(",")}
    made_up = set(jsonapi._STANDARD)
    assert made_up <= documented, made_up - documented
    assert f"`{PARTIAL_FAILURE_HEADER}: phone_number`" in readme


def _imported_modules(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_of_the_sandbox_imports_the_relay() -> None:
    package = Path(klaviyo_sandbox.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 5, package
    offending = {
        str(path.relative_to(package)): sorted(
            name for name in _imported_modules(path) if name.split(".")[0] == "consumer"
        )
        for path in modules
    }
    assert {path: names for path, names in offending.items() if names} == {}
