"""Auto mode: the routing rule on its own (pure), then the relay's core with Klaviyo faked
(tests/fixtures/fakes.py): realtime while Create Event has room, bulk when it has none or the
event is stale, back to realtime when room returns, and a key's order across the two paths."""

from __future__ import annotations

import dataclasses
import time

from consumer.klaviyo.outcomes import Accepted, Outcome, Retryable
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.observability.metrics import REGISTRY
from consumer.pipeline.delivery.auto import Breaker, Route, Why, route
from consumer.priorities import PriorityClass
from consumer.settings import SendMode, Settings
from tests.fixtures.fakes import Gate, emails, until
from tests.unit.pipeline.test_relay_core import P0, offsets_in, record, running

# --- the rule --------------------------------------------------------------------------------


class Room:
    """A ``take_room`` that counts how often it was asked; ``beyond_reserve``: whether it grants
    a request that must leave the reserve (by default as any other)."""

    def __init__(self, grant: bool, beyond_reserve: bool | None = None) -> None:
        self.grant = grant
        self.reserve_room = grant if beyond_reserve is None else beyond_reserve
        self.asked = 0
        self.beyond_reserve: list[bool] = []

    def __call__(self, beyond_reserve: bool) -> str | None:
        self.asked += 1
        self.beyond_reserve.append(beyond_reserve)
        return "permit" if (self.reserve_room if beyond_reserve else self.grant) else None


def test_a_fresh_event_with_room_goes_realtime_with_the_permit_taken() -> None:
    room = Room(grant=True)
    chosen = route(waited=0.1, max_wait=2.0, joins_open_job=False, take_room=room)
    assert chosen == Route(Why.ROOM, "permit")
    assert chosen.path == "realtime"


def test_an_event_waited_exactly_the_bound_is_still_fresh() -> None:
    chosen = route(waited=2.0, max_wait=2.0, joins_open_job=False, take_room=Room(grant=True))
    assert chosen.path == "realtime"


def test_no_room_sends_a_fresh_event_to_bulk() -> None:
    chosen = route(waited=0.0, max_wait=2.0, joins_open_job=False, take_room=Room(grant=False))
    assert (chosen.path, chosen.reason) == ("bulk", Why.QUOTA)


def test_a_stale_event_goes_to_bulk_without_taking_a_place() -> None:
    room = Room(grant=True)
    chosen = route(waited=2.5, max_wait=2.0, joins_open_job=False, take_room=room)
    assert (chosen.path, chosen.reason) == ("bulk", Why.STALE)
    assert room.asked == 0


def test_an_urgent_event_is_never_stale_it_takes_create_event_when_that_has_room() -> None:
    # A reset that waited behind its key gained nothing from a bulk job's linger and processing.
    chosen = route(
        waited=2.5, max_wait=2.0, joins_open_job=False, take_room=Room(True), urgent=True
    )
    assert (chosen.path, chosen.reason) == ("realtime", Why.ROOM)
    no_room = route(
        waited=2.5, max_wait=2.0, joins_open_job=False, take_room=Room(False), urgent=True
    )
    assert (no_room.path, no_room.reason) == ("bulk", Why.LATE)


def test_a_late_urgent_event_takes_only_room_beyond_the_reserve_kept_for_fresh_ones() -> None:
    # Room left only within the reserve: the late reset goes into a bulk job, the fresh takes it.
    within_reserve = Room(grant=True, beyond_reserve=False)
    late = route(
        waited=2.5, max_wait=2.0, joins_open_job=False, take_room=within_reserve, urgent=True
    )
    assert (late.path, late.reason) == ("bulk", Why.LATE)
    fresh = route(
        waited=0.1, max_wait=2.0, joins_open_job=False, take_room=within_reserve, urgent=True
    )
    assert (fresh.path, fresh.reason) == ("realtime", Why.ROOM)
    assert within_reserve.beyond_reserve == [True, False]


def test_an_event_produced_longer_ago_than_the_bound_is_late_though_just_taken() -> None:
    # An outage's backlog still in Kafka is taken at the recovery: minutes old, "fresh" to the
    # relay. By its record's age it is late: an urgent one keeps to the room beyond the reserve,
    # any other goes into a bulk job without taking a place.
    urgent_room = Room(grant=True, beyond_reserve=False)
    chosen = route(
        waited=0.0,
        max_wait=2.0,
        joins_open_job=False,
        take_room=urgent_room,
        urgent=True,
        age=180.0,
    )
    assert (chosen.path, chosen.reason) == ("bulk", Why.LATE)
    assert urgent_room.beyond_reserve == [True]
    other_room = Room(grant=True)
    stale = route(waited=0.0, max_wait=2.0, joins_open_job=False, take_room=other_room, age=180.0)
    assert (stale.path, stale.reason) == ("bulk", Why.STALE)
    assert other_room.asked == 0


def test_fresh_events_of_every_class_may_use_the_whole_window() -> None:
    for urgent in (False, True):
        room = Room(grant=True, beyond_reserve=False)
        chosen = route(
            waited=0.5, max_wait=2.0, joins_open_job=False, take_room=room, urgent=urgent, age=1.9
        )
        assert chosen.reason is Why.ROOM
        assert room.beyond_reserve == [False]


def test_an_urgent_event_keeps_its_keys_order_and_the_breaker() -> None:
    joins = route(waited=0.0, max_wait=2.0, joins_open_job=True, take_room=Room(True), urgent=True)
    assert joins.reason is Why.ORDER
    failing = route(
        waited=0.0,
        max_wait=2.0,
        joins_open_job=False,
        take_room=Room(True),
        failing=True,
        urgent=True,
    )
    assert failing.reason is Why.FAILING


def test_an_event_behind_its_keys_open_job_joins_it_without_taking_a_place() -> None:
    room = Room(grant=True)
    chosen = route(waited=0.0, max_wait=2.0, joins_open_job=True, take_room=room)
    assert (chosen.path, chosen.reason) == ("bulk", Why.ORDER)
    assert room.asked == 0


def test_while_create_event_is_failing_a_fresh_event_goes_to_bulk_without_taking_a_place() -> None:
    room = Room(grant=True)
    chosen = route(waited=0.0, max_wait=2.0, joins_open_job=False, take_room=room, failing=True)
    assert (chosen.path, chosen.reason) == ("bulk", Why.FAILING)
    assert room.asked == 0


def test_a_key_behind_its_open_job_keeps_joining_it_while_create_event_is_failing() -> None:
    chosen = route(
        waited=0.0, max_wait=2.0, joins_open_job=True, take_room=Room(True), failing=True
    )
    assert chosen.reason is Why.ORDER


def test_the_breaker_is_closed_until_a_realtime_send_falls_over() -> None:
    breaker = Breaker(rest=5.0)
    breaker.sent()  # sends while closed are no probes
    assert not breaker.failing(0.0)
    assert breaker.fell_over(10.0)  # it opened
    assert breaker.failing(14.9)
    assert not breaker.fell_over(11.0)  # already open: no second warning


def test_after_its_rest_the_breaker_lets_one_probe_through_at_a_time() -> None:
    breaker = Breaker(rest=5.0)
    breaker.fell_over(10.0)
    assert not breaker.failing(15.0)  # rested: the next event may probe
    breaker.sent()
    assert breaker.failing(15.0)  # the probe is out: the others go to bulk jobs
    assert breaker.failing(100.0)
    breaker.fell_over(20.0)  # the probe fell over: another rest
    assert breaker.failing(24.9)
    assert not breaker.failing(25.0)


def test_an_answered_realtime_send_closes_the_breaker() -> None:
    breaker = Breaker(rest=5.0)
    breaker.fell_over(10.0)
    breaker.sent()
    breaker.answered()
    assert not breaker.failing(15.0)
    breaker.sent()  # closed: no probe
    assert not breaker.failing(15.0)


# --- the relay's core ------------------------------------------------------------------------


def routed(path: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "klaviyo_relay_auto_route_total", {"path": path, "reason": reason}
    )
    return value or 0.0


def customers(requests: list[KlaviyoRequest], endpoint: Endpoint) -> list[str]:
    return [e.split("@")[0] for r in requests if r.endpoint is endpoint for e in emails(r.body)]


def test_auto_is_the_default_send_mode() -> None:
    assert Settings().send_mode is SendMode.AUTO


async def test_auto_is_realtime_with_room_bulk_without_and_realtime_again_when_room_returns() -> (
    None
):
    realtime_before, quota_before = routed("realtime", "room"), routed("bulk", "quota")
    async with running(batch_linger_seconds=0.01) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "a"), record(1, "b")])
        await until(lambda: core.source.committed(P0) == 2)
        core.klaviyo.room = False
        core.source.feed([record(2, "c"), record(3, "d")])
        await until(lambda: core.source.committed(P0) == 4)
        core.klaviyo.room = True
        core.source.feed([record(4, "e")])
        await until(lambda: core.source.committed(P0) == 5)
        sent = core.klaviyo.sent
    assert customers(sent, Endpoint.CREATE_EVENT) == ["a", "b", "e"]
    assert sorted(customers(sent, Endpoint.BULK_CREATE_EVENTS)) == ["c", "d"]
    # Each realtime send used the permit its routing took: none waited for another.
    assert [p.endpoint for p in core.klaviyo.permits].count("create_event") == 3
    assert routed("realtime", "room") - realtime_before == 3
    assert routed("bulk", "quota") - quota_before == 2


async def test_auto_asks_for_room_at_the_events_priority_class() -> None:
    # The realtime grants count in each class's rate-limit wait, as the waiting requests do.
    async with running(topic_priorities={"shop.account.created": "lowest"}) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "a")])
        await until(lambda: core.source.committed(P0) == 1)
        asked = core.klaviyo.room_asked
    assert asked == [PriorityClass.LOWEST.rank]  # not the default class's


async def test_auto_a_later_event_joins_its_keys_open_job_even_with_room() -> None:
    # A long linger keeps the first job open while the key's next event comes.
    quota_before = routed("bulk", "quota")
    async with running(batch_linger_seconds=3600.0) as core:
        core.source.assign(P0)
        core.klaviyo.room = False
        core.source.feed([record(0, "a")])
        await until(lambda: routed("bulk", "quota") > quota_before, "a's event is in the open job")
        core.klaviyo.room = True
        core.source.feed([record(1, "a"), record(2, "b")])
        await until(lambda: customers(core.klaviyo.sent, Endpoint.CREATE_EVENT) == ["b"])
        # a's events wait in the open job: the watermark stays at 0 (b's finish is in the map).
        assert (core.source.committed(P0) or 0) == 0
        await core.source.revoke(P0)  # the revoke's drain sends the open job
        assert core.source.committed(P0) == 3
        bulk = [r for r in core.klaviyo.sent if r.endpoint is Endpoint.BULK_CREATE_EVENTS]
    assert [offsets_in(r.body) for r in bulk] == [[0, 1]]  # a's two events, in one job


async def test_auto_a_later_event_is_not_sent_before_its_keys_bulk_job_was_accepted() -> None:
    gate = Gate()
    gate.hold("a")
    async with running(gate, batch_linger_seconds=0.01) as core:
        core.source.assign(P0)
        core.klaviyo.room = False
        core.source.feed([record(0, "a")])
        await until(lambda: "a" in gate.waiting, "a's bulk job was sent")
        core.klaviyo.room = True
        core.source.feed([record(1, "a"), record(2, "b")])
        await until(lambda: customers(core.klaviyo.sent, Endpoint.CREATE_EVENT) == ["b"])
        # b had room and went; a's next event waits for the job that holds a's first.
        assert customers(core.klaviyo.sent, Endpoint.CREATE_EVENT) == ["b"]
        gate.release("a")
        await until(lambda: core.source.committed(P0) == 3)
        sent = core.klaviyo.sent
    assert customers(sent, Endpoint.BULK_CREATE_EVENTS) == ["a"]
    assert customers(sent, Endpoint.CREATE_EVENT) == ["b", "a"]


async def test_auto_an_event_stale_after_waiting_behind_its_key_goes_to_bulk() -> None:
    gate = Gate()
    gate.hold("a")
    bound = 1.0
    stale_before = routed("bulk", "stale")
    # A lead-tracking class: an urgent event is never stale (see the next test).
    async with running(
        gate,
        batch_linger_seconds=0.01,
        auto_realtime_max_wait_seconds=bound,
        topic_priorities={"shop.account.created": "lowest"},
    ) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "a"), record(1, "a")])
        taken = time.monotonic()  # both were taken during ``feed``
        await until(lambda: "a" in gate.waiting, "a's first event is being sent")
        # The second waits behind the first until it is past the bound.
        await until(lambda: time.monotonic() - taken > bound, "the bound passed")
        gate.release("a")
        await until(lambda: core.source.committed(P0) == 2)
        sent = core.klaviyo.sent
    assert customers(sent, Endpoint.CREATE_EVENT) == ["a"]
    assert customers(sent, Endpoint.BULK_CREATE_EVENTS) == ["a"]
    assert routed("bulk", "stale") - stale_before == 1


async def test_auto_an_urgent_event_produced_long_ago_keeps_off_the_fresh_reserve() -> None:
    # An outage's backlog, taken from Kafka at the recovery: its urgent events asked for the
    # whole window, spent it, and the resets produced then found no room. Now an urgent event
    # older than the bound asks only for room beyond the reserve; a fresh one for any.
    late_before = routed("bulk", "late")
    async with running(batch_linger_seconds=0.01) as core:  # account.created: urgent
        core.source.assign(P0)
        core.klaviyo.reserve_room = False  # Create Event has room within its reserve only
        produced = int((time.time() - 180) * 1000)
        core.source.feed([dataclasses.replace(record(0, "old"), timestamp_ms=produced)])
        await until(lambda: core.source.committed(P0) == 1)
        core.source.feed([dataclasses.replace(record(1, "new"), timestamp_ms=now_ms())])
        await until(lambda: core.source.committed(P0) == 2)
        sent, asked = core.klaviyo.sent, core.klaviyo.beyond_reserve
    assert customers(sent, Endpoint.BULK_CREATE_EVENTS) == ["old"]
    assert customers(sent, Endpoint.CREATE_EVENT) == ["new"]
    assert asked == [True, False]
    assert routed("bulk", "late") - late_before == 1


def now_ms() -> int:
    return int(time.time() * 1000)


async def create_event_down(request: KlaviyoRequest) -> Outcome:
    """Klaviyo with Create Event failing (the client's retries spent) and bulk jobs accepted."""
    if request.endpoint is Endpoint.CREATE_EVENT:
        return Retryable(status=503, reason="server_error")
    return Accepted(202)


async def test_auto_a_realtime_send_that_is_not_accepted_falls_over_into_a_bulk_job() -> None:
    # Before, a realtime send retried on Create Event for as long as it failed: its event
    # (and its key's later ones) waited out the whole outage and the backoffs after it.
    fallover, failing = routed("bulk", "fallover"), routed("bulk", "failing")
    async with running(
        create_event_down, batch_linger_seconds=0.01, auto_realtime_fallover_seconds=3.0
    ) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "a"), record(1, "a")])
        await until(lambda: routed("bulk", "fallover") > fallover, "a's send fell over")
        # For as long again, fresh events do not try Create Event: b goes straight to bulk.
        core.source.feed([record(2, "b")])
        await until(lambda: core.source.committed(P0) == 3)
        sent = core.klaviyo.sent
        released = core.klaviyo.released
        permits = core.klaviyo.permits
    assert set(customers(sent, Endpoint.CREATE_EVENT)) == {"a"}  # b never tried it
    bulk = [r for r in sent if r.endpoint is Endpoint.BULK_CREATE_EVENTS]
    # a's two events in order (the second followed the first into its job), then b.
    assert [offset for r in bulk for offset in offsets_in(r.body)] == [0, 1, 2]
    assert routed("bulk", "fallover") - fallover == 1
    assert routed("bulk", "failing") - failing == 1
    # The abandoned send's permit went back (a no-op for the limiter if it was used).
    create_event_permits = [p for p in permits if p.endpoint == "create_event"]
    assert create_event_permits and create_event_permits[0] in released
