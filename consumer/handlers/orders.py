"""Order events: Created Invoice, Placed Order (+ Ordered Product), Failed Payment,
Shipping Update. Property names follow Klaviyo's guide."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from consumer.errors import MalformedEvent
from consumer.handlers.context import HandlerContext
from consumer.handlers.events import create_event
from consumer.handlers.profiles import Profile, build_profile
from consumer.handlers.values import compact, number
from consumer.klaviyo.requests import JSONObject, KlaviyoRequest, Plan

Datum = Mapping[str, Any]

SHIPMENT_UPDATE_TYPES = {
    "SHIPPED": "Shipped",
    "OUT_FOR_DELIVERY": "Out for delivery",
    "DELIVERED": "Delivered",
}


def invoice_created(datum: Datum, context: HandlerContext) -> Plan:
    extra = {"MissingInformation": list(datum["missing_information"])}
    return _order_event(datum, context, "Created Invoice", extra)


def order_placed(datum: Datum, context: HandlerContext) -> Plan:
    """Placed Order, then one Ordered Product per line item (``unique_id`` ``<event_id>:<n>``,
    n the item's 0-based position, so each product is its own event)."""
    order = datum["order"]
    profile = build_profile(datum["customer"], context, field="customer")
    placed = _order_request(
        datum, context, "Placed Order", {"PaymentMethod": order.get("payment_method")}, profile
    )
    products = (
        create_event(
            metric="Ordered Product",
            properties={**_item(item), "OrderId": order["order_id"]},
            profile=profile.resource,
            occurred_at=datum["occurred_at"],
            unique_id=f"{datum['event_id']}:{n}",
            now=context.now,
            value=_row_total(item),
            value_currency=order["currency"],
            backfill=context.backfill,
        )
        for n, item in enumerate(order["items"])
    )
    return Plan((placed, *products), profile.warnings)


def payment_failed(datum: Datum, context: HandlerContext) -> Plan:
    extra = {"PaymentFailure": datum["failure_reason"], "PaymentNextSteps": datum["next_steps"]}
    return _order_event(datum, context, "Failed Payment", extra)


def shipment_updated(datum: Datum, context: HandlerContext) -> Plan:
    """Shipping Update; ``unique_id`` is the event id, never the order id, so every status
    change of one order is its own event."""
    status = datum["status"]
    if status not in SHIPMENT_UPDATE_TYPES:
        raise MalformedEvent(f"unknown shipment status {status!r}", field="status")
    extra = {
        "UpdateType": SHIPMENT_UPDATE_TYPES[status],
        "Carrier": datum.get("carrier"),
        "TrackingNumber": datum.get("tracking_number"),
        "TrackingUrl": datum.get("tracking_url"),
    }
    return _order_event(datum, context, "Shipping Update", extra)


def _order_event(
    datum: Datum, context: HandlerContext, metric: str, extra: Mapping[str, Any]
) -> Plan:
    profile = build_profile(datum["customer"], context, field="customer")
    return Plan((_order_request(datum, context, metric, extra, profile),), profile.warnings)


def _order_request(
    datum: Datum,
    context: HandlerContext,
    metric: str,
    extra: Mapping[str, Any],
    profile: Profile,
) -> KlaviyoRequest:
    order = datum["order"]
    return create_event(
        metric=metric,
        properties={**order_properties(order), **extra},
        profile=profile.resource,
        occurred_at=datum["occurred_at"],
        unique_id=datum["event_id"],
        now=context.now,
        value=order["total"],
        value_currency=order["currency"],
        backfill=context.backfill,
    )


def order_properties(order: Datum) -> JSONObject:
    """The properties every order event shares."""
    items = order["items"]
    categories = (category for item in items for category in item.get("categories", ()))
    discount = order.get("discount_value")
    return compact(
        {
            "OrderId": order["order_id"],
            "Categories": list(dict.fromkeys(categories)),  # distinct, first seen first
            "ItemNames": [item["name"] for item in items],
            "DiscountCode": order.get("discount_code"),
            "DiscountValue": None if discount is None else number(discount),
            "Items": [_item(item) for item in items],
            "BillingAddress": _address(order.get("billing_address")),
            "ShippingAddress": _address(order.get("shipping_address")),
        }
    )


def _item(item: Datum) -> JSONObject:
    return compact(
        {
            "ProductID": item["product_id"],
            "SKU": item.get("sku"),
            "ProductName": item["name"],
            "Quantity": item["quantity"],
            "ItemPrice": number(item["unit_price"]),
            "RowTotal": number(_row_total(item)),
            "ProductURL": item.get("product_url"),
            "ImageURL": item.get("image_url"),
            "Categories": list(item.get("categories", ())),
        }
    )


def _row_total(item: Datum) -> Decimal:
    row_total: Decimal | None = item.get("row_total")
    return item["unit_price"] * item["quantity"] if row_total is None else row_total


def _address(address: Datum | None) -> JSONObject | None:
    if address is None:
        return None
    return compact(
        {
            "FirstName": address.get("first_name"),
            "LastName": address.get("last_name"),
            "Address1": address.get("address1"),
            "Address2": address.get("address2"),
            "City": address.get("city"),
            "RegionCode": address.get("region_code"),
            "CountryCode": address.get("country_code"),
            "Zip": address.get("zip"),
            "Phone": address.get("phone"),
        }
    )
