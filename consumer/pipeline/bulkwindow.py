"""Auto mode: how many Klaviyo events may be in Bulk Create Events requests at once.

A kill -9 resends every event of a bulk request that was sent and is not yet in a commit:
Klaviyo has no way to read a bulk job back, so the partitions' next owner cannot tell whether
it was accepted and must send it again (skipping it could lose it). By Little's law the events
so exposed are the bulk drain rate times a request's *cycle*: its round trip plus the wait for
the next commit after its answer. Sent back to back as 1,000-event jobs, a 3,000-event backlog
had two or three full jobs out at once and a kill during the drain resent one to three whole
jobs (bench scenario 6: 23-48 % of the run's Klaviyo events, against a target under 10 %).

The bound (:func:`bulk_bound`): a bulk request's attempt goes only while the events *out*
(in attempts at Klaviyo, or accepted and not yet in a commit, see :class:`BulkWindow`) plus its
own stay within

    max(FLOOR, backlog / DIVISOR)

while no new events arrive (none while they do: see below). One request may always go,
whatever its size, and a job is sealed once it holds the bound (never more than
``BATCH_MAX_EVENTS``). The *backlog* is the events produced to the relay's partitions and not
yet finished (librdkafka's consumer lag, at least what the relay holds); *arrivals* the rate
they are produced at. So:

- with nothing arriving (a restart into a backlog, a replay) a kill resends at most 1/DIVISOR
  of the backlog waiting at that moment, or FLOOR events (scenario 6: 4.7-5.2 % in three runs,
  at most one 100-event job per kill);
- the drain rate is bound / cycle: such a backlog drains in about DIVISOR cycles (20 × 0.1-0.3
  s: 2-6 s) instead of one or two. Bulk Create Events' quota is not what limits such a drain
  (its steady window's 150 places carry up to 150,000 events a minute); small jobs spend a few
  more of the places it has to spare;
- while events arrive (ARRIVING a second or more), each new one waits behind the backlog (its
  partition is read in order, its key's earlier events go first), so the backlog drains as
  fast as the quota allows, unbounded, as in batch mode: latency first, and a kill may resend
  the jobs out (each one bulk place of 150 a minute). Measured (bench scenario 4, a 180 s
  outage at 30 events/s, password resets produced during the catch-up): bounded at a
  twentieth of the backlog, resets waited 8-11 s (p50) behind ~20 serial cycles; at a quarter
  of it, 4.3 s (p50) and 9.9 s (p99); unbounded, as before the bound, 0.2 s and 2.2 s;
- a large backlog is not slowed: the bound grows with it, and from about DIVISOR × (the
  quota's 2,500 events/s × a 0.3 s cycle) = 15,000 waiting events it lets out as many as the
  quota can take, in full 1,000-event jobs (at 20,000 and above, jobs are full).

Batch mode keeps sending full jobs as fast as the quota allows (its purpose is throughput; it
has no bound).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from consumer.klaviyo.outcomes import Accepted, Outcome
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.pipeline.backlog import Backlog
from consumer.pipeline.sending import Send
from consumer.pulse import Pulse

# At least this many events may be out: a bulk request of a few dozen events costs a place of
# Bulk Create Events' 150 a minute like a full one, and below ~100 the drain of a small backlog
# would lean on realtime's 58 events/s.
FLOOR = 100
# A kill may resend up to 1/DIVISOR of the backlog waiting (5 %: scenario 6's three kills stay
# under the 10 % target with room for what realtime sends meanwhile).
DIVISOR = 20
# Events arriving at least this fast (a second) wait behind the backlog: no bound then.
ARRIVING = 1.0
UNBOUNDED = 1 << 62
# A request's events leave the window once a commit begun after its answer completed, or after
# this long at the latest: a commit that hangs (a broker down) must not stop the drain.
COMMIT_WAIT_SECONDS = 1.0


def bulk_bound(backlog: Backlog) -> int:
    """How many Klaviyo events may be in bulk requests out at once (see the module's doc)."""
    if backlog.arrivals >= ARRIVING:  # new events wait behind the backlog
        return UNBOUNDED
    return max(FLOOR, math.ceil(backlog.waiting / DIVISOR))


def bulk_events(request: KlaviyoRequest) -> int:
    """The Klaviyo events in a Bulk Create Events request."""
    assert request.body is not None
    entries = request.body["data"]["attributes"]["events-bulk-create"]["data"]
    return sum(len(entry["attributes"]["events"]["data"]) for entry in entries)


class BulkWindow:
    """Counts the Klaviyo events in bulk requests at Klaviyo or accepted and not yet committed,
    and holds a request back while it would take them past :func:`bulk_bound`.

    It wraps each *attempt* (:meth:`wrap`), not a request's whole retrying: between attempts
    (a backoff after a 5xx, the outage gate) nothing of it is at Klaviyo, and a job backing
    off for half a minute must not stop the others. Measured when it held the request: after
    a 180 s outage the outage's probe job sat in a 25 s backoff with the window to itself, and
    password resets waited 8 s (p50) behind it."""

    def __init__(
        self,
        backlog: Callable[[], Backlog],
        commit_after: Callable[[], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        give_back: Callable[[Permit], None],
    ) -> None:
        """``backlog``: read at every decision; ``commit_after``: an awaitable that completes
        once a commit begun after the call completed; ``give_back``: a permit of a request
        that must wait goes back (a place must not sit idle)."""
        self._backlog = backlog
        self._commit_after = commit_after
        self._spawn = spawn
        self._give_back = give_back
        self._out = 0
        self._changed = Pulse()

    @property
    def out(self) -> int:
        return self._out

    def bound(self) -> int:
        return bulk_bound(self._backlog())

    def fits(self, events: int) -> bool:
        """Whether a request of ``events`` may go now."""
        return self._out == 0 or self._out + events <= self.bound()

    def wrap(self, send: Send) -> Send:
        """``send`` with each Bulk Create Events attempt within the window."""

        async def windowed(request: KlaviyoRequest, permit: Permit | None = None) -> Outcome:
            if request.endpoint is not Endpoint.BULK_CREATE_EVENTS:
                return await send(request, permit)
            events = bulk_events(request)
            while not self.fits(events):
                if permit is not None:
                    self._give_back(permit)
                    permit = None
                await self._changed.wait()
            self._out += events
            try:
                outcome = await send(request, permit)
            except BaseException:
                self._release(events)
                raise
            if isinstance(outcome, Accepted):
                # Out until a commit has them: a kill before it resends them.
                self._spawn(self._after_commit(self._commit_after(), events))
            else:
                self._release(events)  # refused or failed: retried (counted again) or rejected
            return outcome

        return windowed

    def _release(self, events: int) -> None:
        self._out -= events
        self._changed.fire()

    async def _after_commit(self, committed: Awaitable[None], events: int) -> None:
        try:
            async with asyncio.timeout(COMMIT_WAIT_SECONDS):
                await committed
        except TimeoutError:
            pass
        finally:
            self._release(events)
