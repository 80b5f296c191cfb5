"""Realtime mode: every request of a plan is sent on its own, in order, as soon as its event's
turn comes in its key's lane; the event is finished when the last one is accepted."""

from __future__ import annotations

from consumer.klaviyo.outcomes import Permanent
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import KlaviyoRequest, Plan
from consumer.pipeline.delivery.base import delivered, on_accepted
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.inflight import InFlight, Work
from consumer.pipeline.sending import PlanRunner, Sender, StepFailure


class RealtimeDelivery:
    def __init__(self, sender: Sender, book: InFlight) -> None:
        self._sender = sender
        self._runner = PlanRunner(sender)
        self._book = book

    def submitted(self) -> None:
        pass

    async def deliver(self, _lane: Lane[Work], work: Work, plan: Plan) -> StepFailure | None:
        async def create_event(request: KlaviyoRequest) -> StepFailure | None:
            return await send_create_event(self._sender, work, request)

        failure = await self._runner.run(plan, create_event, on_accepted(work))
        if failure is None:
            self._book.finish(work)
        return failure

    def processed(self) -> None:
        pass

    def hurry(self) -> None:
        pass  # nothing lingers

    def relax(self) -> None:
        pass


async def send_create_event(
    sender: Sender, work: Work, request: KlaviyoRequest, permit: Permit | None = None
) -> StepFailure | None:
    """Send one Create Event now (with ``permit`` if one was taken) and count it delivered."""
    outcome = await sender.settle(request, permit)
    if isinstance(outcome, Permanent):
        return StepFailure(request, outcome)
    delivered(work, request)
    return None
