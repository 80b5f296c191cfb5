"""Priority classes: which topics' events go first when Klaviyo's quota is short.

Each topic belongs to one class (``TOPIC_PRIORITIES`` overrides the default below). The class
orders the waiters for a rate-limit place (:mod:`consumer.klaviyo.ratelimit`) and decides which
partitions keep flowing into a crowded in-flight window (:mod:`consumer.pipeline.source`). A
class is an ordering only: it never drops or expires anything (freshness, such as an expired
reset link, is the handlers' rule and applies in every class).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class PriorityClass(StrEnum):
    """Most urgent first; the declaration order is the rank."""

    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    LOWEST = "lowest"

    @property
    def rank(self) -> int:
        """0 for the most urgent class; a smaller rank is served first."""
        return _RANKS[self]


_RANKS = {cls: rank for rank, cls in enumerate(PriorityClass)}

# The class of a topic that neither the default below nor TOPIC_PRIORITIES names.
DEFAULT_CLASS = PriorityClass.NORMAL
DEFAULT_RANK = DEFAULT_CLASS.rank

# Password resets and account notifications first (a customer is waiting for that mail), then
# payment and invoice notices, order confirmations, shipping updates, lead tracking last.
DEFAULT_TOPIC_PRIORITIES: dict[str, PriorityClass] = {
    "shop.account.password-reset-requested": PriorityClass.URGENT,
    "shop.account.created": PriorityClass.URGENT,
    "shop.account.updated": PriorityClass.URGENT,
    "shop.account.email-changed": PriorityClass.URGENT,
    "shop.order.payment-failed": PriorityClass.HIGH,
    "shop.order.invoice-created": PriorityClass.HIGH,
    "shop.order.placed": PriorityClass.NORMAL,
    "shop.order.shipment-updated": PriorityClass.LOW,
    "shop.lead.captured": PriorityClass.LOWEST,
    "shop.lead.assigned": PriorityClass.LOWEST,
}


class Priorities:
    """Topic → rank, from the configured classes (unlisted topics get the default class)."""

    def __init__(self, classes: Mapping[str, PriorityClass]) -> None:
        self._ranks = {topic: cls.rank for topic, cls in classes.items()}

    def rank(self, topic: str) -> int:
        return self._ranks.get(topic, DEFAULT_RANK)


def class_of(rank: int) -> PriorityClass:
    """The class of a rank (for metric labels)."""
    return _CLASSES[rank]


_CLASSES = list(PriorityClass)
