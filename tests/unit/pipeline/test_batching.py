"""Batch mode's job handling (consumer.pipeline.batching) against a fake Bulk Create Events
endpoint that behaves like Klaviyo on the cases that matter: body order is processing order, a
``unique_id`` repeated for the same metric and profile fails the whole request, and some
refusals name no item."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

from consumer.klaviyo.outcomes import Accepted, KlaviyoError, Outcome, Permanent
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.klaviyo.retry import RetryPolicy
from consumer.pipeline.batching import BulkBatcher
from consumer.pipeline.sending import Halt, Sender

MB = 5 * 1024 * 1024


def create_event(
    uid: str, email: str, *, bad: bool = False, pad: int = 0, metric: str = "Placed Order"
) -> KlaviyoRequest:
    attributes: dict[str, Any] = {
        "properties": {"uid": uid, "bad": bad, "note": "x" * pad},
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "time": "2026-03-01T12:00:00+00:00",
        "unique_id": uid,
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
    }
    return KlaviyoRequest(
        Endpoint.CREATE_EVENT, "POST", "/api/events", {"data": {"attributes": attributes}}
    )


class FakeBulkEndpoint:
    """Records what it accepted, in the order Klaviyo would process it."""

    def __init__(self, *, name_bad: bool = False) -> None:
        self.name_bad = name_bad  # point at bad events (source.pointer), or name none
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.processed: list[tuple[str, str]] = []  # (uid, email of the entry's profile)
        self.permits: list[Permit | None] = []  # the place each request came with, if any

    async def send(self, request: KlaviyoRequest, permit: Permit | None = None) -> Outcome:
        assert request.endpoint is Endpoint.BULK_CREATE_EVENTS
        assert request.body is not None
        self.requests += 1
        self.permits.append(permit)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)  # an answer takes a while: let concurrent sends show
        self.in_flight -= 1
        events = [
            (event["attributes"], entry["attributes"]["profile"]["data"]["attributes"]["email"])
            for entry in request.body["data"]["attributes"]["events-bulk-create"]["data"]
            for event in entry["attributes"]["events"]["data"]
        ]
        repeats = [
            (attributes["metric"]["data"]["attributes"]["name"], attributes["unique_id"], email)
            for attributes, email in events
        ]
        if len(set(repeats)) != len(repeats):
            return Permanent(400, (KlaviyoError(400, code="invalid", detail="duplicate"),))
        if self.name_bad:
            pointers = bad_pointers(request.body)
            if pointers:
                errors = tuple(KlaviyoError(400, code="invalid", pointer=p) for p in pointers)
                return Permanent(400, errors)
        if any(attributes["properties"]["bad"] for attributes, _ in events):
            return Permanent(400, (KlaviyoError(400, code="invalid", detail="no pointer"),))
        self.processed.extend((a["unique_id"], email) for a, email in events)
        return Accepted(202)


def bad_pointers(body: Any) -> list[str]:
    """JSON pointers at the bad events of a bulk body, as Klaviyo writes them."""
    base = "/data/attributes/events-bulk-create/data"
    return [
        f"{base}/{g}/attributes/events/data/{e}"
        for g, entry in enumerate(body["data"]["attributes"]["events-bulk-create"]["data"])
        for e, event in enumerate(entry["attributes"]["events"]["data"])
        if event["attributes"]["properties"]["bad"]
    ]


class Sink:
    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.rejected: list[str] = []
        self.duplicates: list[str] = []
        self.dropped: list[str] = []

    def item_accepted(self, token: str, _request: KlaviyoRequest) -> None:
        self.accepted.append(token)

    def item_rejected(
        self,
        token: str,
        _request: KlaviyoRequest,
        _outcome: Permanent,
        _error: KlaviyoError | None,
        _endpoint: Endpoint,
    ) -> None:
        self.rejected.append(token)

    def item_duplicate(self, token: str, _request: KlaviyoRequest) -> None:
        self.duplicates.append(token)

    def withdrawn(self, token: str) -> bool:
        return token in self.rejected  # like the relay: a rejected item dead-letters its event

    def item_dropped(self, token: str, _request: KlaviyoRequest) -> None:
        self.dropped.append(token)

    def item_halted(self, token: str, _request: KlaviyoRequest) -> None:
        raise AssertionError(f"{token}: no account halts here")


async def run_job(
    items: list[tuple[KlaviyoRequest, str, str]], *, max_bytes: int = MB, name_bad: bool = False
) -> tuple[FakeBulkEndpoint, Sink]:
    """Send ``(request, token, order key)`` items as one sealed job and wait for its verdicts."""
    endpoint, sink = FakeBulkEndpoint(name_bad=name_bad), Sink()
    sender = Sender(endpoint.send, RetryPolicy(), Halt(lambda *_: None), rng=random.Random(1))
    tasks: list[asyncio.Task[None]] = []

    def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
        tasks.append(asyncio.create_task(coroutine))

    batcher: BulkBatcher[str] = BulkBatcher(
        sender, sink, spawn, max_events=1000, max_bytes=max_bytes, linger=3600.0
    )
    tickets = {batcher.add(request, token, order) for request, token, order in items}
    batcher.flush()
    await asyncio.gather(*tickets)
    await asyncio.gather(*tasks)
    return endpoint, sink


def per_key(processed: list[tuple[str, str]]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for uid, _email in processed:
        keys.setdefault(uid.split("-")[0], []).append(uid)
    return keys


async def test_a_keys_events_keep_their_order_when_its_profile_changes_back() -> None:
    # Customer k1: A (old email), B (new email), A' (old email again); k2 interleaved.
    items = [
        (create_event("k1-0", "old@example.com"), "k1-0", "k1"),
        (create_event("k2-0", "two@example.com"), "k2-0", "k2"),
        (create_event("k1-1", "new@example.com"), "k1-1", "k1"),
        (create_event("k2-1", "two@example.com"), "k2-1", "k2"),
        (create_event("k1-2", "old@example.com"), "k1-2", "k1"),
    ]
    endpoint, sink = await run_job(items)
    assert endpoint.requests == 1
    assert per_key(endpoint.processed) == {"k1": ["k1-0", "k1-1", "k1-2"], "k2": ["k2-0", "k2-1"]}
    # Each event went out under the profile it was produced with.
    assert set(endpoint.processed) >= {("k1-1", "new@example.com"), ("k1-2", "old@example.com")}
    assert sorted(sink.accepted) == sorted(token for _, token, _ in items)


async def test_a_repeated_unique_id_is_sent_once_and_finishes_as_a_duplicate() -> None:
    items = [
        (create_event("k1-0", "a@example.com"), "first", "k1"),
        (create_event("k2-0", "b@example.com"), "other", "k2"),
        (create_event("k1-0", "a@example.com"), "copy", "k1"),
    ]
    endpoint, sink = await run_job(items)
    assert endpoint.requests == 1  # not failed as a whole, so not resent
    assert [uid for uid, _ in endpoint.processed] == ["k1-0", "k2-0"]
    assert sorted(sink.accepted) == ["first", "other"]
    assert sink.duplicates == ["copy"]
    assert sink.rejected == []


async def test_one_event_id_under_two_metrics_or_profiles_is_no_duplicate() -> None:
    # A captured lead: Became Lead on the lead and New Lead on the representative share the
    # domain event's id; so may two customers' events of one metric. Klaviyo keeps them all.
    items = [
        (create_event("k1-0", "lead@example.com", metric="Became Lead"), "lead", "k1"),
        (create_event("k1-0", "rep@example.com", metric="New Lead"), "lead", "k1"),
        (create_event("k2-0", "a@example.com"), "a", "k2"),
        (create_event("k2-0", "b@example.com"), "b", "k3"),
    ]
    endpoint, sink = await run_job(items)
    assert endpoint.requests == 1
    assert len(endpoint.processed) == 4
    assert sorted(sink.accepted) == ["a", "b", "lead", "lead"]
    assert sink.duplicates == []


async def test_a_repeat_is_one_profile_by_any_shared_identifier() -> None:
    # Klaviyo takes two profile entries sharing an identifier (email, case-insensitive) as
    # one profile: the same metric and unique_id there is one event, sent once.
    items = [
        (create_event("k1-0", "a@example.com"), "first", "k1"),
        (create_event("k1-0", "A@Example.com"), "copy", "k1"),
    ]
    _endpoint, sink = await run_job(items)
    assert sink.accepted == ["first"]
    assert sink.duplicates == ["copy"]


async def test_items_of_a_rejected_event_are_not_sent_any_more() -> None:
    # Event A's first item is bad and Klaviyo names nothing: bisection finds it and A is
    # dead-lettered (replayed whole later), so A's other items must stay out of Klaviyo,
    # handed back as dropped; event B goes through.
    items = [(create_event(f"A-{n}", "a@example.com", bad=n == 0), "A", "A") for n in range(4)]
    items += [(create_event(f"B-{n}", "b@example.com"), "B", "B") for n in range(4)]
    endpoint, sink = await run_job(items)
    assert sink.rejected == ["A"]
    assert sink.dropped == ["A"] * 3
    assert sink.accepted == ["B"] * 4
    assert [uid for uid, _ in endpoint.processed] == [f"B-{n}" for n in range(4)]


async def test_an_anonymous_400_is_narrowed_down_by_bisection() -> None:
    count = 256
    bad = {37, 200}
    items = [
        (
            create_event(f"k{i % 7}-{i:03}", f"c{i % 7}@example.com", bad=i in bad),
            str(i),
            str(i % 7),
        )
        for i in range(count)
    ]
    endpoint, sink = await run_job(items)
    assert sorted(sink.rejected) == sorted(str(i) for i in bad)
    assert sorted(sink.accepted, key=int) == [str(i) for i in range(count) if i not in bad]
    # Two bad events among 256: a few dozen bulk requests, not one per event.
    assert endpoint.requests <= 2 * len(bad) * 8 + 1
    # Halves are sent in order, one after another: each key's events stay in order.
    for uids in per_key(endpoint.processed).values():
        assert uids == sorted(uids)
    assert endpoint.most_in_flight == 1


async def test_a_job_too_big_for_one_request_goes_out_in_order() -> None:
    items = [
        (create_event(f"k{i % 3}-{i:02}", f"c{i % 3}@example.com", pad=3000), str(i), str(i % 3))
        for i in range(30)
    ]
    endpoint, sink = await run_job(items, max_bytes=20_000)
    assert endpoint.requests > 1
    assert endpoint.most_in_flight == 1
    for uids in per_key(endpoint.processed).values():
        assert uids == sorted(uids)
    assert len(sink.accepted) == 30


async def test_events_named_by_pointer_are_rejected_and_the_rest_sent_again_once() -> None:
    items = [
        (
            create_event(f"k{i % 3}-{i}", f"c{i % 3}@example.com", bad=i in {1, 4}),
            str(i),
            str(i % 3),
        )
        for i in range(6)
    ]
    endpoint, sink = await run_job(items, name_bad=True)
    assert endpoint.requests == 2  # the job, then the rest without the named events
    assert sorted(sink.rejected) == ["1", "4"]
    assert sorted(sink.accepted) == ["0", "2", "3", "5"]
    for uids in per_key(endpoint.processed).values():
        assert uids == sorted(uids)


async def test_a_job_of_only_refused_events_rejects_each_and_accepts_none() -> None:
    items = [
        (create_event(f"k{i}-0", f"c{i}@example.com", bad=True), str(i), str(i)) for i in range(4)
    ]
    endpoint, sink = await run_job(items)
    assert sorted(sink.rejected) == ["0", "1", "2", "3"]
    assert sink.accepted == [] and endpoint.processed == []
    assert endpoint.requests == 7  # 4, then 2 + 2, then 1 + 1 + 1 + 1


def idle_batcher(
    endpoint: FakeBulkEndpoint, sink: Sink, spawned: list[asyncio.Task[None]]
) -> BulkBatcher[str]:
    """A batcher whose jobs never linger out during a test (an hour)."""
    sender = Sender(endpoint.send, RetryPolicy(), Halt(lambda *_: None), rng=random.Random(1))

    def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
        spawned.append(asyncio.create_task(coroutine))

    return BulkBatcher(sender, sink, spawn, max_events=1000, max_bytes=MB, linger=3600.0)


async def test_expedite_sends_the_open_job_only_when_it_is_the_awaited_one() -> None:
    endpoint, sink = FakeBulkEndpoint(), Sink()
    spawned: list[asyncio.Task[None]] = []
    batcher = idle_batcher(endpoint, sink, spawned)
    ticket = batcher.add(create_event("k1-0", "a@example.com"), "first", "k1")
    batcher.expedite(asyncio.get_running_loop().create_future())  # another job's ticket
    assert spawned == [] and not ticket.done()
    batcher.expedite(ticket)
    await asyncio.wait_for(ticket, 5)
    await asyncio.gather(*spawned)
    assert sink.accepted == ["first"]
    # The next add opens a new job rather than joining the sent one.
    assert batcher.add(create_event("k1-1", "a@example.com"), "second", "k1") is not ticket


async def test_a_shorter_linger_sends_the_open_job_now() -> None:
    endpoint, sink = FakeBulkEndpoint(), Sink()
    spawned: list[asyncio.Task[None]] = []
    batcher = idle_batcher(endpoint, sink, spawned)
    ticket = batcher.add(create_event("k1-0", "a@example.com"), "first", "k1")
    batcher.set_linger(0.001)
    await asyncio.wait_for(ticket, 5)
    await asyncio.gather(*spawned)
    assert sink.accepted == ["first"] and endpoint.requests == 1


class BulkRoom:
    """Bulk Create Events' "room now" as the relay's limiter answers it (``try_acquire``)."""

    def __init__(self) -> None:
        self.free = False
        self.granted: list[Permit] = []
        self.given_back: list[Permit] = []

    def __call__(self, _rank: int) -> Permit | None:
        if not self.free:
            return None
        self.granted.append(Permit(Endpoint.BULK_CREATE_EVENTS.value, waited=0.0))
        return self.granted[-1]

    def give_back(self, permit: Permit) -> None:
        self.given_back.append(permit)


def room_batcher(
    endpoint: FakeBulkEndpoint,
    sink: Sink,
    spawned: list[asyncio.Task[None]],
    room: BulkRoom,
    *,
    max_events: int = 1000,
) -> BulkBatcher[str]:
    sender = Sender(endpoint.send, RetryPolicy(), Halt(lambda *_: None), rng=random.Random(1))

    def spawn(coroutine: Coroutine[Any, Any, None]) -> None:
        spawned.append(asyncio.create_task(coroutine))

    return BulkBatcher(
        sender,
        sink,
        spawn,
        max_events=max_events,
        max_bytes=MB,
        linger=3600.0,
        room=room,
        give_back=room.give_back,
    )


async def test_a_job_due_without_room_keeps_growing_and_goes_with_the_place_it_waited_for() -> None:
    endpoint, sink, room = FakeBulkEndpoint(), Sink(), BulkRoom()
    spawned: list[asyncio.Task[None]] = []
    batcher = room_batcher(endpoint, sink, spawned, room)
    first = batcher.add(create_event("k1-0", "a@example.com"), "first", "k1")
    batcher.flush()  # due, but the bulk windows are spent: the job stays open
    second = batcher.add(create_event("k2-0", "b@example.com"), "second", "k2")
    assert second is first and batcher.is_open(first) and spawned == []
    room.free = True  # a place frees: the next look finds it
    await first
    await asyncio.gather(*spawned)
    assert endpoint.requests == 1 and sink.accepted == ["first", "second"]
    assert endpoint.permits == room.granted  # sent with the place it waited for, no other
    assert room.given_back == []


async def test_a_full_job_goes_at_once_and_waits_for_the_quota_like_any_request() -> None:
    endpoint, sink, room = FakeBulkEndpoint(), Sink(), BulkRoom()
    spawned: list[asyncio.Task[None]] = []
    batcher = room_batcher(endpoint, sink, spawned, room, max_events=2)
    batcher.add(create_event("k1-0", "a@example.com"), "first", "k1")
    batcher.flush()
    ticket = batcher.add(create_event("k2-0", "b@example.com"), "second", "k2")
    assert not batcher.is_open(ticket)  # full: sealed without room
    await ticket
    assert endpoint.permits == [None] and sink.accepted == ["first", "second"]


async def test_a_place_taken_for_a_job_whose_events_all_gave_up_is_handed_back() -> None:
    endpoint, sink, room = FakeBulkEndpoint(), Sink(), BulkRoom()
    spawned: list[asyncio.Task[None]] = []
    batcher = room_batcher(endpoint, sink, spawned, room)
    room.free = True
    ticket = batcher.add(create_event("k1-0", "a@example.com"), "gone", "k1")
    sink.rejected.append("gone")  # its event was dead-lettered meanwhile
    batcher.flush()
    await ticket
    assert endpoint.requests == 0 and sink.dropped == ["gone"]
    assert room.given_back == room.granted and len(room.granted) == 1
