"""JSON:API answers in the shape Klaviyo sends them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from klaviyo_sandbox.validation import Problem

CONTENT_TYPE = "application/vnd.api+json"

# status → (code, title) for errors the sandbox makes up itself
_STANDARD: dict[int, tuple[str, str]] = {
    400: ("invalid", "Invalid input."),
    401: ("not_authenticated", "Authentication credentials were not provided."),
    403: ("permission_denied", "You do not have permission to perform this action."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    409: ("conflict", "Conflict."),
    415: ("unsupported_media_type", "Unsupported media type."),
    429: ("throttled", "Request was throttled."),
    500: ("error", "A server error occurred."),
    502: ("bad_gateway", "Bad gateway."),
    503: ("service_unavailable", "Service temporarily unavailable."),
    504: ("gateway_timeout", "Gateway timeout."),
}


def error(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    title: str | None = None,
    pointer: str | None = None,
    parameter: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One member of ``errors``."""
    std_code, std_title = _STANDARD.get(status, ("error", "Error."))
    source: dict[str, str] = {}
    if pointer is not None:
        source["pointer"] = pointer
    if parameter is not None:
        source["parameter"] = parameter
    return {
        "id": str(uuid.uuid4()),
        "status": status,
        "code": code or std_code,
        "title": title or std_title,
        "detail": detail,
        "source": source,
        "meta": dict(meta or {}),
    }


def document(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    out = {"Content-Type": CONTENT_TYPE}
    if headers:
        out.update(headers)
    return web.Response(status=status, body=orjson.dumps(payload), headers=out)


def errors_response(
    status: int, errors: Iterable[dict[str, Any]], headers: Mapping[str, str] | None = None
) -> web.Response:
    return document(status, {"errors": list(errors)}, headers)


def problems_response(
    problems: Iterable[Problem], headers: Mapping[str, str] | None = None
) -> web.Response:
    """400 naming every problem by its pointer: Klaviyo rejects the whole request."""
    return errors_response(
        400, (error(400, p.detail, pointer=p.pointer) for p in problems), headers
    )
