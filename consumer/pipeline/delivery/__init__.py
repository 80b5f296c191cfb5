"""Delivery strategies, one per send mode, chosen here and nowhere else (see ``base``)."""

from __future__ import annotations

from collections.abc import Callable

from consumer.pipeline.delivery.base import Delivery, Reject, Spawn
from consumer.pipeline.delivery.batch import BatchDelivery
from consumer.pipeline.delivery.realtime import RealtimeDelivery
from consumer.pipeline.inflight import InFlight
from consumer.pipeline.sending import Sender
from consumer.settings import SendMode, Settings

__all__ = ["BatchDelivery", "Delivery", "RealtimeDelivery", "delivery_for"]


def delivery_for(
    settings: Settings,
    sender: Sender,
    book: InFlight,
    *,
    reject: Reject,
    spawn: Spawn,
    saturated: Callable[[], bool],
) -> Delivery:
    """The delivery strategy of ``settings.send_mode``."""
    if settings.send_mode is SendMode.BATCH:
        return BatchDelivery(
            sender,
            book,
            reject,
            spawn,
            saturated,
            max_events=settings.batch_max_events,
            linger=settings.batch_linger_seconds,
        )
    return RealtimeDelivery(sender, book)
