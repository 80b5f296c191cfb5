"""Auto mode's bound on the events in bulk requests out at once (consumer.pipeline.bulkwindow),
the backlog it is read from (consumer.pipeline.backlog), and the commit it waits for."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

from consumer.klaviyo.outcomes import Accepted, Outcome, Retryable
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import KlaviyoRequest
from consumer.klaviyo.retry import RetryPolicy
from consumer.pipeline.backlog import Backlog, BacklogMeter
from consumer.pipeline.batching import BulkBatcher
from consumer.pipeline.bulkwindow import (
    ARRIVING,
    DIVISOR,
    FLOOR,
    UNBOUNDED,
    BulkWindow,
    bulk_bound,
)
from consumer.pipeline.inflight import InFlight
from consumer.pipeline.sending import Halt, Sender
from tests.unit.pipeline.test_batching import MB, Sink, create_event

# --- the rule ------------------------------------------------------------------------------


def test_a_small_backlog_gets_the_floor() -> None:
    assert bulk_bound(Backlog(0)) == FLOOR
    assert bulk_bound(Backlog(2000)) == FLOOR


def test_a_kill_costs_at_most_a_share_of_a_larger_backlog() -> None:
    assert bulk_bound(Backlog(3000)) == 150  # scenario 6: a kill resends 150 events at most
    assert bulk_bound(Backlog(10_000)) == 10_000 // DIVISOR
    assert bulk_bound(Backlog(10_001)) == 10_000 // DIVISOR + 1  # rounded up


def test_a_real_backlog_gets_full_jobs_and_more_out_at_once() -> None:
    # From 20,000 waiting events the bound is a full job; an hour's outage at 30 events/s
    # (108,000) lets several out, as many as the quota can take.
    assert bulk_bound(Backlog(20_000)) == 1000
    assert bulk_bound(Backlog(108_000)) == 5400


def test_while_events_arrive_the_backlog_drains_unbounded() -> None:
    # Each new event waits behind the backlog: latency first (bench scenario 4's resets).
    assert bulk_bound(Backlog(5400, arrivals=30.0)) == UNBOUNDED
    assert bulk_bound(Backlog(5400, arrivals=ARRIVING)) == UNBOUNDED
    assert bulk_bound(Backlog(5400, arrivals=0.5)) == 270  # a trickle: nobody waits long


# --- the backlog, from librdkafka's statistics ----------------------------------------------


def stats(partitions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "consumer", "topics": {"t": {"partitions": partitions}}}


def test_the_backlog_is_the_lag_of_assigned_partitions_and_arrivals_their_end_moving() -> None:
    meter = BacklogMeter()
    assert meter.backlog(holding=7) == Backlog(7)  # no statistics yet: what the relay holds
    meter.update(
        stats(
            {
                "0": {"desired": True, "consumer_lag": 400, "hi_offset": 1000},
                "1": {"desired": True, "consumer_lag": -1, "hi_offset": -1001},  # unknown yet
                "2": {"desired": False, "consumer_lag": 9000, "hi_offset": 9000},  # not ours
                "-1": {"desired": True, "consumer_lag": 5, "hi_offset": 5},  # internal
            }
        ),
        now=100.0,
    )
    assert meter.backlog(holding=7) == Backlog(400)
    assert meter.backlog(holding=650) == Backlog(650)  # holds more than the (older) lag says
    meter.update(
        stats(
            {
                "0": {"desired": True, "consumer_lag": 300, "hi_offset": 1150},
                "1": {"desired": True, "consumer_lag": 20, "hi_offset": 20},
            }
        ),
        now=105.0,
    )
    # 150 produced to partition 0 in 5 s; partition 1's first end is no arrival.
    assert meter.backlog(holding=0) == Backlog(320, arrivals=30.0)
    # Paused meanwhile: the end offsets stood still, the rate measured before stays.
    meter.update(
        stats({"0": {"desired": True, "consumer_lag": 900, "hi_offset": 1150}}),
        now=110.0,
        arrivals=False,
    )
    assert meter.backlog(holding=0) == Backlog(900, arrivals=30.0)


# --- the window ------------------------------------------------------------------------------


async def test_a_commit_begun_before_the_call_does_not_count() -> None:
    book = InFlight(None)
    earlier = book.commit_began()
    waiting = asyncio.ensure_future(book.commit_after())
    book.commit_ended(earlier)  # it may hold none of what finished before the call
    await asyncio.sleep(0)
    assert not waiting.done()
    book.commit_ended(book.commit_began())
    await asyncio.wait_for(waiting, 5)


async def test_a_commit_is_hurried_while_a_bulk_request_waits_for_it() -> None:
    book = InFlight(None)
    waiting = asyncio.ensure_future(book.commit_after())
    # Due now, at the short spacing, although no event finished.
    assert await asyncio.wait_for(book.wait_commit_due(3600), 5) is True
    book.commit_ended(book.commit_began())
    await asyncio.wait_for(waiting, 5)


class GatedBulk:
    """A Bulk Create Events endpoint that answers each request when told to."""

    def __init__(self) -> None:
        self.sizes: list[int] = []  # events per request, in sending order
        self.answers: list[asyncio.Event] = []
        self.refuse: set[int] = set()  # the requests (from 0) answered 503
        self.sent = asyncio.Event()

    async def send(self, request: KlaviyoRequest, _permit: Permit | None = None) -> Outcome:
        assert request.body is not None
        self.last_request = request
        entries = request.body["data"]["attributes"]["events-bulk-create"]["data"]
        self.sizes.append(sum(len(e["attributes"]["events"]["data"]) for e in entries))
        answer = asyncio.Event()
        self.answers.append(answer)
        self.sent.set()
        await answer.wait()
        if len(self.answers) - 1 in self.refuse:
            return Retryable(503, "http_503")
        return Accepted(202)

    async def wait_sent(self, count: int) -> None:
        while len(self.sizes) < count:
            self.sent.clear()
            await self.sent.wait()


class Rig:
    """A batcher with a window, its Bulk Create Events endpoint answering when told, and the
    commits the window waits for, completed by hand."""

    def __init__(self, backlog: int) -> None:
        self.book = InFlight(None)
        self.endpoint, self.sink = GatedBulk(), Sink()
        self.spawned: list[asyncio.Task[None]] = []
        self.given_back: list[Permit] = []
        self.window = BulkWindow(
            lambda: Backlog(backlog), self.book.commit_after, self.spawn, self.given_back.append
        )
        sender = Sender(
            self.window.wrap(self.endpoint.send),
            RetryPolicy(),
            Halt(lambda *_: None),
            rng=random.Random(1),
        )
        self.batcher: BulkBatcher[str] = BulkBatcher(
            sender,
            self.sink,
            self.spawn,
            max_events=1000,
            max_bytes=MB,
            linger=3600.0,
            window=self.window,
        )

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.spawned.append(asyncio.create_task(coroutine))

    def add(self, count: int) -> list[asyncio.Future[None]]:
        tickets = [
            self.batcher.add(create_event(f"e{i}", f"p{i}@example.com"), f"e{i}", f"k{i}")
            for i in range(count)
        ]
        self.batcher.flush()
        return tickets

    def commit(self) -> None:
        self.book.commit_ended(self.book.commit_began())

    async def answer(self, request: int) -> None:
        """Answer the ``request``-th bulk request (from 0) and let its verdicts land."""
        await self.endpoint.wait_sent(request + 1)
        self.endpoint.answers[request].set()
        await self.idle()

    async def idle(self) -> None:
        """Let the loop run until every task that can make progress did (no timing)."""
        for _ in range(20):
            await asyncio.sleep(0)


async def test_a_small_backlog_goes_in_jobs_of_the_bound_one_out_until_committed() -> None:
    rig = Rig(backlog=250)
    tickets = rig.add(250)
    await rig.endpoint.wait_sent(1)
    await rig.idle()
    # Sealed at the bound, not at 1,000; the next job waits for this one.
    assert rig.endpoint.sizes == [FLOOR] and rig.window.out == FLOOR
    await rig.answer(0)
    assert rig.sink.accepted == [f"e{i}" for i in range(FLOOR)]
    assert rig.endpoint.sizes == [FLOOR] and rig.window.out == FLOOR  # answered, not committed
    rig.commit()
    await rig.answer(1)
    assert rig.endpoint.sizes == [FLOOR, FLOOR]
    rig.commit()
    await rig.answer(2)
    await asyncio.gather(*tickets)
    assert rig.endpoint.sizes == [FLOOR, FLOOR, 50]
    assert sorted(rig.sink.accepted) == sorted(f"e{i}" for i in range(250))  # each once
    rig.commit()
    await rig.idle()
    assert rig.window.out == 0


async def test_a_larger_backlog_lets_more_out_at_once() -> None:
    rig = Rig(backlog=40_000)  # a bound of 2,000: two full jobs out at once
    tickets = rig.add(2500)
    await rig.endpoint.wait_sent(2)
    await rig.idle()
    assert rig.endpoint.sizes == [1000, 1000] and rig.window.out == 2000
    await rig.answer(0)
    await rig.answer(1)
    rig.commit()
    await rig.answer(2)
    await asyncio.gather(*tickets)
    assert rig.endpoint.sizes == [1000, 1000, 500] and len(rig.sink.accepted) == 2500


async def test_a_cancelled_request_leaves_the_window_at_once() -> None:
    rig = Rig(backlog=0)
    [ticket] = rig.add(1)
    await rig.endpoint.wait_sent(1)
    assert rig.window.out == 1
    for task in rig.spawned:
        task.cancel()  # the shutdown
    await asyncio.gather(*rig.spawned, return_exceptions=True)
    assert rig.window.out == 0 and ticket.done()


async def test_a_request_backing_off_leaves_the_window_to_the_others() -> None:
    # Between attempts nothing of it is at Klaviyo: holding the window through a backoff
    # (after an outage, half a minute) stopped every other job.
    rig = Rig(backlog=0)
    rig.endpoint.refuse.add(0)
    tickets = rig.add(150)
    await rig.answer(0)  # 503: the first job backs off, and no longer counts
    await rig.endpoint.wait_sent(2)  # the second goes meanwhile
    assert rig.endpoint.sizes == [FLOOR, 50] and rig.window.out == 50
    for task in rig.spawned:
        task.cancel()
    await asyncio.gather(*rig.spawned, return_exceptions=True)
    assert rig.window.out == 0 and all(t.done() for t in tickets)


async def test_a_request_that_must_wait_gives_its_place_back() -> None:
    rig = Rig(backlog=0)
    rig.add(FLOOR)  # out, unanswered
    await rig.endpoint.wait_sent(1)
    send = rig.window.wrap(rig.endpoint.send)
    place = Permit("bulk_create_events", waited=0.0)
    request = rig.endpoint.last_request
    waiting = asyncio.ensure_future(send(request, place))
    await rig.idle()
    assert rig.given_back == [place] and not waiting.done() and len(rig.endpoint.sizes) == 1
    waiting.cancel()
    for task in rig.spawned:
        task.cancel()
    await asyncio.gather(waiting, *rig.spawned, return_exceptions=True)
