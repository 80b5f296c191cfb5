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
from consumer.observability.metrics import AUTO_ROUTES
from consumer.pipeline.delivery.batch import BatchDelivery
from consumer.pipeline.delivery.realtime import send_create_event
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.inflight import Work
from consumer.pipeline.sending import Sender, StepFailure

P = TypeVar("P")

# A rate-limit permit for an endpoint if it has room right now, for a request of a priority
# rank (``Klaviyo.try_acquire``).
Room = Callable[[Endpoint, int], Permit | None]


class Why(StrEnum):
    ROOM = "room"  # realtime: fresh, and Create Event had room
    QUOTA = "quota"  # bulk: the Create Event windows are exhausted (or paused after a 429)
    STALE = "stale"  # bulk: waited longer than the bound since it was taken
    ORDER = "order"  # bulk: the key's previous event is in the open bulk job


@dataclass(frozen=True, slots=True)
class Route(Generic[P]):
    reason: Why
    permit: P | None  # taken for the realtime send; None: into a bulk job

    @property
    def path(self) -> str:
        return "bulk" if self.permit is None else "realtime"


def route(
    *, waited: float, max_wait: float, joins_open_job: bool, take_room: Callable[[], P | None]
) -> Route[P]:
    """Which path one Create Event takes. ``take_room`` is asked last, and only for an event
    that may go realtime: a permit it gives takes a place in the Create Event windows."""
    if joins_open_job:
        return Route(Why.ORDER, None)
    if waited > max_wait:
        return Route(Why.STALE, None)
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
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,  # the clock of ``Work.taken``
    ) -> None:
        """``bulk``: where events without room go (its jobs, verdicts and pacing are reused)."""
        self._bulk = bulk
        self._sender = sender
        self._room = room
        self._max_wait = max_wait
        self._clock = clock

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
            )
            _routes(chosen.path, chosen.reason).inc()
            if chosen.permit is None:
                return await into_job(request)
            return await send_create_event(self._sender, work, request, chosen.permit)

        return await self._bulk.run(lane, work, plan, create_event)


# One child per (path, reason), kept: ``.labels()`` takes a lock on every call.
@functools.cache
def _routes(path: str, reason: Why) -> Counter:
    return AUTO_ROUTES.labels(path, reason.value)
