"""Auto mode (the default): each Create Event goes to Create Event while that endpoint has room
for it right now and the event is fresh; otherwise into a Bulk Create Events job.

Klaviyo's two endpoints have separate quotas. Create Event (≈ 58 events/s steady) gives the
lowest latency; Bulk Create Events (≈ 2,500 events/s) drains a backlog. Routing on the limiter's
"room now" (:meth:`consumer.klaviyo.ratelimit.RateLimiter.try_acquire`, which never waits) uses
both at once: while the Create Event windows are exhausted everything else goes into bulk jobs,
so a backlog drains on both quotas together, and as soon as the windows have room again new
events go realtime. An event that has already waited longer than
``AUTO_REALTIME_MAX_WAIT_SECONDS`` since it was taken (behind its key's earlier events, or for a
Klaviyo outage) joins a bulk job too: it is late anyway, and the realtime quota is kept for
fresh ones.

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
from typing import Generic, TypeVar

from prometheus_client import Counter

from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.observability.logging import get_logger
from consumer.observability.metrics import AUTO_ROUTES
from consumer.pipeline.delivery.batch import BatchDelivery
from consumer.pipeline.delivery.realtime import send_create_event
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.inflight import Work
from consumer.pipeline.sending import Sender, StepFailure

P = TypeVar("P")

log = get_logger(__name__)

# A rate-limit permit for an endpoint if it has room right now, for a request of a priority
# rank (``Klaviyo.try_acquire``).
Room = Callable[[Endpoint, int], Permit | None]


class Why(StrEnum):
    ROOM = "room"  # realtime: fresh, and Create Event had room
    QUOTA = "quota"  # bulk: the Create Event windows are exhausted (or paused after a 429)
    STALE = "stale"  # bulk: waited longer than the bound since it was taken
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
    """Whether Create Event is failing, from the realtime sends' fate (a circuit breaker).

    Closed: every fresh event may try Create Event. A fall-over opens it for ``rest`` seconds;
    then it is half-open: the next realtime send is a probe, and while the probe is out the
    other events go to bulk jobs. An answer (to the probe or to any realtime send) closes it; a
    fall-over opens it again. Without the half-open step, every event of the seconds after a
    rest went realtime during a long outage and waited out a whole fall-over (measured: 770 of
    a 180 s outage's events)."""

    def __init__(self, rest: float) -> None:
        self._rest = rest
        self._open_until: float | None = None  # None: closed
        self._probing = False

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
        self._open_until = None
        self._probing = False

    def fell_over(self, now: float) -> bool:
        """A realtime send was abandoned; True when this opened a closed breaker."""
        closed = self._open_until is None
        self._open_until = now + self._rest
        self._probing = False
        return closed


def route(
    *,
    waited: float,
    max_wait: float,
    joins_open_job: bool,
    take_room: Callable[[], P | None],
    failing: bool = False,
) -> Route[P]:
    """Which path one Create Event takes. ``take_room`` is asked last, and only for an event
    that may go realtime: a permit it gives takes a place in the Create Event windows.
    ``failing``: a realtime send fell over lately."""
    if joins_open_job:
        return Route(Why.ORDER, None)
    if waited > max_wait:
        return Route(Why.STALE, None)
    if failing:
        return Route(Why.FAILING, None)
    permit = take_room()
    if permit is None:
        return Route(Why.QUOTA, None)
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
    ) -> None:
        """``bulk``: where events without room go (its jobs, verdicts and pacing are reused);
        ``give_back``: hands back the permit of a send abandoned before it went out."""
        self._bulk = bulk
        self._sender = sender
        self._room = room
        self._give_back = give_back
        self._max_wait = max_wait
        self._fallover = fallover
        self._clock = clock
        self._breaker = Breaker(fallover)

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
                take_room=functools.partial(self._room, Endpoint.CREATE_EVENT, request.priority),
                failing=self._breaker.failing(self._clock()),
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
                if self._breaker.fell_over(self._clock()):  # once per failing spell
                    log.warning(
                        "create event failing: fresh events go to bulk jobs",
                        seconds=self._fallover,
                    )
                _routes("bulk", Why.FALLOVER).inc()
                return await into_job(request)
            self._breaker.answered()
            return failure

        return await self._bulk.run(lane, work, plan, create_event)


# One child per (path, reason), kept: ``.labels()`` takes a lock on every call.
@functools.cache
def _routes(path: str, reason: Why) -> Counter:
    return AUTO_ROUTES.labels(path, reason.value)
