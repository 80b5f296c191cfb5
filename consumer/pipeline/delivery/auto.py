"""Auto mode (the default): each Create Event goes to Create Event while that endpoint has room
for it right now and the event is fresh; otherwise into a Bulk Create Events job.

Klaviyo's two endpoints have separate quotas. Create Event (≈ 58 events/s steady) gives the
lowest latency; Bulk Create Events (≈ 2,500 events/s) drains a backlog. Routing on the limiter's
"room now" (:meth:`consumer.klaviyo.ratelimit.RateLimiter.try_acquire`, which never waits) uses
both at once: while the Create Event windows are exhausted everything else goes into bulk jobs,
so a backlog drains on both quotas together, and as soon as the windows have room again new
events go realtime. An event that has already waited longer than
``AUTO_REALTIME_MAX_WAIT_SECONDS`` (behind its key's earlier events, or for a Klaviyo outage)
joins a bulk job too: it is late anyway, and the realtime quota is kept for fresh ones. Its wait
counts from when it was produced (its record's timestamp), not only from when the relay took it:
after an outage the backlog still in Kafka is taken at once, minutes late but "fresh" to the
relay, and it spent Create Event's windows before the events produced during the catch-up came.

Urgent events (password resets, account notices: ``urgent``/``high``) are never stale: a late
one still takes Create Event, but only room beyond a *reserve* the windows keep for fresh events
(:func:`consumer.klaviyo.ratelimit.reserve_share`, a sixth of Klaviyo's burst and steady
windows); without room there it joins a bulk job (``bulk/late``). Fresh events may use the whole
window. Before, at the recovery from an outage, the backlog spent Create Event's windows, and a
password reset produced during the catch-up found no room and waited out a bulk job's linger,
its wait for bulk room and Klaviyo's job processing (measured after a 180 s outage: 723 of the
catch-up's 1,067 Create Events went to events older than 2 s; 7 of 34 catch-up resets came in
bulk jobs, the three slowest among them, 3.0 to 3.6 s; over five runs reset p99 2.0 to 8.4 s,
above 5 s in two). After, over seven runs: p99 1.1 to 4.4 s, at most 6 catch-up resets in bulk
jobs (none in five runs; 5 to 14 before). The price: the backlog's other events still in Kafka
go into bulk jobs at once (stale), as in batch mode, and the catch-up took a few seconds longer
(median 17.6 s, 14.5 s before, with much noise).

The price of the record's age: a producer whose clock runs behind the relay's by more than the
bound, or a pipeline that always delivers records that late, makes its events look late
(``bulk/stale``; an urgent one keeps to the room beyond the reserve). They are still delivered,
at a bulk job's latency; ``bulk/stale`` without a backlog points at such a clock or pipeline.

A realtime send that Klaviyo does not accept within ``AUTO_REALTIME_FALLOVER_SECONDS`` (it
answers 5xx or 429, or not at all, and the client is retrying) *falls over*: it is abandoned and
the event goes into a bulk job, and for as long again fresh events go to bulk jobs too; then one
realtime send at a time probes Create Event until one is answered (:class:`Breaker`). Without
this, every event that went realtime before or
during an outage kept retrying on Create Event with backoffs of up to half a minute: its retries
took the Create Event places fresh events needed, its key's later events waited behind it, and
after the outage the last of them trickled in tens of seconds late, holding their partitions'
committed offsets (measured: a 180 s outage caught up in 31.7 s, 1.7× batch's time, and password
resets waited 16 s at p99). An abandoned request that Klaviyo did accept is recorded once: the
bulk copy has the same ``unique_id`` (Klaviyo's dedup). It left before the bulk job did, so the
key's order holds.

Per-key order across the two paths: the lane runs a key's events one after another, and a
realtime send returns only once Klaviyo accepted it, so a later bulk item never overtakes an
earlier realtime one. The other way round, a key whose earlier event sits in a bulk job leaves a
*ticket* on its lane (see :mod:`consumer.pipeline.dispatch`): while that job is still open the
later event joins it (the job keeps a key's items in order, at no wait), and once it is sealed
the later event waits for the ticket before it may be sent either way.

The bulk side is :class:`BatchDelivery` itself (its jobs, verdicts and drain pacing); this module
only chooses, per Create Event step, between its ``into_job`` and a realtime send.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter

from consumer.klaviyo.outcomes import Accepted, Outcome, Retryable
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.observability.logging import get_logger
from consumer.observability.metrics import AUTO_ROUTES
from consumer.pipeline.delivery.batch import BatchDelivery
from consumer.pipeline.delivery.realtime import send_create_event
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.inflight import Work
from consumer.pipeline.sending import Send, Sender, StepFailure
from consumer.priorities import PriorityClass
from consumer.pulse import Pulse

P = TypeVar("P")

log = get_logger(__name__)

# Classes up to this rank (urgent, high) are never stale for the realtime path (see ``route``).
URGENT_RANK = PriorityClass.HIGH.rank


class Room(Protocol):
    """A rate-limit permit for an endpoint if it has room right now, for a request of a priority
    rank (``Klaviyo.try_acquire``); ``beyond_reserve``: only room past the windows' reserve."""

    def __call__(
        self, endpoint: Endpoint, rank: int, /, *, beyond_reserve: bool = False
    ) -> Permit | None: ...


class Why(StrEnum):
    ROOM = "room"  # realtime: fresh, and Create Event had room
    QUOTA = "quota"  # bulk: the Create Event windows are exhausted (or paused after a 429)
    STALE = "stale"  # bulk: waited longer than the bound since it was produced
    LATE = "late"  # bulk: urgent and late, and no room beyond the reserve kept for fresh events
    ORDER = "order"  # bulk: the key's previous event is in the open bulk job
    FAILING = "failing"  # bulk: a realtime send fell over lately (Create Event is failing)
    FALLOVER = "fallover"  # bulk: this event's realtime send was not accepted in time


@dataclass(frozen=True, slots=True)
class Route(Generic[P]):
    reason: Why
    permit: P | None  # taken for the realtime send; None: into a bulk job

    @property
    def path(self) -> str:
        return "bulk" if self.permit is None else "realtime"


class Breaker:
    """Whether Klaviyo is failing, from the sends' fate (a circuit breaker).

    Closed: every fresh event may try Create Event. A fall-over (or a bulk request whose whole
    retry budget went by unanswered or answered 5xx) opens it for ``rest`` seconds and marks an
    *outage* (see :class:`BulkGate`); then it is half-open: the next realtime send is a probe,
    and while the probe is out the other events go to bulk jobs. An answer to a Create Event
    (the probe or any realtime send) closes it; an accepted answer on another endpoint (a bulk
    job, a profile step) ends the outage and the rest at once, so the probe goes now: waiting
    out the rest and a probe already failing kept fresh events, password resets among them, in
    slow bulk jobs for seconds after an outage (measured: ~700 events). It stays a probe, not a
    close: while Create Event alone fails, bulk jobs are accepted all the time, and closing on
    them would make every fresh event wait out a fall-over. A fall-over opens it again. Without
    the half-open step, every event of the seconds after a rest went realtime during a long
    outage and waited out a whole fall-over (measured: 770 of a 180 s outage's events)."""

    def __init__(self, rest: float) -> None:
        self._rest = rest
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self.outage = False  # Klaviyo failed lately and has not accepted anything since
        self._changed = Pulse()  # fired when the outage ends

    async def changed(self) -> None:
        """Return once the outage ends (or :meth:`nudge` is called)."""
        await self._changed.wait()

    def nudge(self) -> None:
        """Wake everyone waiting in :meth:`changed`."""
        self._changed.fire()

    def failing(self, now: float) -> bool:
        """Whether a fresh event must not try Create Event now."""
        if self._open_until is None:
            return False
        return self._probing or now < self._open_until

    def sent(self) -> None:
        """A realtime send is going out (a probe unless the breaker is closed)."""
        if self._open_until is not None:
            self._probing = True

    def answered(self) -> None:
        """Create Event answered."""
        self._open_until = None
        self._probing = False
        self._back()

    def accepted_elsewhere(self, now: float) -> None:
        """Another endpoint accepted a request: Klaviyo is back; Create Event is probed now."""
        if self._open_until is not None and not self._probing:
            self._open_until = min(self._open_until, now)
        self._back()

    def fell_over(self, now: float) -> bool:
        """A send was abandoned or failed; True when this opened a closed breaker."""
        closed = self._open_until is None
        self._open_until = now + self._rest
        self._probing = False
        self.outage = True
        if closed:  # once per failing spell
            log.warning("create event failing: fresh events go to bulk jobs", seconds=self._rest)
        return closed

    def _back(self) -> None:
        if self.outage:
            self.outage = False
            self.nudge()


class BulkGate:
    """During an outage, Bulk Create Events requests go one at a time.

    During an outage every bulk job retried on its own, and each attempt took a place in Bulk
    Create Events' 150/min window: when Klaviyo came back the window was spent, places came
    back at 2.5/s, the in-flight window stayed full for 5-10 s and password resets waited in
    Kafka behind it (measured: p99 9.4 s). Now while the breaker marks an outage one bulk
    request (the probe) is out at a time, and the others wait for it to finish or for the
    outage to end (any accepted answer), handing back a place they took; the window is nearly
    whole when Klaviyo returns. Every answer a send gets also feeds the breaker
    (:meth:`observe`).

    While a request waits here, the batcher must not seal another job either (:meth:`room`):
    with a place free but the gate closed, a job was sealed every linger during an outage, and
    a 180 s outage left ~100 small jobs waiting here. When Klaviyo came back they queued for
    Bulk Create Events' 10/s, and every key whose earlier event was in one of them waited for
    it: a password reset produced during the catch-up waited 2-4 s in the relay behind its
    key's reset from the outage (measured: reset p50/p99 3.3 s/8.2 s). Reported as no room,
    the open job keeps growing until it is full or the outage ends, like a job waiting for
    the quota, and a key's later events join it instead of waiting for a sealed one.

    The probe itself may be sleeping out a backoff when Klaviyo returns; that wait ends at
    Klaviyo's first served answer (:mod:`consumer.klaviyo.recovery`). Before, every key with an
    event in the probe job waited out the rest of it, and with them nearly every partition's
    committed offset (measured: 7-34 s after a 10-minute outage).
    """

    def __init__(
        self,
        breaker: Breaker,
        give_back: Callable[[Permit], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breaker = breaker
        self._give_back = give_back
        self._clock = clock
        self._probe_out = False

    def held(self) -> bool:
        """Whether a bulk request sent now would wait for the probe (see :meth:`wrap`)."""
        return self._breaker.outage and self._probe_out

    def room(self, room: Room) -> Room:
        """``room`` with no place for Bulk Create Events while requests are held (see above)."""

        def gated(
            endpoint: Endpoint, rank: int, /, *, beyond_reserve: bool = False
        ) -> Permit | None:
            if endpoint is Endpoint.BULK_CREATE_EVENTS and self.held():
                return None
            return room(endpoint, rank, beyond_reserve=beyond_reserve)

        return gated

    def wrap(self, send: Send) -> Send:
        async def gated(request: KlaviyoRequest, permit: Permit | None = None) -> Outcome:
            if request.endpoint is not Endpoint.BULK_CREATE_EVENTS:
                return self.observe(request, await send(request, permit))
            while self.held():
                if permit is not None:  # a place must not sit idle while it waits
                    self._give_back(permit)
                    permit = None
                await self._breaker.changed()
            probe = self._breaker.outage
            self._probe_out = self._probe_out or probe
            try:
                outcome = await send(request, permit)
            finally:
                if probe:
                    self._probe_out = False
                    self._breaker.nudge()  # the next waiter may probe
            return self.observe(request, outcome)

        return gated

    def observe(self, request: KlaviyoRequest, outcome: Outcome) -> Outcome:
        """Feed the breaker: an accepted answer ends an outage; a bulk request whose retry
        budget was spent without an answer or on 5xx starts one (429 is a quota, no outage)."""
        bulk = request.endpoint is Endpoint.BULK_CREATE_EVENTS
        if isinstance(outcome, Accepted):
            if request.endpoint is Endpoint.CREATE_EVENT:
                self._breaker.answered()
            else:
                self._breaker.accepted_elsewhere(self._clock())
        elif isinstance(outcome, Retryable) and bulk and (outcome.status or 500) >= 500:
            self._breaker.fell_over(self._clock())
        return outcome


def route(
    *,
    waited: float,
    max_wait: float,
    joins_open_job: bool,
    take_room: Callable[[bool], P | None],
    failing: bool = False,
    urgent: bool = False,
    age: float = 0.0,
) -> Route[P]:
    """Which path one Create Event takes. ``waited``: since the relay took the event; ``age``:
    since it was produced (0 when unknown); past ``max_wait`` either way, it is late.
    ``take_room(beyond_reserve)`` is asked last, and only for an event that may go realtime: a
    permit it gives takes a place in the Create Event windows. ``failing``: a realtime send fell
    over lately. ``urgent`` (a password reset's or an account notice's class): never stale; a
    bulk job adds its linger and Klaviyo's job processing to a reset that has already waited.
    Late, it may only take room beyond the reserve kept for fresh events (see the module)."""
    if joins_open_job:
        return Route(Why.ORDER, None)
    late = max(waited, age) > max_wait
    if late and not urgent:
        return Route(Why.STALE, None)
    if failing:
        return Route(Why.FAILING, None)
    permit = take_room(late)
    if permit is None:
        return Route(Why.LATE if late else Why.QUOTA, None)
    return Route(Why.ROOM, permit)


class AutoDelivery:
    def __init__(
        self,
        bulk: BatchDelivery,
        sender: Sender,
        room: Room,
        *,
        give_back: Callable[[Permit], None],
        max_wait: float,
        fallover: float,
        clock: Callable[[], float] = time.monotonic,  # the clock of ``Work.taken``
        breaker: Breaker | None = None,
        wall: Callable[[], float] = time.time,  # the clock of the records' timestamps
    ) -> None:
        """``bulk``: where events without room go (its jobs, verdicts and pacing are reused);
        ``give_back``: hands back the permit of a send abandoned before it went out;
        ``breaker``: shared with the senders' :class:`BulkGate` (see ``delivery_for``)."""
        self._bulk = bulk
        self._sender = sender
        self._room = room
        self._give_back = give_back
        self._max_wait = max_wait
        self._fallover = fallover
        self._clock = clock
        self._wall = wall
        self._breaker = Breaker(fallover) if breaker is None else breaker

    def submitted(self) -> None:
        self._bulk.submitted()

    def processed(self) -> None:
        self._bulk.processed()

    def hurry(self) -> None:
        self._bulk.hurry()

    def relax(self) -> None:
        self._bulk.relax()

    async def deliver(self, lane: Lane[Work], work: Work, plan: Plan) -> StepFailure | None:
        into_job = self._bulk.into_job(lane, work)

        async def create_event(request: KlaviyoRequest) -> StepFailure | None:
            previous = lane.last_ticket
            if previous is not None and not previous.done() and not self._bulk.is_open(previous):
                # The key's earlier event is in a sealed bulk job: nothing may overtake it.
                await asyncio.shield(previous)
            chosen = route(
                waited=self._clock() - work.taken,
                max_wait=self._max_wait,
                joins_open_job=self._bulk.is_open(lane.last_ticket),
                take_room=functools.partial(self._take_room, request.priority),
                failing=self._breaker.failing(self._clock()),
                urgent=request.priority <= URGENT_RANK,
                age=self._age(work),
            )
            _routes(chosen.path, chosen.reason).inc()
            if chosen.permit is None:
                return await into_job(request)
            self._breaker.sent()
            try:
                failure = await asyncio.wait_for(
                    send_create_event(self._sender, work, request, chosen.permit), self._fallover
                )
            except TimeoutError:
                # Abandoned (see the module's doc); a permit it never used goes back.
                self._give_back(chosen.permit)
                self._breaker.fell_over(self._clock())
                _routes("bulk", Why.FALLOVER).inc()
                return await into_job(request)
            self._breaker.answered()
            return failure

        return await self._bulk.run(lane, work, plan, create_event)

    def _take_room(self, priority: int, beyond_reserve: bool) -> Permit | None:
        return self._room(Endpoint.CREATE_EVENT, priority, beyond_reserve=beyond_reserve)

    def _age(self, work: Work) -> float:
        """Seconds since the record was produced, by its timestamp (0 without one). A producer
        whose clock runs behind the relay's makes its events look older than they are."""
        stamp = work.record.timestamp_ms
        return 0.0 if stamp is None else self._wall() - stamp / 1000


# One child per (path, reason), kept: ``.labels()`` takes a lock on every call.
@functools.cache
def _routes(path: str, reason: Why) -> Counter:
    return AUTO_ROUTES.labels(path, reason.value)
