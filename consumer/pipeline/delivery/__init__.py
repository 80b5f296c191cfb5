"""Delivery strategies, one per send mode, chosen here and nowhere else (see ``base``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from consumer.klaviyo.ratelimit import Permit
from consumer.pipeline.backlog import Backlog
from consumer.pipeline.bulkwindow import BulkWindow
from consumer.pipeline.delivery.auto import AutoDelivery, Breaker, BulkGate, Room
from consumer.pipeline.delivery.base import Delivery, Reject, Spawn
from consumer.pipeline.delivery.batch import BatchDelivery
from consumer.pipeline.delivery.realtime import RealtimeDelivery
from consumer.pipeline.inflight import InFlight
from consumer.pipeline.sending import Sender
from consumer.settings import SendMode, Settings

__all__ = ["AutoDelivery", "BatchDelivery", "Delivery", "RealtimeDelivery", "delivery_for"]


def delivery_for(
    settings: Settings,
    sender: Sender,
    book: InFlight,
    *,
    reject: Reject,
    spawn: Spawn,
    saturated: Callable[[], bool],
    room: Room,
    give_back: Callable[[Permit], None],
    backlog: Callable[[], Backlog] = lambda: Backlog(0),
) -> Delivery:
    """The delivery strategy of ``settings.send_mode`` (a new mode without one fails mypy).
    ``backlog``: what waits for the relay (auto mode bounds its bulk requests by it)."""

    def batch(
        sender: Sender = sender, room: Room = room, window: BulkWindow | None = None
    ) -> BatchDelivery:
        return BatchDelivery(
            sender,
            book,
            reject,
            spawn,
            saturated,
            max_events=settings.batch_max_events,
            linger=settings.batch_linger_seconds,
            room=room,
            give_back=give_back,
            window=window,
        )

    match settings.send_mode:
        case SendMode.REALTIME:
            return RealtimeDelivery(sender, book)
        case SendMode.BATCH:
            return batch()
        case SendMode.AUTO:
            # Every send feeds the breaker, and bulk requests wait on it during an outage.
            breaker = Breaker(settings.auto_realtime_fallover_seconds)
            gate = BulkGate(breaker, give_back)
            # What a kill -9 can resend of bulk requests is bounded by the backlog (bulkwindow):
            # each attempt waits for the window once it passed the gate.
            window = BulkWindow(backlog, book.commit_after, spawn, give_back)
            gated = sender.wrapped(lambda send: gate.wrap(window.wrap(send)))
            return AutoDelivery(
                batch(gated, gate.room(room), window),  # no job is sealed while the gate holds
                gated,
                room,
                give_back=give_back,
                max_wait=settings.auto_realtime_max_wait_seconds,
                fallover=settings.auto_realtime_fallover_seconds,
                breaker=breaker,
            )
        case unknown:
            assert_never(unknown)
