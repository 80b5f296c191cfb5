"""Bulk Create Events jobs: grouping by profile, limits on the serialised bytes, 400 → items."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.klaviyo.bulk import BULK_PATH, BulkJob, bad_items, build_bulk_jobs
from consumer.klaviyo.client import KlaviyoClient, encode_body
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.settings import load_settings

SCHEMAS = Path(__file__).resolve().parents[4] / "shared" / "klaviyo" / "request-schemas.json"


def event(i: int, email: str, *, pad: int = 0, metric: str = "Order Placed") -> KlaviyoRequest:
    attributes: dict[str, Any] = {
        "properties": {"order_id": f"o-{i}", "note": "x" * pad},
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "time": "2026-03-01T12:00:00+00:00",
        "value": 10.5,
        "unique_id": f"evt-{i}",
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
    }
    body = {"data": {"type": "event", "attributes": attributes}}
    return KlaviyoRequest(Endpoint.CREATE_EVENT, "POST", "/api/events", body)


def entries(job: BulkJob) -> list[dict[str, Any]]:
    assert job.request.body is not None
    result: list[dict[str, Any]] = job.request.body["data"]["attributes"]["events-bulk-create"][
        "data"
    ]
    return result


def job_bytes(job: BulkJob) -> int:
    return len(encode_body(job.request.body))


def check_positions(job: BulkJob, inputs: list[KlaviyoRequest]) -> None:
    """groups[g][e] names the input whose event sits at data/g/.../events/data/e."""
    body_entries = entries(job)
    assert len(body_entries) == len(job.groups)
    for entry, indexes in zip(body_entries, job.groups, strict=True):
        events = entry["attributes"]["events"]["data"]
        assert len(events) == len(indexes)
        for bulk_event, index in zip(events, indexes, strict=True):
            body = inputs[index].body
            assert body is not None
            original = dict(body["data"]["attributes"])
            profile = original.pop("profile")
            assert entry["attributes"]["profile"] == profile
            assert bulk_event == {"type": "event", "attributes": original}


def test_groups_events_under_their_profile_in_input_order() -> None:
    emails = ["a@example.com", "b@example.com", "a@example.com", "c@example.com", "b@example.com"]
    inputs = [event(i, email) for i, email in enumerate(emails)]
    [job] = build_bulk_jobs(inputs)
    assert job.request.endpoint is Endpoint.BULK_CREATE_EVENTS
    assert (job.request.method, job.request.path) == ("POST", BULK_PATH)
    assert job.groups == [[0, 2], [1, 4], [3]]
    assert job.items == [0, 2, 1, 4, 3]
    check_positions(job, inputs)


def test_a_key_whose_profile_changes_back_gets_a_new_entry_not_an_earlier_one() -> None:
    # Customer k1: old email, new email, old email again; k2 shares nothing with it.
    emails = ["old@example.com", "k2@example.com", "new@example.com", "old@example.com"]
    keys = ["k1", "k2", "k1", "k1"]
    inputs = [event(i, email) for i, email in enumerate(emails)]
    [job] = build_bulk_jobs(inputs, order_keys=keys)
    assert job.groups == [[0], [1], [2], [3]]  # k1's third event may not join entry 0
    check_positions(job, inputs)
    # Another key's event may still join an earlier entry of the same profile.
    [job] = build_bulk_jobs([*inputs, event(4, "k2@example.com")], order_keys=[*keys, "k2"])
    assert job.groups == [[0], [1, 4], [2], [3]]


def test_jobs_validate_against_klaviyo_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMAS.exists():
        pytest.skip(f"shared Klaviyo schemas not found at {SCHEMAS}")
    schema = json.loads(SCHEMAS.read_text())["operations"]["bulk_create_events"]["schema"]
    inputs = [event(i, f"p{i % 7}@example.com") for i in range(40)]
    for job in build_bulk_jobs(inputs, max_events=15):
        jsonschema.Draft202012Validator(schema).validate(job.request.body)


def test_event_count_limit() -> None:
    inputs = [event(i, f"p{i % 3}@example.com") for i in range(2500)]
    jobs = build_bulk_jobs(inputs)
    assert [len(job.items) for job in jobs] == [1000, 1000, 500]
    assert sorted(i for job in jobs for i in job.items) == list(range(2500))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=900), min_size=1, max_size=40),
    profiles=st.integers(min_value=1, max_value=5),
    max_bytes=st.integers(min_value=1200, max_value=6000),
    max_events=st.integers(min_value=1, max_value=12),
)
def test_byte_and_count_limits_on_serialised_bodies(
    sizes: list[int], profiles: int, max_bytes: int, max_events: int
) -> None:
    inputs = [event(i, f"p{i % profiles}@example.com", pad=n) for i, n in enumerate(sizes)]
    jobs = build_bulk_jobs(inputs, max_events=max_events, max_bytes=max_bytes)
    # Every input exactly once, in input order across jobs.
    assert sorted(i for job in jobs for i in job.items) == list(range(len(inputs)))
    assert [min(job.items) for job in jobs] == sorted(min(job.items) for job in jobs)
    for number, job in enumerate(jobs):
        check_positions(job, inputs)
        assert len(job.items) <= max_events
        assert job_bytes(job) <= max_bytes or len(job.items) == 1
        if number + 1 < len(jobs):
            # Greedy and maximal: the next input would have broken a limit.
            grown = [inputs[i] for i in sorted(job.items)] + [inputs[max(job.items) + 1]]
            [bigger] = build_bulk_jobs(grown, max_events=10**6, max_bytes=10**9)
            assert len(grown) > max_events or job_bytes(bigger) > max_bytes


def test_an_oversized_event_gets_a_job_of_its_own() -> None:
    inputs = [event(0, "a@example.com"), event(1, "a@example.com", pad=5000), event(2, "b@x.io")]
    jobs = build_bulk_jobs(inputs, max_bytes=2000)
    assert [job.items for job in jobs] == [[0], [1], [2]]


def test_rejects_requests_that_are_not_create_event() -> None:
    profile = KlaviyoRequest(Endpoint.UPDATE_PROFILE, "PATCH", "/api/profiles/1", {"data": {}})
    with pytest.raises(ValueError, match="not a Create Event"):
        build_bulk_jobs([profile])


def test_bad_items_maps_pointers_back_to_inputs() -> None:
    emails = ["a@x.io", "b@x.io", "a@x.io", "c@x.io", "b@x.io"]
    job = build_bulk_jobs([event(i, e) for i, e in enumerate(emails)])[0]
    base = "/data/attributes/events-bulk-create/data"
    on_event = KlaviyoError(400, "invalid", pointer=f"{base}/1/attributes/events/data/1/attributes")
    on_profile = KlaviyoError(400, "bad_email", pointer=f"{base}/2/attributes/profile/data")
    elsewhere = KlaviyoError(400, "x", pointer="/data/attributes/other")
    no_pointer = KlaviyoError(400, "y", parameter="filter")
    outside = KlaviyoError(400, "z", pointer=f"{base}/9/attributes/events/data/0")
    found = bad_items(job, Permanent(400, (on_event, on_profile, elsewhere, no_pointer, outside)))
    # groups: a → [0, 2], b → [1, 4], c → [3]
    assert found == {4: on_event, 3: on_profile}


async def test_sandbox_bulk_400_pointers_identify_the_bad_items() -> None:
    sandbox_server = pytest.importorskip("klaviyo_sandbox.server")
    sandbox_app = pytest.importorskip("klaviyo_sandbox.app")
    inputs = [event(i, f"p{i % 3}@example.com") for i in range(9)]
    # Two events with a metric name Klaviyo refuses (over 128 characters).
    bad = {2, 7}
    inputs = [
        event(i, f"p{i % 3}@example.com", metric="m" * 200) if i in bad else r
        for i, r in enumerate(inputs)
    ]
    [job] = build_bulk_jobs(inputs)
    async with sandbox_server.running_sandbox(sandbox_app.SandboxOptions()) as sb:
        settings = load_settings(
            klaviyo_api_key="pk_sandbox", klaviyo_base_url=sb.base_url, retry_max_attempts=1
        )
        async with KlaviyoClient(settings) as client:
            outcome = await client.send(job.request)
    assert isinstance(outcome, Permanent) and outcome.status == 400
    assert set(bad_items(job, outcome)) == bad
