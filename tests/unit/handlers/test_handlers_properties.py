"""Property test: for arbitrary valid events of every record, each request built validates
against Klaviyo's published schemas and limits, or the handler refused the event with the
typed error that explains why."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consumer.codec import DecodedEvent
from consumer.errors import (
    ExpiredEvent,
    LimitViolation,
    MalformedEvent,
    NoIdentifier,
)
from consumer.handlers.profiles import e164
from consumer.handlers.registry import HandlerRegistry
from consumer.settings import load_settings
from tests.fixtures.contract import RECORDS, TOPICS
from tests.fixtures.handler_events import datums, within_time_limits
from tests.fixtures.klaviyo_schemas import assert_valid_request, require_schemas

REGISTRY = HandlerRegistry.from_settings(load_settings())


def people(datum: dict[str, Any]) -> list[dict[str, Any]]:
    return [datum[k] for k in ("customer", "lead", "representative") if datum.get(k)]


def emails(datum: dict[str, Any]) -> list[str]:
    found = [p["email"] for p in people(datum) if p.get("email")]
    return found + [datum[k] for k in ("old_email", "new_email") if datum.get(k)]


def phone(person: dict[str, Any]) -> str | None:
    return e164(person["phone_number"], "US") if person.get("phone_number") else None


def explains(error: Exception, datum: dict[str, Any], now: datetime) -> bool:
    """Whether the event really is one the contract or Klaviyo's limits refuse."""
    if isinstance(error, ExpiredEvent):
        return datum["expires_at"] is not None and datum["expires_at"] <= now
    if isinstance(error, NoIdentifier):
        return any(
            not (p.get("klaviyo_profile_id") or p.get("email") or p["customer_id"] or phone(p))
            for p in people(datum)
        )
    if isinstance(error, MalformedEvent):
        values = [v for c in datum.get("changes", ()) for v in (c["old_value"], c["new_value"])]
        return datum.get("new_email") == "" or any(
            isinstance(v, float) and not math.isfinite(v) for v in values
        )
    if isinstance(error, LimitViolation):
        assert error.field is not None
        if error.field.endswith("/time"):
            return not within_time_limits(datum["occurred_at"], now)
        if error.field.endswith("/email"):
            return any(len(e) >= 100 for e in emails(datum))
    return False


@pytest.mark.parametrize("record", RECORDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_body_is_valid_or_the_refusal_is_typed_and_true(record: str, data: Any) -> None:
    require_schemas()
    datum = data.draw(datums(record))
    now = datetime.now(UTC)
    try:
        plan = REGISTRY.plan(TOPICS[record], DecodedEvent(f"shop.events.{record}", datum), now)
    except (ExpiredEvent, LimitViolation, MalformedEvent, NoIdentifier) as error:
        assert explains(error, datum, now), (type(error).__name__, error.field, str(error))
        event(f"refused: {type(error).__name__}")
        return
    event("sent")
    assert plan.requests
    for request in plan.requests:
        assert_valid_request(request)
        if request.needs():
            assert_valid_request(request.bind({name: "01FOUND" for name in request.needs()}))
    unique_ids = [
        (
            r.body["data"]["attributes"]["metric"]["data"]["attributes"]["name"],
            r.body["data"]["attributes"]["unique_id"],
        )
        for r in plan.requests
        if r.path == "/api/events" and r.body is not None
    ]
    assert len(set(unique_ids)) == len(unique_ids), "two events of one metric share a unique_id"
