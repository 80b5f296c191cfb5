"""Delivery strategies, one per send mode, chosen here and nowhere else (see ``base``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from consumer.klaviyo.ratelimit import Permit
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
) -> Delivery:
    """The delivery strategy of ``settings.send_mode`` (a new mode without one fails mypy)."""

    def batch(sender: Sender = sender, room: Room = room) -> BatchDelivery:
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
            gated = sender.wrapped(gate.wrap)
            return AutoDelivery(
                batch(gated, gate.room(room)),  # no job is sealed while the gate holds
                gated,
                room,
                give_back=give_back,
                max_wait=settings.auto_realtime_max_wait_seconds,
                fallover=settings.auto_realtime_fallover_seconds,
                breaker=breaker,
            )
        case unknown:
            assert_never(unknown)
