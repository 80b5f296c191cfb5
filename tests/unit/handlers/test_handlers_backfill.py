"""Backfill: a replayed old event's Create Events carry ``"backfill": true`` (so Klaviyo records
them without firing flows again), in single requests and in bulk jobs; other events never carry
the attribute at all (null fields are never sent)."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.codec import DecodedEvent
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.bulk import build_bulk_jobs
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.settings import load_settings
from tests.fixtures.contract import RECORDS, TOPICS
from tests.fixtures.handler_events import NOW, sample
from tests.fixtures.klaviyo_schemas import assert_valid_request, body_errors


def plan_requests(record: str, **kwargs: Any) -> tuple[KlaviyoRequest, ...]:
    registry = HandlerRegistry.from_settings(load_settings())
    event = DecodedEvent(f"shop.events.{record}", sample(record))
    return registry.plan(TOPICS[record], event, NOW, **kwargs).requests


def events_of(requests: tuple[KlaviyoRequest, ...]) -> list[dict[str, Any]]:
    out = []
    for request in requests:
        if request.endpoint is Endpoint.CREATE_EVENT:
            assert request.body is not None
            out.append(request.body["data"]["attributes"])
    return out


@pytest.mark.parametrize("record", RECORDS)
def test_backfill_marks_every_create_event_of_every_record(record: str) -> None:
    requests = plan_requests(record, backfill=True)
    events = events_of(requests)
    assert events, "every record yields at least one Create Event"
    assert all(attributes["backfill"] is True for attributes in events)
    for request in requests:
        assert_valid_request(request)


@pytest.mark.parametrize("record", RECORDS)
def test_without_backfill_the_attribute_is_absent(record: str) -> None:
    for kwargs in ({}, {"backfill": False}):
        assert all("backfill" not in a for a in events_of(plan_requests(record, **kwargs)))


@pytest.mark.parametrize("record", RECORDS)
def test_backfill_changes_nothing_else(record: str) -> None:
    plain = plan_requests(record)
    marked = plan_requests(record, backfill=True)
    assert len(plain) == len(marked)
    for before, after in zip(plain, marked, strict=True):
        assert (before.endpoint, before.method, before.path) == (
            after.endpoint,
            after.method,
            after.path,
        )
        if after.endpoint is Endpoint.CREATE_EVENT:
            assert after.body is not None
            attributes = dict(after.body["data"]["attributes"])
            del attributes["backfill"]
            assert {"data": {**after.body["data"], "attributes": attributes}} == before.body
        else:  # profile steps have no backfill notion
            assert after.body == before.body


def test_bulk_jobs_keep_each_events_backfill_flag() -> None:
    """A bulk job mixes replayed and live events: the flag rides on each event, not the job."""
    marked = list(plan_requests("OrderPlaced", backfill=True))
    live = list(plan_requests("PaymentFailed"))
    inputs = [*marked, *live]
    [job] = build_bulk_jobs(inputs)
    assert job.request.body is not None
    assert body_errors("bulk_create_events", job.request.body) == []
    entries = job.request.body["data"]["attributes"]["events-bulk-create"]["data"]
    flags: dict[int, Any] = {}
    for entry, indexes in zip(entries, job.groups, strict=True):
        assert "backfill" not in entry["attributes"]
        for bulk_event, index in zip(entry["attributes"]["events"]["data"], indexes, strict=True):
            flags[index] = bulk_event["attributes"].get("backfill")
    assert flags == {i: (True if i < len(marked) else None) for i in range(len(inputs))}
