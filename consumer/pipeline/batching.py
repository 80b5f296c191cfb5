"""Batch mode: Create Event requests gathered into Bulk Create Events jobs.

One job is open at a time. Lanes add their events' Create Event requests to it in offset order
and move on without waiting; the job is sealed and sent when it holds ``max_events`` requests
or when ``linger`` has passed since its first one (whichever comes first; ``flush`` asks for it
at once, for a revoke or shutdown). A sealed job may become several bulk requests when its bytes
exceed the 5 MB limit (:func:`build_bulk_jobs` splits it).

A job due to go while Bulk Create Events has no room (its windows are spent: a backlog is
draining) is not sealed yet: it stays open and keeps taking events until a place is free (or it
is full), then goes with that place. Sealed at once instead, jobs waited for the quota with a
few dozen events each, and the 150 jobs a minute Klaviyo allows carried a few thousand events
a minute instead of up to 150,000 (measured: a batch-mode catch-up slower than realtime's).

In auto mode a :class:`~consumer.pipeline.bulkwindow.BulkWindow` bounds the events in bulk
requests at Klaviyo and not yet committed, by the backlog (what a kill -9 resends): a job is
sealed once it holds the window's bound, and a job due while the window is full stays open and
grows up to that size (the sender's attempts wait for the window too).

Each job has a *ticket*, a future resolved once every item of the job is settled (accepted, or
handed back as rejected). A lane that has items in a sealed job waits for its ticket before it
adds to the next job, which keeps a key's events in order across jobs.

Each item carries an *order key* (the record key): within a job, a key's events keep their
order (see :mod:`consumer.klaviyo.bulk`), and when a sealed job becomes several bulk requests
they are sent one after another.

Klaviyo fails a whole bulk request when one event (same metric and ``unique_id`` for the same
profile, see :func:`repeat_keys`) appears twice in it, so a job sends each such event once;
later copies (producer-side duplicates) are handed back as duplicates.

When Klaviyo refuses a job (400) and its errors point at items, only those items are handed
back as rejected; the rest is sent again as a new job. When the errors point at nothing, the
job is split in two halves (in input order) sent one after the other, and so on down: a few
bad events among a thousand cost a few dozen requests under the bulk quota (10/s), not a
thousand, and only an event Klaviyo refuses on its own is rejected.

A rejected item dead-letters its whole event, which is replayed from the dead-letter topic as
a whole: its other items must not reach Klaviyo any more (the replay would send them twice).
Before each bulk request the items the sink has *withdrawn* are taken out and handed back as
dropped, unsent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from consumer.klaviyo.bulk import BulkJob, RepeatKey, bad_items, build_bulk_jobs, repeat_keys
from consumer.klaviyo.outcomes import Accepted, KlaviyoError, Permanent
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.observability.metrics import BULK_REQUEST_EVENTS
from consumer.pipeline.bulkwindow import BulkWindow
from consumer.pipeline.sending import AccountHalted, Sender

Token = TypeVar("Token")
# A rate-limit place for Bulk Create Events if it has room now for a job of this priority rank
# (``Klaviyo.try_acquire``), and how to hand an unused one back.
Room = Callable[[int], Permit | None]
GiveBack = Callable[[Permit], None]
# How soon a job waiting for room looks again. The limiter grants a waiter its place at once,
# and a job must keep growing until then, so it asks without waiting, a few times a second:
# cheap next to the job's wait (up to a steady window) and a small part of a bulk request's
# ~1,000 events a place carries.
ROOM_RECHECK_SECONDS = 0.05
Token_contra = TypeVar("Token_contra", contravariant=True)
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class ItemSink(Protocol[Token_contra]):
    """Where the verdict on each item goes; ``token`` is what the item was added with."""

    def item_accepted(self, token: Token_contra, request: KlaviyoRequest) -> None: ...

    def item_rejected(
        self,
        token: Token_contra,
        request: KlaviyoRequest,
        outcome: Permanent,
        error: KlaviyoError | None,
        endpoint: Endpoint,
    ) -> None: ...

    def item_duplicate(self, token: Token_contra, request: KlaviyoRequest) -> None:
        """Not sent: an earlier item of the same job is the same Klaviyo event."""
        ...

    def withdrawn(self, token: Token_contra) -> bool:
        """Whether the item's event gave up (dead-lettered): its items are no longer sent."""
        ...

    def item_dropped(self, token: Token_contra, request: KlaviyoRequest) -> None:
        """Not sent (any more): its event was withdrawn."""
        ...

    def item_halted(self, token: Token_contra, request: KlaviyoRequest) -> None:
        """Not sent: its account halted (one of several, see ``sending.AccountHalted``)."""
        ...


@dataclass(frozen=True, slots=True)
class _Item(Generic[Token]):
    request: KlaviyoRequest
    token: Token
    order: Hashable


class _Job(Generic[Token]):
    __slots__ = ("due", "items", "ticket", "timer")

    def __init__(self, ticket: asyncio.Future[None]) -> None:
        self.items: list[_Item[Token]] = []
        self.ticket = ticket
        self.timer: asyncio.TimerHandle | None = None
        self.due = False  # asked to go, waiting for room


class BulkBatcher(Generic[Token]):
    def __init__(
        self,
        sender: Sender,
        sink: ItemSink[Token],
        spawn: Spawn,
        *,
        max_events: int,
        max_bytes: int,
        linger: float,
        room: Room | None = None,
        give_back: GiveBack | None = None,
        window: BulkWindow | None = None,
    ) -> None:
        """``room``/``give_back``: without them a job goes as soon as it is due (the sender
        waits for the quota); with them it waits for room while still open (see above).
        ``window`` (auto mode, also wrapping ``sender``): a job is sealed once it holds the
        window's bound (see :mod:`consumer.pipeline.bulkwindow`)."""
        self._sender = sender
        self._window = window
        self._room = room
        self._give_back = give_back
        self._sink = sink
        self._spawn = spawn
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._linger = linger
        self._open: _Job[Token] | None = None

    def open_ticket(self) -> asyncio.Future[None]:
        """The ticket of the job the next ``add`` goes into (opening one if needed)."""
        if self._open is None:
            loop = asyncio.get_running_loop()
            job: _Job[Token] = _Job(loop.create_future())
            job.timer = loop.call_later(self._linger, self._linger_over, job)
            self._open = job
        return self._open.ticket

    def add(self, request: KlaviyoRequest, token: Token, order: Hashable) -> asyncio.Future[None]:
        """Add a Create Event request to the open job (after the earlier ones of its ``order``
        key); returns that job's ticket."""
        ticket = self.open_ticket()
        job = self._open
        assert job is not None
        job.items.append(_Item(request, token, order))
        if len(job.items) >= self._job_size():
            self._send_now(job)
        return ticket

    def _job_size(self) -> int:
        if self._window is None:
            return self._max_events
        return min(self._max_events, self._window.bound())

    def flush(self) -> None:
        """Send the open job as soon as Bulk Create Events has room (at once, without ``room``);
        until then it stays open and grows."""
        job = self._open
        if job is None:
            return
        if not job.items:
            self._seal(job)
            job.ticket.set_result(None)
            return
        job.due = True
        if self._room is None:
            self._send_now(job)
            return
        if self._window is not None and not self._window.fits(len(job.items)):
            self._recheck(job)  # it grows meanwhile, up to the window's job size
            return
        # The job asks at its most urgent event's rank, as it will wait (``build_bulk_jobs``).
        permit = self._room(min(item.request.priority for item in job.items))
        if permit is None:
            self._recheck(job)
            return
        self._seal(job)
        self._spawn(self._send_job(job, permit))

    def _send_now(self, job: _Job[Token]) -> None:
        """Seal ``job`` and send it, waiting for the quota like any request (a full job)."""
        self._seal(job)
        self._spawn(self._send_job(job, None))

    def _seal(self, job: _Job[Token]) -> None:
        if self._open is job:
            self._open = None
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None

    def _recheck(self, job: _Job[Token]) -> None:
        if job.timer is not None:
            job.timer.cancel()
        job.timer = asyncio.get_running_loop().call_later(
            ROOM_RECHECK_SECONDS, self._linger_over, job
        )

    def is_open(self, ticket: asyncio.Future[None] | None) -> bool:
        """Whether ``ticket`` is the open job's (its job still takes items)."""
        return self._open is not None and self._open.ticket is ticket

    def expedite(self, ticket: asyncio.Future[None]) -> None:
        """A lane waits on ``ticket``: if its job is still open, send it now. Lingering cannot
        grow the job faster than the waiting lane is held up, and everything behind that lane
        (its key's later events, and the in-flight window they occupy) waits with it."""
        if self.is_open(ticket):
            self.flush()

    def set_linger(self, seconds: float) -> None:
        """Change the linger (short while draining, so no job waits a full linger); the open
        job is sent now."""
        self._linger = seconds
        if self._open is not None and self._open.items:
            self.flush()

    def _linger_over(self, job: _Job[Token]) -> None:
        if self._open is job:
            self.flush()

    async def _send_job(self, job: _Job[Token], permit: Permit | None) -> None:
        try:
            # Withdrawn items out first: a live copy is no duplicate of one that is never sent.
            await self._send(self._unique(self._live(job.items)), permit)
        finally:
            # Also on cancellation (shutdown): lanes waiting on the ticket must not hang.
            if not job.ticket.done():
                job.ticket.set_result(None)

    def _unique(self, items: list[_Item[Token]]) -> list[_Item[Token]]:
        seen: set[RepeatKey] = set()
        kept = []
        for item in items:
            keys = repeat_keys(item.request)
            if any(key in seen for key in keys):
                self._sink.item_duplicate(item.token, item.request)
                continue
            seen.update(keys)
            kept.append(item)
        return kept

    def _live(self, items: list[_Item[Token]]) -> list[_Item[Token]]:
        """``items`` without those of withdrawn events (handed back as dropped)."""
        kept = []
        for item in items:
            if self._sink.withdrawn(item.token):
                self._sink.item_dropped(item.token, item.request)
            else:
                kept.append(item)
        return kept

    async def _send(self, items: list[_Item[Token]], permit: Permit | None = None) -> None:
        # One bulk request after another (a key's events may be spread over several of them),
        # each packed from what is still live: an answer may withdraw events of the next.
        # ``permit`` (the place the job waited for) goes with the first.
        while items := self._live(items):
            requests = [item.request for item in items]
            orders = [item.order for item in items]
            job = build_bulk_jobs(requests, self._max_events, self._max_bytes, orders)[0]
            await self._send_bulk(job, items, permit)
            permit = None
            items = items[len(job.items) :]  # a job is packed from a prefix of its input
        if permit is not None and self._give_back is not None:
            self._give_back(permit)  # everything was withdrawn meanwhile

    async def _settle(self, job: BulkJob, permit: Permit | None) -> Accepted | Permanent:
        BULK_REQUEST_EVENTS.observe(len(job.items))
        return await self._sender.settle(job.request, permit)

    async def _send_bulk(
        self, job: BulkJob, items: list[_Item[Token]], permit: Permit | None = None
    ) -> None:
        try:
            outcome = await self._settle(job, permit)
        except AccountHalted:
            for index in job.items:
                self._sink.item_halted(items[index].token, items[index].request)
            return
        if isinstance(outcome, Accepted):
            for index in job.items:
                self._sink.item_accepted(items[index].token, items[index].request)
            return
        in_order = sorted(job.items)
        bad: dict[int, KlaviyoError | None] = dict(bad_items(job, outcome))
        if not bad and len(in_order) > 1:
            # Klaviyo did not say which events it refused: narrow it down, halves in order.
            half = len(in_order) // 2
            await self._send([items[i] for i in in_order[:half]])
            await self._send([items[i] for i in in_order[half:]])
            return
        if not bad:  # one event, refused on its own
            bad = {in_order[0]: None}
        for index, error in bad.items():
            item = items[index]
            self._sink.item_rejected(
                item.token, item.request, outcome, error, Endpoint.BULK_CREATE_EVENTS
            )
        rest = [items[i] for i in in_order if i not in bad]
        if rest:
            await self._send(rest)
