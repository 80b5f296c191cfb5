"""Klaviyo's published request schemas and documented limits, as a test helper.

Reads ``../shared/klaviyo/request-schemas.json`` and reuses ``validate.py`` beside it, checking
a body the way that script's ``--strict`` mode does: the schema with ``date-time`` asserted as
strict RFC 3339 (offset required), ``additionalProperties: false`` on every declared object,
and the documented limits. Tests using it skip, saying why, when ../shared is absent.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from consumer.klaviyo.requests import KlaviyoRequest

SHARED_KLAVIYO = Path(__file__).resolve().parents[2] / "shared" / "klaviyo"
SCHEMAS_FILE = SHARED_KLAVIYO / "request-schemas.json"
VALIDATE_FILE = SHARED_KLAVIYO / "validate.py"


@cache
def _validate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("klaviyo_validate", VALIDATE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_schemas() -> ModuleType:
    """validate.py as a module; skips the calling test when the shared files are absent."""
    if not (SCHEMAS_FILE.is_file() and VALIDATE_FILE.is_file()):
        pytest.skip(f"Klaviyo request schemas not found at {SHARED_KLAVIYO} (../shared absent)")
    return _validate_module()


@cache
def _validators(operation: str) -> tuple[Draft202012Validator, Draft202012Validator]:
    kv = require_schemas()
    schema = json.loads(SCHEMAS_FILE.read_text())["operations"][operation]["schema"]
    formatted = Draft202012Validator(schema, format_checker=kv.rfc3339_checker())
    strict = Draft202012Validator(kv.close_objects(copy.deepcopy(schema)))
    return formatted, strict


def operation_for(method: str, path: str) -> str | None:
    """The request-schemas.json operation of a method and path (None: a bodiless GET)."""
    path = path.split("?", maxsplit=1)[0]
    if method == "PATCH" and path.startswith("/api/profiles/"):
        return "update_profile"
    return {
        ("POST", "/api/events"): "create_event",
        ("POST", "/api/event-bulk-create-jobs"): "bulk_create_events",
        ("POST", "/api/profile-import"): "create_or_update_profile",
    }.get((method, path))


def body_errors(operation: str, body: Any) -> list[str]:
    """Every schema, strict and limit error of ``body`` (empty when Klaviyo would take it)."""
    kv = require_schemas()
    formatted, strict = _validators(operation)
    errors = [f"schema {list(e.absolute_path)}: {e.message}" for e in formatted.iter_errors(body)]
    errors += [
        f"strict {list(e.absolute_path)}: {e.message}"
        for e in strict.iter_errors(body)
        if e.validator == "additionalProperties"
    ]
    raw_size = len(json.dumps(body).encode())
    errors += [
        f"limit {e['path']}: {e['message']}" for e in kv.limit_errors(operation, body, raw_size)
    ]
    return errors


def assert_valid_request(request: KlaviyoRequest) -> None:
    """The request's body (and its fallback's) validates; a GET carries no body."""
    operation = operation_for(request.method, request.path)
    if operation is None:
        assert request.method == "GET" and request.body is None, request
    else:
        assert body_errors(operation, request.body) == [], request.to_preview()
    if request.fallback is not None:
        assert_valid_request(request.fallback)
