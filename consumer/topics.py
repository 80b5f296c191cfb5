"""The contract's topics, the record each carries, and the Kafka message key of an event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# topic → full name of the record published on it (contract "Events, topics and what Klaviyo
# receives"). The handler registry and the ``produce`` command both read it.
CONTRACT_TOPICS: dict[str, str] = {
    "shop.account.created": "shop.events.AccountCreated",
    "shop.account.updated": "shop.events.AccountUpdated",
    "shop.account.email-changed": "shop.events.AccountEmailChanged",
    "shop.account.password-reset-requested": "shop.events.PasswordResetRequested",
    "shop.order.invoice-created": "shop.events.InvoiceCreated",
    "shop.order.placed": "shop.events.OrderPlaced",
    "shop.order.payment-failed": "shop.events.PaymentFailed",
    "shop.order.shipment-updated": "shop.events.ShipmentUpdated",
    "shop.lead.captured": "shop.events.LeadCaptured",
    "shop.lead.assigned": "shop.events.LeadAssigned",
}


def event_key(datum: Mapping[str, Any]) -> str:
    """The customer id the event is about: the Kafka key, so one customer's events stay ordered.

    ``customer.customer_id``, else ``lead.customer_id`` (lead events are about the lead, not the
    representative), else the top-level ``customer_id`` of the email change.
    """
    for holder in ("customer", "lead"):
        person = datum.get(holder)
        if isinstance(person, Mapping) and person.get("customer_id"):
            return str(person["customer_id"])
    if datum.get("customer_id"):
        return str(datum["customer_id"])
    raise ValueError("the event names no customer (customer, lead or customer_id)")
