"""Batch mode: Create Event requests go into Bulk Create Events jobs (see
:mod:`consumer.pipeline.batching`); every other step of a plan is sent on its own, in order.

An event is finished when every one of its items is settled (accepted, or a duplicate of an
item already in its job) and every step of its plan was placed; a rejected item dead-letters
the whole event. A key's events keep their order across jobs through the lane's *ticket*: a
lane waits for its previous job before it adds to another, and a profile step (sent alone)
waits until the key's earlier events were accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from consumer.klaviyo.bulk import MAX_BYTES
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.observability.metrics import BULK_DUPLICATES
from consumer.pipeline.batching import BulkBatcher
from consumer.pipeline.bulkwindow import BulkWindow
from consumer.pipeline.delivery.base import Reject, Spawn, delivered, on_accepted
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.failure import Failure, account_halted
from consumer.pipeline.inflight import InFlight, Work
from consumer.pipeline.sending import PlanRunner, Sender, StepFailure

# What a plan's Create Event step does with its request (see ``PlanRunner``).
CreateEvent = Callable[[KlaviyoRequest], Awaitable[StepFailure | None]]

# While draining, a job is sent almost at once: nobody waits a full linger to leave.
DRAIN_LINGER = 0.005


class BatchDelivery:
    def __init__(
        self,
        sender: Sender,
        book: InFlight,
        reject: Reject,
        spawn: Spawn,
        saturated: Callable[[], bool],
        *,
        max_events: int,
        linger: float,
        room: Callable[[Endpoint, int], Permit | None] | None = None,
        give_back: Callable[[Permit], None] | None = None,
        window: BulkWindow | None = None,
    ) -> None:
        """``room``/``give_back`` (``Klaviyo.try_acquire``/``release``): a job due while Bulk
        Create Events has no room keeps growing until it has (``consumer.pipeline.batching``).
        ``window``: auto mode's bound on events in bulk requests (see ``bulkwindow``)."""
        self._runner = PlanRunner(sender)
        self._book = book
        self._reject = reject
        self._saturated = saturated
        self._linger = linger
        self._unplaced = 0  # events handed to lanes and not yet in their bulk jobs
        self._batcher: BulkBatcher[Work] = BulkBatcher(
            sender,
            self,
            spawn,
            max_events=max_events,
            max_bytes=MAX_BYTES,
            linger=linger,
            room=None if room is None else lambda rank: room(Endpoint.BULK_CREATE_EVENTS, rank),
            give_back=give_back,
            window=window,
        )

    def submitted(self) -> None:
        self._unplaced += 1

    def processed(self) -> None:
        """One more event is in its bulk jobs (or needs none). With none left to place while
        the source is saturated, the open job cannot grow until jobs are answered: it is sent
        now rather than after the linger. Without this, a full in-flight window (the normal
        state while catching up) idled for a whole linger on every cycle."""
        self._unplaced -= 1
        if self._unplaced == 0 and self._saturated():
            self._batcher.flush()

    def hurry(self) -> None:
        self._batcher.set_linger(DRAIN_LINGER)

    def relax(self) -> None:
        self._batcher.set_linger(self._linger)

    async def deliver(self, lane: Lane[Work], work: Work, plan: Plan) -> StepFailure | None:
        return await self.run(lane, work, plan, self.into_job(lane, work))

    async def run(
        self, lane: Lane[Work], work: Work, plan: Plan, create_event: CreateEvent
    ) -> StepFailure | None:
        """Run ``plan`` with ``create_event`` for its Create Event steps (a step that may add to
        a bulk job); the event is finished once its bulk items are settled too."""
        # Profile steps go alone, and only after this key's earlier events were accepted.
        direct = any(r.endpoint is not Endpoint.CREATE_EVENT for r in plan.requests)
        if direct and lane.last_ticket is not None:
            self._batcher.expedite(lane.last_ticket)
            await asyncio.shield(lane.last_ticket)
        work.remaining += 1  # held until every step is placed, so an early verdict cannot finish it
        try:
            failure = await self._runner.run(plan, create_event, on_accepted(work))
        finally:
            work.remaining -= 1
        if failure is None:  # else the caller dead-letters it
            self._book.settle(work)
        return failure

    def into_job(self, lane: Lane[Work], work: Work) -> CreateEvent:
        """The Create Event step that adds the request to the open bulk job, after this key's
        previous job (a job still open is joined)."""
        batcher = self._batcher

        async def into_job(request: KlaviyoRequest) -> StepFailure | None:
            while await lane.wait_for_ticket_unless(batcher.open_ticket()):
                pass  # the open job changed while we waited: look again
            work.remaining += 1
            # The record key orders a customer's events within the job; no key, no order.
            order = work if work.record.key is None else work.record.key
            lane.last_ticket = batcher.add(request, work, order)
            return None

        return into_job

    def is_open(self, ticket: asyncio.Future[None] | None) -> bool:
        """Whether ``ticket`` is the open job's (``into_job`` joins it without waiting)."""
        return self._batcher.is_open(ticket)

    # verdicts on the items of a bulk job (batching.ItemSink)

    def item_accepted(self, token: Work, request: KlaviyoRequest) -> None:
        delivered(token, request)
        self._item_settled(token)

    def item_duplicate(self, token: Work, _request: KlaviyoRequest) -> None:
        BULK_DUPLICATES.labels(token.record.topic).inc()
        self._item_settled(token)

    def item_rejected(
        self,
        token: Work,
        request: KlaviyoRequest,
        outcome: Permanent,
        error: KlaviyoError | None,
        endpoint: Endpoint,
    ) -> None:
        token.remaining -= 1
        if not token.dead:
            self._reject(token, Failure.from_klaviyo(outcome, endpoint.value, _now(), error))
        self._book.settle(token)

    def withdrawn(self, token: Work) -> bool:
        """Its event was dead-lettered: its other items are not sent (a replay sends them all)."""
        return token.dead

    def item_dropped(self, token: Work, _request: KlaviyoRequest) -> None:
        self._item_settled(token)

    def item_halted(self, token: Work, _request: KlaviyoRequest) -> None:
        token.remaining -= 1
        if not token.dead:
            self._reject(token, account_halted(_now()))
        self._book.settle(token)

    def _item_settled(self, token: Work) -> None:
        token.remaining -= 1
        self._book.settle(token)


def _now() -> datetime:
    return datetime.now(UTC)
