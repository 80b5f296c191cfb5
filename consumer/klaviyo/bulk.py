"""Batching Create Event requests into Bulk Create Events jobs, and reading a job's 400 back.

Klaviyo's bulk body groups events under their profile::

    {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": [
        {"type": "event-bulk-create", "attributes": {
            "profile": {"data": {...}},
            "events": {"data": [{"type": "event", "attributes": {...}}, ...]}}},
        ...]}}}}

A job holds at most 1,000 events and 5 MB, measured on the serialised bytes the client sends.
Each job remembers which input index sits at which ``(profile entry, event)`` position, so a
400 whose ``source.pointer`` names ``.../data/3/attributes/events/data/0/...`` can be traced
back to the one bad input event (the rest of the job can then be resent without it).

Klaviyo takes a job's events in body order, and grouping reorders: one customer's events A,
B, A′ (its profile changed at B and back at A′) would go out as A, A′, B, and a stale profile
would win. So an event joins an existing profile entry only when no event of its own *order
key* (the Kafka record key) sits in a later entry; otherwise it opens a new entry.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.klaviyo.client import encode_body
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.klaviyo.requests import Endpoint, JSONObject, KlaviyoRequest
from consumer.priorities import DEFAULT_RANK

BULK_PATH = "/api/event-bulk-create-jobs"
MAX_EVENTS = 1000
MAX_BYTES = 5 * 1024 * 1024

# Pointer into a bulk body: the profile entry, and the event inside it when named.
_POINTER = re.compile(
    r"^/data/attributes/events-bulk-create/data/(\d+)(?:/attributes/events/data/(\d+))?(?:/|$)"
)


@dataclass(frozen=True, slots=True)
class BulkJob:
    request: KlaviyoRequest
    items: list[int]  # input indexes in this job, in body order
    groups: list[list[int]]  # input indexes per profile entry: groups[g][e] is at data/g/.../e


def _job_body(entries: list[JSONObject]) -> JSONObject:
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {"events-bulk-create": {"data": entries}},
        }
    }


def _profile_entry(profile: Any, events: list[JSONObject]) -> JSONObject:
    return {
        "type": "event-bulk-create",
        "attributes": {"profile": {"data": profile}, "events": {"data": events}},
    }


# Bytes the shells add around their contents (orjson writes no whitespace, so sizes add up).
_JOB_OVERHEAD = len(encode_body(_job_body([])))
_ENTRY_OVERHEAD = len(encode_body(_profile_entry({}, []))) - len(b"{}")


def _split(request: KlaviyoRequest) -> tuple[Any, JSONObject]:
    """A Create Event request → (its profile ``data``, the bulk ``event`` resource)."""
    if request.endpoint is not Endpoint.CREATE_EVENT or request.body is None:
        raise ValueError(f"not a Create Event request: {request.endpoint.value}")
    # Everything but the profile stays on the event, ``backfill`` included: the bulk schema
    # takes it per event (as well as per profile entry), so a replayed old event keeps it here.
    attributes = dict(request.body["data"]["attributes"])
    profile = attributes.pop("profile")["data"]
    return profile, {"type": "event", "attributes": attributes}


@dataclass
class _Entry:
    profile: Any
    events: list[JSONObject] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)


class _JobBuilder:
    def __init__(self, max_events: int, max_bytes: int) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._entries: list[_Entry] = []
        self._newest: dict[bytes, int] = {}  # serialised profile → its latest entry
        self._latest: dict[Hashable, int] = {}  # order key → the entry of its latest event
        self.count = 0
        self.size = _JOB_OVERHEAD
        # A job waits for the quota as its most urgent event would: an urgent event batched
        # with lead tracking must not wait behind other jobs of lead tracking.
        self.priority: int | None = None

    def entry_for(self, key: bytes, order: Hashable) -> int | None:
        """The entry an event of profile ``key`` may join without passing an earlier event of
        its order key, or None (it needs a new entry)."""
        entry = self._newest.get(key)
        if entry is None:
            return None
        latest = self._latest.get(order)
        return entry if latest is None or latest <= entry else None

    def cost(self, key: bytes, event_size: int, entry: int | None) -> int:
        """Bytes one more event adds (with its profile entry when that is new)."""
        if entry is not None:
            return 1 + event_size  # "," + event
        separator = 1 if self._entries else 0
        return separator + _ENTRY_OVERHEAD + len(key) + event_size

    def fits(self, cost: int) -> bool:
        return self.count < self._max_events and self.size + cost <= self._max_bytes

    def add(
        self,
        index: int,
        entry: int | None,
        *,
        key: bytes,
        order: Hashable,
        profile: Any,
        event: JSONObject,
        cost: int,
        priority: int,
    ) -> None:
        if entry is None:
            entry = len(self._entries)
            self._entries.append(_Entry(profile))
            self._newest[key] = entry
        self._entries[entry].events.append(event)
        self._entries[entry].indexes.append(index)
        self._latest[order] = entry
        self.count += 1
        self.size += cost
        self.priority = priority if self.priority is None else min(self.priority, priority)

    def build(self) -> BulkJob:
        entries = self._entries
        body = _job_body([_profile_entry(e.profile, e.events) for e in entries])
        groups = [e.indexes for e in entries]
        priority = DEFAULT_RANK if self.priority is None else self.priority
        request = KlaviyoRequest(
            Endpoint.BULK_CREATE_EVENTS, "POST", BULK_PATH, body=body, priority=priority
        )
        return BulkJob(
            request=request,
            items=[index for group in groups for index in group],
            groups=groups,
        )


def build_bulk_jobs(
    events: Sequence[KlaviyoRequest],
    max_events: int = MAX_EVENTS,
    max_bytes: int = MAX_BYTES,
    order_keys: Sequence[Hashable] | None = None,
) -> list[BulkJob]:
    """Pack Create Event requests, in order, into as few bulk jobs as the limits allow.

    Events of one profile share one profile entry within a job, as long as that keeps the
    events of each order key (``order_keys[i]`` for ``events[i]``; None: no order between any
    of them) in input order. An event that alone exceeds ``max_bytes`` still gets a job of its
    own: Klaviyo's 413 then names exactly that event.
    """
    jobs: list[BulkJob] = []
    builder = _JobBuilder(max_events, max_bytes)
    # The events of one plan share one profile object (Placed Order and its Ordered Products):
    # serialise it once. ``id`` is safe as a key while ``events`` keeps every profile alive.
    encoded: dict[int, bytes] = {}
    for index, request in enumerate(events):
        profile, event = _split(request)
        # The profile's serialised form is both its identity and its size.
        key = encoded.get(id(profile))
        if key is None:
            key = encoded[id(profile)] = encode_body(profile)
        event_size = len(encode_body(event))
        order = index if order_keys is None else order_keys[index]
        entry = builder.entry_for(key, order)
        cost = builder.cost(key, event_size, entry)
        if builder.count and not builder.fits(cost):
            jobs.append(builder.build())
            builder = _JobBuilder(max_events, max_bytes)
            entry = None
            cost = builder.cost(key, event_size, entry)
        builder.add(
            index,
            entry,
            key=key,
            order=order,
            profile=profile,
            event=event,
            cost=cost,
            priority=request.priority,
        )
    if builder.count:
        jobs.append(builder.build())
    return jobs


# The profile attributes that identify a profile in an event request (besides its ``id``).
_IDENTIFIERS = ("email", "phone_number", "external_id", "anonymous_id", "_kx")

RepeatKey = tuple[str, str, str, str]  # (metric, unique_id, identifier name, its value)


def repeat_keys(request: KlaviyoRequest) -> list[RepeatKey]:
    """What makes two Create Event requests *one* event to Klaviyo: the same metric and
    ``unique_id`` for the same profile (two profiles sharing any identifier are one). Such a
    pair in one bulk request fails it whole; sent apart, Klaviyo records the event once. Two
    requests are a repeat when they share a key. Empty without a ``unique_id`` (Klaviyo then
    dedups on the time, which never fails a request).

    The ``unique_id`` alone is not enough: one domain event may become several Klaviyo events
    with the same id and different metrics or profiles (Became Lead and New Lead).
    """
    attributes = (request.body or {}).get("data", {}).get("attributes", {})
    unique_id = attributes.get("unique_id")
    if not isinstance(unique_id, str):
        return []
    metric = attributes["metric"]["data"]["attributes"]["name"]
    profile = attributes["profile"]["data"]
    found = [("id", profile["id"])] if isinstance(profile.get("id"), str) else []
    values = profile.get("attributes") or {}
    for name in _IDENTIFIERS:
        value = values.get(name)
        if isinstance(value, str) and value:
            found.append((name, value.lower() if name == "email" else value))
    return [(metric, unique_id, name, value) for name, value in found]


def bad_items(job: BulkJob, outcome: Permanent) -> dict[int, KlaviyoError]:
    """Input index → the error that names it, from each error's ``source.pointer``.

    A pointer at a profile entry (not one event) marks every event of that entry. Errors
    that point nowhere inside the job are left out: the caller cannot pin them on one event.
    """
    found: dict[int, KlaviyoError] = {}
    for error in outcome.errors:
        match = _POINTER.match(error.pointer or "")
        if match is None:
            continue
        group, event = int(match.group(1)), match.group(2)
        if group >= len(job.groups):
            continue
        indexes = job.groups[group]
        if event is not None:
            position = int(event)
            indexes = indexes[position : position + 1]
        for index in indexes:
            found.setdefault(index, error)
    return found
