"""Building Create Event requests: the body shape every handler shares.

Kept in one place so the guide's traps are handled once: ``time`` always carries a UTC offset,
profile properties sit under ``profile.data.attributes.properties`` (see
:mod:`consumer.handlers.profiles`), null values are left out, and every body is checked against
Klaviyo's limits before it leaves the handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from consumer.handlers.context import HandlerContext
from consumer.handlers.limits import check_create_event
from consumer.handlers.profiles import build_profile
from consumer.handlers.values import compact, number
from consumer.klaviyo.requests import Endpoint, JSONObject, KlaviyoRequest, Plan
from consumer.rfc3339 import format_rfc3339

CREATE_EVENT_PATH = "/api/events"


def create_event(
    *,
    metric: str,
    properties: Mapping[str, Any],
    profile: JSONObject,
    occurred_at: datetime,
    unique_id: str,
    now: datetime,
    value: Decimal | None = None,
    value_currency: str | None = None,
    backfill: bool = False,
) -> KlaviyoRequest:
    """One Create Event request; raises ``LimitViolation`` if it breaks a documented limit.

    ``profile`` is the ``{"data": {...}}`` object of a :class:`~.profiles.Profile`.
    ``backfill``: Klaviyo records the event without triggering flows (a replayed old event);
    the attribute is only sent when true, like every other optional field.
    """
    attributes = compact(
        {
            "properties": compact(properties),
            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
            "profile": profile,
            "time": format_rfc3339(occurred_at),
            "value": None if value is None else number(value),
            "value_currency": value_currency,
            "unique_id": unique_id,
            "backfill": True if backfill else None,
        }
    )
    body: JSONObject = {"data": {"type": "event", "attributes": attributes}}
    check_create_event(body, now)
    return KlaviyoRequest(Endpoint.CREATE_EVENT, "POST", CREATE_EVENT_PATH, body)


def person_event(
    datum: Mapping[str, Any],
    context: HandlerContext,
    *,
    metric: str,
    person: Mapping[str, Any],
    field: str,
    properties: Mapping[str, Any],
    profile_properties: Mapping[str, Any] | None = None,
    value: Decimal | None = None,
    value_currency: str | None = None,
) -> Plan:
    """The usual plan: one event of ``metric`` on ``person`` (the datum's Customer at
    ``field``), timed and deduplicated by the domain event itself."""
    profile = build_profile(person, context, field=field, properties=profile_properties)
    request = create_event(
        metric=metric,
        properties=properties,
        profile=profile.resource,
        occurred_at=datum["occurred_at"],
        unique_id=datum["event_id"],
        now=context.now,
        value=value,
        value_currency=value_currency,
        backfill=context.backfill,
    )
    return Plan((request,), profile.warnings)
