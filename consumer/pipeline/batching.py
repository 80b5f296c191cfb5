"""Batch mode: Create Event requests gathered into Bulk Create Events jobs.

One job is open at a time. Lanes add their events' Create Event requests to it in offset order
and move on without waiting; the job is sealed and sent when it holds ``max_events`` requests
or when ``linger`` has passed since its first one (whichever comes first; ``flush`` seals it at
once, for a revoke or shutdown). A sealed job may become several bulk requests when its bytes
exceed the 5 MB limit (:func:`build_bulk_jobs` splits it).

Each job has a *ticket*, a future resolved once every item of the job is settled (accepted, or
handed back as rejected). A lane that has items in a sealed job waits for its ticket before it
adds to the next job, which keeps a key's events in order across jobs.

When Klaviyo refuses a job (400) and its errors point at items, only those items are handed
back as rejected; the rest is sent again as a new job. When the errors point at nothing, every
item is sent on its own as a Create Event, so each one gets its own verdict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from consumer.klaviyo.bulk import BulkJob, bad_items, build_bulk_jobs
from consumer.klaviyo.outcomes import Accepted, KlaviyoError, Permanent
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.pipeline.sending import Sender

Token = TypeVar("Token")
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


class _Job(Generic[Token]):
    __slots__ = ("requests", "ticket", "timer", "tokens")

    def __init__(self, ticket: asyncio.Future[None]) -> None:
        self.requests: list[KlaviyoRequest] = []
        self.tokens: list[Token] = []
        self.ticket = ticket
        self.timer: asyncio.TimerHandle | None = None


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
    ) -> None:
        self._sender = sender
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

    def add(self, request: KlaviyoRequest, token: Token) -> asyncio.Future[None]:
        """Add a Create Event request to the open job; returns that job's ticket."""
        ticket = self.open_ticket()
        job = self._open
        assert job is not None
        job.requests.append(request)
        job.tokens.append(token)
        if len(job.requests) >= self._max_events:
            self.flush()
        return ticket

    def flush(self) -> None:
        """Seal and send the open job now."""
        job, self._open = self._open, None
        if job is None:
            return
        if job.timer is not None:
            job.timer.cancel()
        if not job.requests:
            job.ticket.set_result(None)
            return
        self._spawn(self._send_job(job))

    def expedite(self, ticket: asyncio.Future[None]) -> None:
        """A lane waits on ``ticket``: if its job is still open, send it now. Lingering cannot
        grow the job faster than the waiting lane is held up, and everything behind that lane
        (its key's later events, and the in-flight window they occupy) waits with it."""
        if self._open is not None and self._open.ticket is ticket:
            self.flush()

    def set_linger(self, seconds: float) -> None:
        """Change the linger (short while draining, so no job waits a full linger); the open
        job is sent now."""
        self._linger = seconds
        if self._open is not None and self._open.requests:
            self.flush()

    def _linger_over(self, job: _Job[Token]) -> None:
        if self._open is job:
            self.flush()

    async def _send_job(self, job: _Job[Token]) -> None:
        try:
            await self._send(job.requests, job.tokens)
        finally:
            # Also on cancellation (shutdown): lanes waiting on the ticket must not hang.
            if not job.ticket.done():
                job.ticket.set_result(None)

    async def _send(self, requests: list[KlaviyoRequest], tokens: list[Token]) -> None:
        jobs = build_bulk_jobs(requests, self._max_events, self._max_bytes)
        await asyncio.gather(*(self._send_bulk(job, requests, tokens) for job in jobs))

    async def _send_bulk(
        self, job: BulkJob, requests: list[KlaviyoRequest], tokens: list[Token]
    ) -> None:
        outcome = await self._sender.settle(job.request)
        if isinstance(outcome, Accepted):
            for index in job.items:
                self._sink.item_accepted(tokens[index], requests[index])
            return
        bad = bad_items(job, outcome)
        if not bad:
            # Klaviyo did not say which events it refused: let each one answer for itself.
            await asyncio.gather(*(self._send_alone(requests[i], tokens[i]) for i in job.items))
            return
        for index, error in bad.items():
            self._sink.item_rejected(
                tokens[index], requests[index], outcome, error, Endpoint.BULK_CREATE_EVENTS
            )
        rest = [index for index in job.items if index not in bad]
        if rest:
            await self._send([requests[i] for i in rest], [tokens[i] for i in rest])

    async def _send_alone(self, request: KlaviyoRequest, token: Token) -> None:
        outcome = await self._sender.settle(request)
        if isinstance(outcome, Accepted):
            self._sink.item_accepted(token, request)
        else:
            self._sink.item_rejected(token, request, outcome, None, Endpoint.CREATE_EVENT)
