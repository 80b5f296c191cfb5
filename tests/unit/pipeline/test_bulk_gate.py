"""Auto mode's bulk gate and the breaker it shares: during an outage bulk requests go one at a
time (the others wait, handing back a place they took) instead of each spending places of Bulk
Create Events' 150/min window; any accepted answer ends the outage, and an acceptance on
another endpoint sends the Create Event probe at once."""

from __future__ import annotations

import asyncio

from consumer.klaviyo.outcomes import Accepted, Outcome, Retryable
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.pipeline.delivery.auto import Breaker, BulkGate
from tests.fixtures.fakes import until

BULK = KlaviyoRequest(Endpoint.BULK_CREATE_EVENTS, "POST", "/api/event-bulk-create-jobs")
PROFILE = KlaviyoRequest(Endpoint.PROFILE_IMPORT, "POST", "/api/profile-import")
CREATE_EVENT = KlaviyoRequest(Endpoint.CREATE_EVENT, "POST", "/api/events")
DOWN = Retryable(status=503, reason="server_error")


class Klaviyo:
    """A send whose answers the test gives, one pending future per request sent."""

    def __init__(self) -> None:
        self.pending: list[tuple[KlaviyoRequest, asyncio.Future[Outcome]]] = []
        self.permits: list[Permit | None] = []

    async def __call__(self, request: KlaviyoRequest, permit: Permit | None = None) -> Outcome:
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.pending.append((request, answer))
        self.permits.append(permit)
        return await answer

    def answer(self, outcome: Outcome) -> None:
        _request, future = self.pending.pop(0)
        future.set_result(outcome)


def in_outage(breaker: Breaker) -> bool:
    return breaker.outage  # (read through a call: mypy would narrow the attribute)


def gate_for(breaker: Breaker) -> tuple[BulkGate, list[Permit]]:
    given_back: list[Permit] = []
    return BulkGate(breaker, given_back.append, clock=lambda: 100.0), given_back


async def test_without_an_outage_bulk_requests_go_together() -> None:
    klaviyo = Klaviyo()
    gate, _ = gate_for(Breaker(rest=5.0))
    send = gate.wrap(klaviyo)
    sends = [asyncio.ensure_future(send(BULK)) for _ in range(3)]
    await until(lambda: len(klaviyo.pending) == 3, "all three sent")
    for _ in sends:
        klaviyo.answer(Accepted(202))
    assert [await s for s in sends] == [Accepted(202)] * 3


async def test_during_an_outage_one_bulk_request_is_out_and_the_others_give_their_place_back() -> (
    None
):
    breaker = Breaker(rest=5.0)
    breaker.fell_over(0.0)
    klaviyo = Klaviyo()
    gate, given_back = gate_for(breaker)
    send = gate.wrap(klaviyo)
    permits = [Permit("bulk_create_events", 0.0) for _ in range(3)]
    sends = [asyncio.ensure_future(send(BULK, permit)) for permit in permits]
    await until(lambda: len(given_back) == 2, "the waiting two handed their places back")
    assert len(klaviyo.pending) == 1 and klaviyo.permits == [permits[0]]
    klaviyo.answer(DOWN)  # the probe's budget is spent: the next one probes
    await until(lambda: len(klaviyo.pending) == 1, "the next probe")
    assert klaviyo.permits == [permits[0], None]  # it waits for a place like any retry
    assert in_outage(breaker)
    klaviyo.answer(Accepted(202))  # Klaviyo is back: the last one goes at once
    await until(lambda: len(klaviyo.pending) == 1, "the last one sent")
    assert not in_outage(breaker)
    klaviyo.answer(Accepted(202))
    assert [await s for s in sends] == [DOWN, Accepted(202), Accepted(202)]


async def test_any_accepted_answer_ends_the_outage_and_lets_the_waiting_bulk_requests_go() -> None:
    breaker = Breaker(rest=5.0)
    breaker.fell_over(0.0)
    klaviyo = Klaviyo()
    gate, _ = gate_for(breaker)
    send = gate.wrap(klaviyo)
    bulk = [asyncio.ensure_future(send(BULK)) for _ in range(3)]
    await until(lambda: len(klaviyo.pending) == 1, "the probe is out")
    profile = asyncio.ensure_future(send(PROFILE))  # profile steps are never held
    await until(lambda: len(klaviyo.pending) == 2, "the profile step is out")
    klaviyo.pending.reverse()
    klaviyo.answer(Accepted(200))  # the profile step is accepted: Klaviyo is back
    await until(lambda: len(klaviyo.pending) == 3, "the waiting two went without the probe")
    for _ in range(3):
        klaviyo.answer(Accepted(202))
    await asyncio.gather(*bulk, profile)


async def test_a_bulk_request_spent_on_5xx_starts_an_outage_but_a_429_does_not() -> None:
    klaviyo = Klaviyo()
    breaker = Breaker(rest=5.0)
    gate, _ = gate_for(breaker)
    send = gate.wrap(klaviyo)
    throttled = asyncio.ensure_future(send(BULK))
    await until(lambda: len(klaviyo.pending) == 1)
    klaviyo.answer(Retryable(status=429, reason="rate_limited"))
    await throttled
    assert not in_outage(breaker)
    down = asyncio.ensure_future(send(BULK))
    await until(lambda: len(klaviyo.pending) == 1)
    klaviyo.answer(Retryable(status=None, reason="timeout"))
    await down
    assert in_outage(breaker) and breaker.failing(100.0)


def test_an_acceptance_elsewhere_ends_the_rest_so_create_event_is_probed_now() -> None:
    breaker = Breaker(rest=5.0)
    breaker.fell_over(10.0)
    breaker.accepted_elsewhere(11.0)
    assert not in_outage(breaker)
    assert not breaker.failing(11.0)  # the next realtime send probes now
    breaker.sent()
    assert breaker.failing(11.0)  # a probe, not a close: the others still go to bulk jobs
    breaker.answered()
    assert not breaker.failing(11.0)


def test_an_acceptance_elsewhere_leaves_a_probe_that_is_out_alone() -> None:
    # While Create Event alone fails, bulk jobs are accepted all the time: they must not let
    # every fresh event try Create Event and wait out a fall-over.
    breaker = Breaker(rest=5.0)
    breaker.fell_over(10.0)
    breaker.sent()  # a probe is out
    breaker.accepted_elsewhere(16.0)
    assert breaker.failing(16.0)


async def test_an_accepted_create_event_closes_the_breaker_through_the_gate() -> None:
    breaker = Breaker(rest=5.0)
    breaker.fell_over(0.0)
    klaviyo = Klaviyo()
    gate, _ = gate_for(breaker)
    sent = asyncio.ensure_future(gate.wrap(klaviyo)(CREATE_EVENT))
    await until(lambda: len(klaviyo.pending) == 1)
    klaviyo.answer(Accepted(202))
    await sent
    assert not in_outage(breaker) and not breaker.failing(0.0)


async def test_while_the_probe_is_held_bulk_has_no_room_so_the_open_job_keeps_growing() -> None:
    # A free place with the gate closed sealed a small job every linger during an outage; at
    # recovery ~100 of them queued for Bulk Create Events' 10/s and held their keys' lanes.
    breaker = Breaker(rest=5.0)
    klaviyo = Klaviyo()
    gate, _ = gate_for(breaker)
    send = gate.wrap(klaviyo)
    asked: list[tuple[Endpoint, int, bool]] = []

    def room(endpoint: Endpoint, rank: int, /, *, beyond_reserve: bool = False) -> Permit | None:
        asked.append((endpoint, rank, beyond_reserve))
        return Permit(endpoint.value, 0.0)

    gated = gate.room(room)
    assert gated(Endpoint.BULK_CREATE_EVENTS, 0) is not None  # no outage: room as the limiter says
    breaker.fell_over(0.0)
    assert gated(Endpoint.BULK_CREATE_EVENTS, 0) is not None  # an outage, no probe out yet
    probe = asyncio.ensure_future(send(BULK))
    await until(lambda: len(klaviyo.pending) == 1, "the probe is out")
    asked.clear()
    assert gated(Endpoint.BULK_CREATE_EVENTS, 0) is None
    assert asked == []  # no place was taken from the limiter for it
    assert gated(Endpoint.CREATE_EVENT, 0) is not None  # Create Event is the breaker's matter
    assert gated(Endpoint.CREATE_EVENT, 0, beyond_reserve=True) is not None
    assert asked[-1] == (Endpoint.CREATE_EVENT, 0, True)  # the reserve is the limiter's matter
    klaviyo.answer(DOWN)  # the probe gave up: the next job may go as the probe
    await probe
    assert gated(Endpoint.BULK_CREATE_EVENTS, 0) is not None
    again = asyncio.ensure_future(send(BULK))
    await until(lambda: len(klaviyo.pending) == 1, "the next probe is out")
    assert gated(Endpoint.BULK_CREATE_EVENTS, 0) is None
    klaviyo.answer(Accepted(202))  # Klaviyo is back: jobs go as the limiter allows
    await again
    assert gated(Endpoint.BULK_CREATE_EVENTS, 0) is not None
