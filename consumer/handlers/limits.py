"""Klaviyo's documented limits, checked on every request body a handler builds.

The published JSON Schema cannot express these, and Klaviyo answers a breach with a 400 that
would dead-letter the event anyway; checking here names the offending field (as a JSON pointer)
before anything is sent. Sources: the Create Event schema descriptions and the events API
overview's "Limitations" (revision 2026-07-15).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import orjson

from consumer.errors import LimitViolation
from consumer.rfc3339 import parse_rfc3339

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
    """Raise :class:`LimitViolation` if a Create Event body breaks a documented limit.

    When several limits are broken, the first one in this order is named: metric name,
    property count, ``unique_id``, ``time``, profile email, profile attributes, properties
    (depth first, in key order), payload size.
    """
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
    size = _encoded_size(body)
    profile = attributes["profile"]["data"]
    _check_profile(profile, f"{base}/profile/data", size)
    _check_tree(properties, f"{base}/properties", size)
    _check_size(body, size, MAX_EVENT_PAYLOAD_BYTES, "create event payload > 5 MB")


def check_profile_request(body: JSONObject) -> None:
    """Raise :class:`LimitViolation` if an Update Profile / Profile Import body breaks a limit."""
    size = _encoded_size(body)
    _check_profile(body["data"], "/data", size)
    _check_size(body, size, MAX_PROFILE_PAYLOAD_BYTES, "profile payload > 100 KB")


# A body whose JSON is at most this long cannot hold a string over the string limit (its JSON
# form is its UTF-8 bytes plus quotes and escapes) nor an array over the item limit (n items
# take at least 2n + 1 bytes): only nesting is left to check in it. Nearly every event is that
# small, and nesting is the cheap part of the walk.
_SMALL_BODY_BYTES = min(MAX_STRING_BYTES + 1, 2 * MAX_ARRAY_ITEMS + 2)
# A string of at most this many characters is within the string limit whatever they are
# (UTF-8 takes at most 4 bytes a character), so only longer ones are encoded to be measured.
_SAFE_STRING_CHARS = MAX_STRING_BYTES // 4
# A tuple: isinstance checks it faster than a ``dict | list`` union, and this is per node.
_CONTAINERS = (dict, list)


def _encoded_size(body: JSONObject) -> int | None:
    """The body's JSON length (as the client sends it: orjson, no whitespace), or None when
    orjson refuses the body (nested deeper than it goes, a lone surrogate...); every check
    then walks in full, and the size check raises orjson's own error as it always has."""
    try:
        return len(orjson.dumps(body))
    except orjson.JSONEncodeError:
        return None


def _check_profile(profile: JSONObject, base: str, size: int | None) -> None:
    attributes = profile.get("attributes", {})
    email = attributes.get("email")
    if email is not None and len(email) > MAX_EMAIL_CHARS:
        _fail(f"{base}/attributes/email", "email must be < 100 characters")
    # Each attribute is a tree of its own, nesting counted from it: walking the attributes
    # object from one level above the first counts exactly that.
    _check_tree(attributes, f"{base}/attributes", size, depth=-1)


def _check_time(value: str, now: datetime, pointer: str) -> None:
    moment = parse_rfc3339(value)
    if moment.year < MIN_TIME_YEAR:
        _fail(pointer, f"time must be in {MIN_TIME_YEAR} or later")
    if moment > now + MAX_TIME_AHEAD:
        _fail(pointer, "time may be at most 1 year in the future")


# A breach found by the walk: the keys from the walked node down to the bad value, deepest
# first (the pointer is only built when something is wrong), and what is wrong.
_Breach = tuple[list[str | int], str]


def _check_tree(node: JSONObject, base: str, size: int | None, depth: int = 0) -> None:
    """Strings, arrays and nesting anywhere below ``node`` (nesting counted as Klaviyo's
    validator does: each object or array below ``node`` adds a level, ``node`` itself being
    at ``depth``); the first breach in document order is named. ``size``: the whole body's
    JSON length (see _SMALL_BODY_BYTES).

    This runs on every Create Event (it was the relay's hottest code as a generator walk that
    built a pointer for every node), so: a small body only needs the nesting check, done by a
    yes/no walk over values; the keyed walk that names the breach runs only when it may find
    one; pointers are built only for a breach.
    """
    full = size is None or size > _SMALL_BODY_BYTES
    if not full and not _too_deep(node, depth):
        return  # the usual case, answered by the cheapest walk there is
    found = _breach(node, depth, full)
    if found is not None:
        keys, message = found
        _fail(base + "".join(f"/{_token(key)}" for key in reversed(keys)), message)


def _too_deep(node: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether a container at or below ``node`` is nested too deep: values only, no keys."""
    if depth > MAX_NESTING:
        return True
    for child in node.values() if isinstance(node, dict) else node:
        if isinstance(child, _CONTAINERS) and _too_deep(child, depth + 1):
            return True
    return False


def _breach(node: dict[str, Any] | list[Any], depth: int, full: bool) -> _Breach | None:
    """The first breach at or below the container ``node``, ``depth`` levels below the walk's
    start; ``full``: check string and array sizes too (else only nesting)."""
    children: Iterable[tuple[str | int, Any]]
    if isinstance(node, dict):
        children = node.items()
    else:
        if full and len(node) > MAX_ARRAY_ITEMS:
            return [], f"array of more than {MAX_ARRAY_ITEMS} items"
        children = enumerate(node)
    if depth > MAX_NESTING:
        return [], f"nesting deeper than {MAX_NESTING} levels"
    for key, child in children:
        if isinstance(child, _CONTAINERS):
            found = _breach(child, depth + 1, full)
            if found is not None:
                found[0].append(key)
                return found
        elif full and isinstance(child, str) and _string_too_long(child):
            return [key], "string > 100 KB"
    return None


def _string_too_long(value: str) -> bool:
    return len(value) > _SAFE_STRING_CHARS and len(value.encode()) > MAX_STRING_BYTES


def _token(key: str | int) -> str:
    return str(key) if isinstance(key, int) else _escape(key)


def _escape(key: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _check_size(body: JSONObject, size: int | None, limit: int, message: str) -> None:
    if size is None:
        orjson.dumps(body)  # raises the error that made _encoded_size give up
    elif size > limit:
        _fail("", message)


def _fail(pointer: str, message: str) -> None:
    raise LimitViolation(f"{message} at {pointer or '/'}", field=pointer or "/")
