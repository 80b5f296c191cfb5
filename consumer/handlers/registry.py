"""Which handler turns which domain event into Klaviyo requests: the one table.

Handlers are keyed by record name; topics reach them through the contract's topic → record
table (:data:`consumer.topics.CONTRACT_TOPICS`). ``settings.topic_handlers`` re-routes a topic:
``{"legacy.orders": "shop.order.placed,PaymentFailed"}`` sends that topic's records to the
handlers of the named default topics or records (short or full record names), so one topic
may carry several record types; each event is dispatched by its record name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from consumer.codec import DecodedEvent
from consumer.errors import MalformedEvent, UnknownRecord
from consumer.handlers import accounts, leads, orders
from consumer.handlers.context import HandlerContext
from consumer.klaviyo.requests import Plan
from consumer.settings import Settings, SettingsError
from consumer.topics import CONTRACT_TOPICS

Handler = Callable[[Mapping[str, Any], HandlerContext], Plan]

NAMESPACE = "shop.events"

HANDLERS: dict[str, Handler] = {
    f"{NAMESPACE}.AccountCreated": accounts.account_created,
    f"{NAMESPACE}.AccountUpdated": accounts.account_updated,
    f"{NAMESPACE}.AccountEmailChanged": accounts.account_email_changed,
    f"{NAMESPACE}.PasswordResetRequested": accounts.password_reset_requested,
    f"{NAMESPACE}.InvoiceCreated": orders.invoice_created,
    f"{NAMESPACE}.OrderPlaced": orders.order_placed,
    f"{NAMESPACE}.PaymentFailed": orders.payment_failed,
    f"{NAMESPACE}.ShipmentUpdated": orders.shipment_updated,
    f"{NAMESPACE}.LeadCaptured": leads.lead_captured,
    f"{NAMESPACE}.LeadAssigned": leads.lead_assigned,
}


class HandlerRegistry:
    def __init__(
        self,
        routes: Mapping[str, tuple[str, ...]],
        *,
        topics: list[str] | None = None,
        default_region: str = "US",
    ) -> None:
        """``routes``: topic → the record names it carries, the current one first."""
        self._routes = dict(routes)
        self._topics = topics or list(self._routes)
        self._default_region = default_region

    @classmethod
    def from_settings(cls, settings: Settings) -> HandlerRegistry:
        """The contract's routes with ``topic_handlers`` applied; a name that resolves to no
        handler, or a consumed topic without one, is a configuration error."""
        routes: dict[str, tuple[str, ...]] = {t: (r,) for t, r in CONTRACT_TOPICS.items()}
        for topic, names in settings.topic_handlers.items():
            routes[topic] = tuple(_resolve(name.strip(), topic) for name in names.split(","))
        missing = [topic for topic in settings.topics if topic not in routes]
        if missing:
            raise SettingsError(
                f"invalid configuration: TOPICS: no handler for {missing}; "
                "add them to TOPIC_HANDLERS"
            )
        return cls(routes, topics=settings.topics, default_region=settings.default_phone_region)

    def topics(self) -> list[str]:
        return list(self._topics)

    def record_for(self, topic: str) -> str:
        """The full name of the record a topic carries (its first, when it carries several)."""
        return self._route(topic)[0]

    def plan(
        self, topic: str, event: DecodedEvent, now: datetime, *, backfill: bool = False
    ) -> Plan:
        """The Klaviyo requests for one decoded event; raises an ``EventRejected``.

        ``backfill``: the record is a replayed old event; its Create Events must not trigger
        flows (see :class:`HandlerContext`).
        """
        if event.record_name not in self._route(topic):
            raise UnknownRecord(f"topic {topic} does not carry record {event.record_name}")
        context = HandlerContext(now=now, default_region=self._default_region, backfill=backfill)
        try:
            return HANDLERS[event.record_name](event.datum, context)
        except KeyError as exc:  # a datum lacking a field its record requires
            raise MalformedEvent(
                f"{event.record_name} lacks field {exc.args[0]!r}", field=str(exc.args[0])
            ) from None

    def _route(self, topic: str) -> tuple[str, ...]:
        try:
            return self._routes[topic]
        except KeyError:
            raise UnknownRecord(f"no handler for topic {topic}") from None


def _resolve(name: str, topic: str) -> str:
    """The record a ``topic_handlers`` name means: a default topic's, or a full or short name."""
    for candidate in (CONTRACT_TOPICS.get(name), name, f"{NAMESPACE}.{name}"):
        if candidate is not None and candidate in HANDLERS:
            return candidate
    raise SettingsError(
        f"invalid configuration: TOPIC_HANDLERS: {name!r} (for topic {topic}) names no handler; "
        f"use a topic of {sorted(CONTRACT_TOPICS)} or a record of {sorted(HANDLERS)}"
    )
