"""Klaviyo's documented limits, checked on every request body a handler builds.

The published JSON Schema cannot express these, and Klaviyo answers a breach with a 400 that
would dead-letter the event anyway; checking here names the offending field (as a JSON pointer)
before anything is sent. Sources: the Create Event schema descriptions and the events API
overview's "Limitations" (revision 2026-07-15).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from consumer.handlers.errors import LimitViolation

JSONObject = dict[str, Any]

MAX_METRIC_NAME_CHARS = 127  # "less than 128 characters"
MAX_EVENT_PROPERTIES = 400
MAX_STRING_BYTES = 100 * 1024
MAX_ARRAY_ITEMS = 4000
MAX_NESTING = 10
MIN_UNIQUE_ID_CHARS, MAX_UNIQUE_ID_CHARS = 1, 255
MIN_TIME_YEAR = 1990
MAX_TIME_AHEAD = timedelta(days=365)
MAX_EVENT_PAYLOAD_BYTES = 5 * 1024 * 1024
MAX_PROFILE_PAYLOAD_BYTES = 100 * 1024
MAX_EMAIL_CHARS = 99  # events API troubleshooting: "less than 100 characters"


def check_create_event(body: JSONObject, now: datetime) -> None:
    """Raise :class:`LimitViolation` if a Create Event body breaks a documented limit."""
    base = "/data/attributes"
    attributes = body["data"]["attributes"]
    name = attributes["metric"]["data"]["attributes"]["name"]
    if len(name) > MAX_METRIC_NAME_CHARS:
        _fail(f"{base}/metric/data/attributes/name", "metric name must be < 128 characters")
    properties = attributes["properties"]
    if len(properties) > MAX_EVENT_PROPERTIES:
        _fail(f"{base}/properties", f"more than {MAX_EVENT_PROPERTIES} event properties")
    unique_id = attributes.get("unique_id")
    if unique_id is not None and not (MIN_UNIQUE_ID_CHARS <= len(unique_id) <= MAX_UNIQUE_ID_CHARS):
        _fail(f"{base}/unique_id", "unique_id must be 1-255 characters")
    if "time" in attributes:
        _check_time(attributes["time"], now, f"{base}/time")
    profile = attributes["profile"]["data"]
    _check_profile(profile, f"{base}/profile/data")
    _check_tree(properties, f"{base}/properties")
    _check_size(body, MAX_EVENT_PAYLOAD_BYTES, "create event payload > 5 MB")


def check_profile_request(body: JSONObject) -> None:
    """Raise :class:`LimitViolation` if an Update Profile / Profile Import body breaks a limit."""
    _check_profile(body["data"], "/data")
    _check_size(body, MAX_PROFILE_PAYLOAD_BYTES, "profile payload > 100 KB")


def _check_profile(profile: JSONObject, base: str) -> None:
    attributes = profile.get("attributes", {})
    email = attributes.get("email")
    if email is not None and len(email) > MAX_EMAIL_CHARS:
        _fail(f"{base}/attributes/email", "email must be < 100 characters")
    for key, value in attributes.items():
        _check_tree(value, f"{base}/attributes/{_escape(key)}")


def _check_time(value: str, now: datetime, pointer: str) -> None:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:  # never built that way, but compare like with like
        moment = moment.replace(tzinfo=UTC)
    if moment.year < MIN_TIME_YEAR:
        _fail(pointer, f"time must be in {MIN_TIME_YEAR} or later")
    if moment > now + MAX_TIME_AHEAD:
        _fail(pointer, "time may be at most 1 year in the future")


def _check_tree(node: Any, base: str) -> None:
    """Strings, arrays and nesting anywhere below ``node`` (nesting counted as Klaviyo's
    validator does: each object or array below ``node`` adds a level)."""
    for value, depth, pointer in _walk(node, 0, base):
        if isinstance(value, str) and len(value.encode()) > MAX_STRING_BYTES:
            _fail(pointer, "string > 100 KB")
        elif isinstance(value, list) and len(value) > MAX_ARRAY_ITEMS:
            _fail(pointer, f"array of more than {MAX_ARRAY_ITEMS} items")
        if depth > MAX_NESTING:
            _fail(pointer, f"nesting deeper than {MAX_NESTING} levels")


def _walk(node: Any, depth: int, pointer: str) -> Iterator[tuple[Any, int, str]]:
    yield node, depth, pointer
    if isinstance(node, dict):
        children: Iterator[tuple[str, Any]] = ((_escape(k), v) for k, v in node.items())
    elif isinstance(node, list):
        children = ((str(i), v) for i, v in enumerate(node))
    else:
        return
    for key, child in children:
        nested = depth + 1 if isinstance(child, dict | list) else depth
        yield from _walk(child, nested, f"{pointer}/{key}")


def _escape(key: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _check_size(body: JSONObject, limit: int, message: str) -> None:
    if len(orjson.dumps(body)) > limit:
        _fail("", message)


def _fail(pointer: str, message: str) -> None:
    raise LimitViolation(f"{message} at {pointer or '/'}", field=pointer or "/")
