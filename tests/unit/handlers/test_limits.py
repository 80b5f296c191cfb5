"""Klaviyo's documented limits: each one refused just past it, accepted right at it, and
agreeing with ../shared/klaviyo/validate.py on both sides."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumer.errors import LimitViolation
from consumer.handlers.context import HandlerContext
from consumer.handlers.limits import check_create_event, check_profile_request
from consumer.handlers.orders import order_placed
from tests.fixtures.handler_events import line_item, order, sample
from tests.fixtures.klaviyo_schemas import require_schemas

KB = 1024


def event_body(**attributes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "properties": {},
        "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
        "profile": {"data": {"type": "profile", "attributes": {"external_id": "c-1"}}},
        "time": "2023-10-15T00:00:00+00:00",
        "unique_id": "e-1",
    }
    return {"data": {"type": "event", "attributes": {**base, **attributes}}}


def profile_body(**attributes: Any) -> dict[str, Any]:
    return {"data": {"type": "profile", "id": "01ABC", "attributes": attributes}}


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def time_in(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


# (name, body past the limit, pointer named, body right at the limit)
EVENT_CASES: list[tuple[str, Callable[[], dict[str, Any]], str, Callable[[], dict[str, Any]]]] = [
    (
        "metric name",
        lambda: event_body(metric={"data": {"type": "metric", "attributes": {"name": "M" * 128}}}),
        "/data/attributes/metric/data/attributes/name",
        lambda: event_body(metric={"data": {"type": "metric", "attributes": {"name": "M" * 127}}}),
    ),
    (
        "property count",
        lambda: event_body(properties={f"P{i}": i for i in range(401)}),
        "/data/attributes/properties",
        lambda: event_body(properties={f"P{i}": i for i in range(400)}),
    ),
    (
        "string size",
        lambda: event_body(properties={"Html": "é" * (50 * KB) + "x"}),
        "/data/attributes/properties/Html",
        lambda: event_body(properties={"Html": "é" * (50 * KB)}),
    ),
    (
        "array size",
        lambda: event_body(properties={"Items": list(range(4001))}),
        "/data/attributes/properties/Items",
        lambda: event_body(properties={"Items": list(range(4000))}),
    ),
    (
        "nesting",
        lambda: event_body(properties={"Deep": nested(11)}),
        "/data/attributes/properties/Deep/0/0/0/0/0/0/0/0/0/0",
        lambda: event_body(properties={"Deep": nested(10)}),
    ),
    (
        "empty unique_id",
        lambda: event_body(unique_id=""),
        "/data/attributes/unique_id",
        lambda: event_body(unique_id="u"),
    ),
    (
        "long unique_id",
        lambda: event_body(unique_id="u" * 256),
        "/data/attributes/unique_id",
        lambda: event_body(unique_id="u" * 255),
    ),
    (
        "time before 1990",
        lambda: event_body(time="1989-12-31T23:59:59+00:00"),
        "/data/attributes/time",
        lambda: event_body(time="1990-01-01T00:00:00+00:00"),
    ),
    (
        "time over a year ahead",
        lambda: event_body(time=time_in(timedelta(days=365, hours=1))),
        "/data/attributes/time",
        lambda: event_body(time=time_in(timedelta(days=364))),
    ),
    (
        "payload size",
        lambda: event_body(properties={f"P{i}": "x" * (100 * KB) for i in range(52)}),
        "/",
        lambda: event_body(properties={f"P{i}": "x" * (100 * KB) for i in range(50)}),
    ),
    (
        "profile email length",
        lambda: event_body(
            profile={"data": {"type": "profile", "attributes": {"email": "e" * 95 + "@x.io"}}}
        ),
        "/data/attributes/profile/data/attributes/email",
        lambda: event_body(
            profile={"data": {"type": "profile", "attributes": {"email": "e" * 94 + "@x.io"}}}
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "past", "pointer", "at"), EVENT_CASES, ids=[c[0] for c in EVENT_CASES]
)
def test_create_event_limit(
    name: str,
    past: Callable[[], dict[str, Any]],
    pointer: str,
    at: Callable[[], dict[str, Any]],
) -> None:
    now = datetime.now(UTC)
    body = past()
    with pytest.raises(LimitViolation) as caught:
        check_create_event(body, now)
    assert caught.value.reason == "limit_exceeded"
    assert caught.value.field == pointer
    assert pointer in str(caught.value)
    check_create_event(at(), now)

    kv = require_schemas()
    flagged = kv.limit_errors("create_event", body, len(json.dumps(body).encode()))
    assert flagged, f"validate.py does not see the {name} breach"
    ok = at()
    assert kv.limit_errors("create_event", ok, len(json.dumps(ok).encode())) == []


def test_profile_strings_are_held_to_the_string_limit_too() -> None:
    # Stricter than validate.py, which only walks event properties: Klaviyo's 100 KB string
    # limit is stated for the payload, and profile properties are part of it.
    def with_bio(size: int) -> dict[str, Any]:
        profile = {"type": "profile", "attributes": {"properties": {"Bio": "b" * size}}}
        return event_body(profile={"data": profile})

    with pytest.raises(LimitViolation) as caught:
        check_create_event(with_bio(100 * KB + 1), datetime.now(UTC))
    assert caught.value.field == "/data/attributes/profile/data/attributes/properties/Bio"
    check_create_event(with_bio(100 * KB), datetime.now(UTC))


def test_pointer_escapes_slash_and_tilde_in_keys() -> None:
    body = event_body(properties={"a/b~c": list(range(4001))})
    with pytest.raises(LimitViolation) as caught:
        check_create_event(body, datetime.now(UTC))
    assert caught.value.field == "/data/attributes/properties/a~1b~0c"


def test_profile_request_size_limit() -> None:
    past = profile_body(properties={"A": "x" * (60 * KB), "B": "x" * (41 * KB)})
    with pytest.raises(LimitViolation) as caught:
        check_profile_request(past)
    assert caught.value.field == "/"
    check_profile_request(profile_body(properties={"A": "x" * (60 * KB), "B": "x" * (39 * KB)}))

    kv = require_schemas()
    assert kv.limit_errors("update_profile", past, len(json.dumps(past).encode()))


def test_profile_request_email_length() -> None:
    with pytest.raises(LimitViolation) as caught:
        check_profile_request(profile_body(email="e" * 100))
    assert caught.value.field == "/data/attributes/email"
    check_profile_request(profile_body(email="e" * 99))


def test_handler_refuses_an_order_too_large_for_klaviyo() -> None:
    items = [line_item(categories=["Books"])] * 4001
    datum = sample("OrderPlaced", order=order(items=items))
    with pytest.raises(LimitViolation) as caught:
        order_placed(datum, HandlerContext(now=datetime.now(UTC), default_region="US"))
    assert caught.value.field == "/data/attributes/properties/ItemNames"


def test_handler_refuses_an_event_dated_before_1990() -> None:
    datum = sample("OrderPlaced", occurred_at=datetime(1989, 6, 1, tzinfo=UTC))
    with pytest.raises(LimitViolation) as caught:
        order_placed(datum, HandlerContext(now=datetime.now(UTC), default_region="US"))
    assert caught.value.field == "/data/attributes/time"
