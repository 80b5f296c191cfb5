"""The sandbox against the rest of the relay and against Klaviyo's published schemas.

- Every request the handlers make for the contract examples is accepted over HTTP, one by one
  and batched into Bulk Create Events jobs.
- The sandbox's hand-written checks agree with ``validate.py --strict`` (the published schemas
  plus the documented limits): on handler output for arbitrary events, and on bodies broken in
  each way Klaviyo refuses.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.codec import DecodedEvent
from consumer.errors import EventRejected
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.bulk import build_bulk_jobs
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.plain_json import from_plain_json
from consumer.settings import load_settings
from klaviyo_sandbox import SandboxOptions
from klaviyo_sandbox.validation import (
    validate_bulk_create_events,
    validate_create_event,
    validate_profile_import,
    validate_update_profile,
)
from tests.fixtures.contract import RECORDS, TOPICS
from tests.fixtures.handler_events import datums
from tests.fixtures.klaviyo_schemas import body_errors, operation_for, require_schemas
from tests.fixtures.sandbox import REJECTED, event_body, mutated, sandbox_api, send_plan

EXAMPLES = Path(__file__).resolve().parents[4] / "shared" / "contract" / "examples"
REGISTRY = HandlerRegistry.from_settings(load_settings())
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
# The account is created first, so later events and the email change find its profile.
ORDER = [
    "shop.account.created",
    *sorted(t for t in TOPICS.values() if t != "shop.account.created"),
]
SANDBOX_CHECKS = {
    "create_event": validate_create_event,
    "bulk_create_events": validate_bulk_create_events,
    "update_profile": validate_update_profile,
    "create_or_update_profile": validate_profile_import,
}


def example_plans() -> list[tuple[str, list[KlaviyoRequest]]]:
    if not EXAMPLES.is_dir():
        pytest.skip(f"contract examples not found at {EXAMPLES} (../shared absent)")
    plans = []
    for topic in ORDER:
        record = REGISTRY.record_for(topic)
        plain = json.loads((EXAMPLES / f"{topic}.json").read_text())
        event = DecodedEvent(record, from_plain_json(record, plain))
        plans.append((topic, list(REGISTRY.plan(topic, event, NOW).requests)))
    return plans


async def test_every_handler_request_for_the_examples_is_accepted() -> None:
    plans = example_plans()
    async with sandbox_api(SandboxOptions(seed=3)) as api:
        for topic, requests in plans:
            await send_plan(api, requests)
            assert requests, topic
        stored = (await api.inspect("events?include=dropped"))["data"]
    sent = [
        r.body["data"]["attributes"]
        for _, requests in plans
        for r in requests
        if r.endpoint is Endpoint.CREATE_EVENT and r.body is not None
    ]
    assert [(e["metric"], e["unique_id"]) for e in stored] == [
        (a["metric"]["data"]["attributes"]["name"], a["unique_id"]) for a in sent
    ]


async def test_handler_events_batched_into_bulk_jobs_are_accepted() -> None:
    creates = [
        r
        for _, requests in example_plans()
        for r in requests
        if r.endpoint is Endpoint.CREATE_EVENT
    ]
    jobs = build_bulk_jobs(creates)
    async with sandbox_api() as api:
        for job in jobs:
            reply = await api.call(job.request.method, job.request.target, job.request.body)
            assert reply.status == 202, reply.raw
        stored = (await api.inspect("events"))["data"]
    assert sorted(e["unique_id"] for e in stored) == sorted(
        r.body["data"]["attributes"]["unique_id"] for r in creates if r.body is not None
    )


def sandbox_verdict(operation: str, body: Any) -> list[str]:
    return [p.pointer for p in SANDBOX_CHECKS[operation](body)]


def beyond_the_schema(problem: str, published: list[str]) -> bool:
    """The one rule the sandbox adds to the published material: Klaviyo's API answers
    "Invalid email address" to a malformed email, which the schemas do not describe
    (an over-long email is in the published limits, so it still has to agree)."""
    return problem.endswith("/attributes/email") and not any(
        e.startswith(f"limit {problem}") for e in published
    )


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_sandbox_agrees_with_the_published_schemas_on_handler_output(data: st.DataObject) -> None:
    require_schemas()
    record = data.draw(st.sampled_from(RECORDS))
    datum = data.draw(datums(record))
    topic = TOPICS[record]
    try:
        plan = REGISTRY.plan(topic, DecodedEvent(REGISTRY.record_for(topic), datum), NOW)
    except EventRejected:
        return
    for request in plan.requests:
        for step in (request, request.fallback):
            if step is None or step.body is None:
                continue
            operation = operation_for(step.method, step.path)
            assert operation is not None
            published = body_errors(operation, step.body)
            ours = [
                p
                for p in sandbox_verdict(operation, step.body)
                if not beyond_the_schema(p, published)
            ]
            assert bool(published) == bool(ours), (published, ours, step.body)


@pytest.mark.parametrize(
    "change", [c for _, c, _ in REJECTED], ids=[name for name, _, _ in REJECTED]
)
def test_what_the_sandbox_rejects_the_published_schemas_reject(change: Any) -> None:
    require_schemas()
    body = mutated(event_body(), change)
    assert sandbox_verdict("create_event", body)
    assert body_errors("create_event", body)


def test_the_hand_built_valid_body_is_valid_by_the_published_schemas() -> None:
    require_schemas()
    assert body_errors("create_event", event_body()) == []
    assert sandbox_verdict("create_event", event_body()) == []
