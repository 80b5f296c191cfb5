"""One small interface for every send mode, and what the modes share.

A :class:`Delivery` takes an event's :class:`Plan` (decoded and handled) and gets its requests
accepted by Klaviyo. It finishes the event in the book of work in flight
(:meth:`consumer.pipeline.inflight.InFlight.finish`) once the last of them is accepted, and
hands a refused step back to the caller (which dead-letters the event). Modes differ in how
Create Event requests travel: one at a time (``realtime``), gathered into Bulk Create Events
jobs (``batch``), or each one by whichever has room (``auto``). The relay picks one in
:func:`consumer.pipeline.delivery.delivery_for`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import Counter, Histogram

from consumer.klaviyo.outcomes import Accepted
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.observability.metrics import END_TO_END_DELAY, EVENTS_DELIVERED
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.failure import Failure
from consumer.pipeline.inflight import Work
from consumer.pipeline.sending import StepFailure, metric_name

Spawn = Callable[[Coroutine[Any, Any, None]], None]
# Dead-letter an event (it is finished once the broker acknowledged the write).
Reject = Callable[[Work, Failure], None]


class Delivery(Protocol):
    def submitted(self) -> None:
        """An event was handed to its key's lane."""
        ...

    async def deliver(self, lane: Lane[Work], work: Work, plan: Plan) -> StepFailure | None:
        """Send ``plan``'s requests in order; finishes ``work`` once they are all accepted.
        Returns the step Klaviyo refused (nothing after it was sent)."""
        ...

    def processed(self) -> None:
        """The lane is done with an event it was handed (delivered, in a job, or dropped)."""
        ...

    def hurry(self) -> None:
        """A drain began (revoke, shutdown): nothing waits for a linger from now on."""
        ...

    def relax(self) -> None:
        """The revoke's drain is over: back to normal pacing."""
        ...


def delivered(work: Work, request: KlaviyoRequest) -> None:
    """Count a delivered Create Event and its end-to-end delay, and record
    the accepted step in its event's commit map (a crash resends only the steps after it)."""
    work.offsets.step_accepted(work.record.offset)
    topic = work.record.topic
    _delivered_counter(topic, metric_name(request), work.account).inc()
    if work.occurred_at is not None:
        delay = (datetime.now(UTC) - work.occurred_at).total_seconds()
        _delay_histogram(topic).observe(max(delay, 0.0))


def on_accepted(work: Work) -> Callable[[KlaviyoRequest, Accepted], None]:
    """The hook for a plan's steps sent on their own: only Create Event counts as delivered."""

    def accepted(request: KlaviyoRequest, _outcome: Accepted) -> None:
        if request.endpoint is Endpoint.CREATE_EVENT:
            delivered(work, request)

    return accepted


# ``.labels()`` looks its child up under a lock on every call; these run once per delivered
# event, so the children are kept (label values are bounded: topics x metric names x accounts).
@functools.cache
def _delivered_counter(topic: str, metric: str, account: str) -> Counter:
    return EVENTS_DELIVERED.labels(topic, metric, account)


@functools.cache
def _delay_histogram(topic: str) -> Histogram:
    return END_TO_END_DELAY.labels(topic)
