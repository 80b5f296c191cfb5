"""The fast limit walk names exactly the breach the straightforward walk names.

``reference_check_create_event`` is the plain definition (every node visited with its JSON
pointer, each limit tested on each node in document order). The relay's
:func:`check_create_event` skips work the body's JSON size proves unnecessary; on arbitrary
bodies both must agree: both accept, or both refuse naming the same pointer and message. The
limits are also shrunk (string 40 bytes, 5 array items, 3 levels) so random bodies cross them
often, on both sides of the small-body shortcut.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.errors import LimitViolation
from consumer.handlers import limits

NOW = datetime(2024, 3, 1, tzinfo=UTC)


# --- the reference: the definition, written as plainly as possible ----------------------------


def _walk(node: Any, depth: int, pointer: str) -> Iterator[tuple[Any, int, str]]:
    yield node, depth, pointer
    if isinstance(node, dict):
        children: Iterator[tuple[str, Any]] = ((limits._escape(k), v) for k, v in node.items())
    elif isinstance(node, list):
        children = ((str(i), v) for i, v in enumerate(node))
    else:
        return
    for key, child in children:
        nested = depth + 1 if isinstance(child, dict | list) else depth
        yield from _walk(child, nested, f"{pointer}/{key}")


def _reference_tree(node: Any, base: str) -> None:
    for value, depth, pointer in _walk(node, 0, base):
        if isinstance(value, str) and len(value.encode()) > limits.MAX_STRING_BYTES:
            limits._fail(pointer, "string > 100 KB")
        elif isinstance(value, list) and len(value) > limits.MAX_ARRAY_ITEMS:
            limits._fail(pointer, f"array of more than {limits.MAX_ARRAY_ITEMS} items")
        if depth > limits.MAX_NESTING:
            limits._fail(pointer, f"nesting deeper than {limits.MAX_NESTING} levels")


def reference_check_create_event(body: dict[str, Any], now: datetime) -> None:
    base = "/data/attributes"
    attributes = body["data"]["attributes"]
    if len(attributes["metric"]["data"]["attributes"]["name"]) > limits.MAX_METRIC_NAME_CHARS:
        limits._fail(f"{base}/metric/data/attributes/name", "metric name must be < 128 characters")
    if len(attributes["properties"]) > limits.MAX_EVENT_PROPERTIES:
        limits._fail(
            f"{base}/properties", f"more than {limits.MAX_EVENT_PROPERTIES} event properties"
        )
    unique_id = attributes.get("unique_id")
    if unique_id is not None and not (1 <= len(unique_id) <= limits.MAX_UNIQUE_ID_CHARS):
        limits._fail(f"{base}/unique_id", "unique_id must be 1-255 characters")
    if "time" in attributes:
        limits._check_time(attributes["time"], now, f"{base}/time")
    profile_attributes = attributes["profile"]["data"].get("attributes", {})
    email = profile_attributes.get("email")
    if email is not None and len(email) > limits.MAX_EMAIL_CHARS:
        limits._fail(f"{base}/profile/data/attributes/email", "email must be < 100 characters")
    for key, value in profile_attributes.items():
        _reference_tree(value, f"{base}/profile/data/attributes/{limits._escape(key)}")
    _reference_tree(attributes["properties"], f"{base}/properties")
    if len(orjson.dumps(body)) > limits.MAX_EVENT_PAYLOAD_BYTES:
        limits._fail("", "create event payload > 5 MB")


# --- bodies ----------------------------------------------------------------------------------

KEYS = st.text(alphabet="ab/~é", max_size=3)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40,
)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    profile = {
        "email": draw(st.text(max_size=4)) + "@x.io",
        "first_name": draw(SCALARS),
        "location": draw(st.dictionaries(KEYS, JSON, max_size=4)),
        "properties": draw(st.dictionaries(KEYS, JSON, max_size=6)),
    }
    attributes: dict[str, Any] = {
        "properties": draw(st.dictionaries(KEYS, JSON, max_size=10)),
        "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
        "profile": {"data": {"type": "profile", "attributes": profile}},
        "time": "2023-10-15T00:00:00+00:00",
        "unique_id": "e-1",
    }
    if draw(st.booleans()):  # sometimes a long string, so bodies span the small-body shortcut
        attributes["properties"]["Pad"] = "x" * draw(st.integers(0, 300))
    return {"data": {"type": "event", "attributes": attributes}}


def outcome(check: Any, body: dict[str, Any]) -> tuple[str, str] | None:
    try:
        check(body, NOW)
    except LimitViolation as exc:
        assert exc.field is not None
        return exc.field, str(exc)
    return None


@contextmanager
def shrunk_limits() -> Iterator[None]:
    small: dict[str, Any] = {"MAX_STRING_BYTES": 40, "MAX_ARRAY_ITEMS": 5, "MAX_NESTING": 3}
    derived = {
        "_SMALL_BODY_BYTES": min(small["MAX_STRING_BYTES"] + 1, 2 * small["MAX_ARRAY_ITEMS"] + 2),
        "_SAFE_STRING_CHARS": small["MAX_STRING_BYTES"] // 4,
    }
    with mock.patch.multiple(limits, **small, **derived):
        yield


@pytest.mark.parametrize("shrink", [False, True], ids=["documented", "shrunk"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies())
def test_fast_walk_names_what_the_plain_walk_names(shrink: bool, body: dict[str, Any]) -> None:
    if shrink:
        with shrunk_limits():
            assert outcome(limits.check_create_event, body) == outcome(
                reference_check_create_event, body
            )
    else:
        expected = outcome(reference_check_create_event, body)
        assert outcome(limits.check_create_event, body) == expected


def test_derived_thresholds_follow_the_documented_limits() -> None:
    """The shortcut's bounds, restated: a string over the limit, or an array over it, makes
    a body's JSON longer than the small-body bound."""
    # The shortest JSON each breach can have: ASCII, and one-digit items.
    too_long = "x" * (limits.MAX_STRING_BYTES + 1)
    assert len(orjson.dumps(too_long)) > limits._SMALL_BODY_BYTES
    too_many = [0] * (limits.MAX_ARRAY_ITEMS + 1)
    assert len(orjson.dumps(too_many)) > limits._SMALL_BODY_BYTES
    assert len(("\U0001f600" * limits._SAFE_STRING_CHARS).encode()) <= limits.MAX_STRING_BYTES


def test_bodies_orjson_refuses_are_still_walked_in_full() -> None:
    """orjson stops at 255 levels; the walk must still name the first nesting breach."""
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {"Deep": deep},
                "metric": {"data": {"type": "metric", "attributes": {"name": "M"}}},
                "profile": {"data": {"type": "profile", "attributes": {"external_id": "c"}}},
            },
        }
    }
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(body)
    found = outcome(limits.check_create_event, body)
    assert found is not None
    assert found[0] == "/data/attributes/properties/Deep" + "/0" * 10
    assert found == outcome(reference_check_create_event, body)
