"""Order events → Klaviyo requests, checked field by field against the contract."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from consumer.handlers.context import HandlerContext
from consumer.handlers.orders import (
    invoice_created,
    order_placed,
    payment_failed,
    shipment_updated,
)
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from tests.fixtures.handler_events import EVENT_ID, NOW, PROFILE_ID, line_item, order, sample
from tests.fixtures.klaviyo_schemas import assert_valid_request

CONTEXT = HandlerContext(now=NOW, default_region="US")

ADDRESS = {
    "FirstName": "John",
    "LastName": "Smith",
    "Address1": "123 Abc St",
    "City": "Boston",
    "RegionCode": "MA",
    "CountryCode": "US",
    "Zip": "02110",
    "Phone": "+15551234567",
}
ITEM = {
    "ProductID": "1111",
    "SKU": "WINNIEPOOH",
    "ProductName": "Winnie the Pooh",
    "Quantity": 1,
    "ItemPrice": 9.99,
    "RowTotal": 9.99,
    "ProductURL": "http://www.example.com/path/to/product",
    "ImageURL": "http://www.example.com/path/to/product/image.png",
    "Categories": ["Fiction", "Children"],
}
# What every order event carries for the guide's sample order.
ORDER_PROPERTIES = {
    "OrderId": "1234",
    "Categories": ["Fiction", "Children"],
    "ItemNames": ["Winnie the Pooh"],
    "DiscountCode": "Free Shipping",
    "DiscountValue": 5.0,
    "Items": [ITEM],
    "BillingAddress": ADDRESS,
    "ShippingAddress": ADDRESS,
}


def event_attributes(request: KlaviyoRequest) -> dict[str, Any]:
    assert (request.endpoint, request.method, request.path) == (
        Endpoint.CREATE_EVENT,
        "POST",
        "/api/events",
    )
    assert_valid_request(request)
    return request.body["data"]["attributes"]  # type: ignore[index,no-any-return]


def assert_order_event(request: KlaviyoRequest, metric: str, extra: dict[str, Any]) -> None:
    attributes = event_attributes(request)
    assert attributes["metric"]["data"]["attributes"]["name"] == metric
    assert attributes["properties"] == {**ORDER_PROPERTIES, **extra}
    assert attributes["value"] == 9.99
    assert attributes["value_currency"] == "USD"
    assert attributes["time"] == "2023-10-15T00:00:00Z"
    assert attributes["unique_id"] == EVENT_ID
    profile = attributes["profile"]["data"]
    assert profile["id"] == PROFILE_ID
    assert profile["attributes"]["email"] == "john.smith@shopmail.io"
    assert profile["attributes"]["external_id"] == "cust-1001"


def test_created_invoice() -> None:
    (request,) = invoice_created(sample("InvoiceCreated"), CONTEXT).requests
    assert_order_event(request, "Created Invoice", {"MissingInformation": ["Size selection"]})


def test_failed_payment() -> None:
    (request,) = payment_failed(sample("PaymentFailed"), CONTEXT).requests
    assert_order_event(
        request,
        "Failed Payment",
        {
            "PaymentFailure": "Credit card not accepted",
            "PaymentNextSteps": "Please use a different payment method.",
        },
    )


@pytest.mark.parametrize(
    ("status", "update_type"),
    [("SHIPPED", "Shipped"), ("OUT_FOR_DELIVERY", "Out for delivery"), ("DELIVERED", "Delivered")],
)
def test_shipping_update(status: str, update_type: str) -> None:
    (request,) = shipment_updated(sample("ShipmentUpdated", status=status), CONTEXT).requests
    assert_order_event(
        request,
        "Shipping Update",
        {
            "UpdateType": update_type,
            "Carrier": "UPS",
            "TrackingNumber": "1Z999AA10123456784",
            "TrackingUrl": "https://www.ups.com/track?tracknum=1Z999AA10123456784",
        },
    )


def test_shipping_update_without_tracking_leaves_it_out() -> None:
    datum = sample("ShipmentUpdated", carrier=None, tracking_number=None, tracking_url=None)
    (request,) = shipment_updated(datum, CONTEXT).requests
    assert_order_event(request, "Shipping Update", {"UpdateType": "Out for delivery"})


def test_three_shipment_updates_of_one_order_are_three_events() -> None:
    statuses = [
        ("0a000000-0000-4000-8000-000000000001", "SHIPPED"),
        ("0a000000-0000-4000-8000-000000000002", "OUT_FOR_DELIVERY"),
        ("0a000000-0000-4000-8000-000000000003", "DELIVERED"),
    ]
    unique_ids = []
    for event_id, status in statuses:
        datum = sample("ShipmentUpdated", event_id=event_id, status=status)
        (request,) = shipment_updated(datum, CONTEXT).requests
        unique_ids.append(event_attributes(request)["unique_id"])
    assert unique_ids == [event_id for event_id, _ in statuses]
    assert "1234" not in unique_ids  # never the order id


def test_placed_order_then_one_ordered_product_per_line_item() -> None:
    second = line_item(
        product_id="2222",
        sku=None,
        name="Paddington",
        quantity=3,
        unit_price=Decimal("4.50"),
        row_total=None,  # null → unit_price × quantity
        product_url=None,
        image_url=None,
        categories=["Children", "Bears"],
    )
    datum = sample("OrderPlaced", order=order(items=[line_item(), second], total=Decimal("23.49")))

    placed, first_product, second_product = order_placed(datum, CONTEXT).requests

    attributes = event_attributes(placed)
    assert attributes["metric"]["data"]["attributes"]["name"] == "Placed Order"
    second_item = {
        "ProductID": "2222",
        "ProductName": "Paddington",
        "Quantity": 3,
        "ItemPrice": 4.5,
        "RowTotal": 13.5,
        "Categories": ["Children", "Bears"],
    }
    assert attributes["properties"] == {
        **ORDER_PROPERTIES,
        "Categories": ["Fiction", "Children", "Bears"],  # distinct, first seen first
        "ItemNames": ["Winnie the Pooh", "Paddington"],
        "Items": [ITEM, second_item],
        "PaymentMethod": "Visa ending 4242",
    }
    assert attributes["value"] == 23.49
    assert attributes["unique_id"] == EVENT_ID

    for n, (request, item, value) in enumerate(
        [(first_product, ITEM, 9.99), (second_product, second_item, 13.5)]
    ):
        product = event_attributes(request)
        assert product["metric"]["data"]["attributes"]["name"] == "Ordered Product"
        assert product["properties"] == {**item, "OrderId": "1234"}
        assert product["value"] == value
        assert product["value_currency"] == "USD"
        assert product["unique_id"] == f"{EVENT_ID}:{n}"
        assert product["time"] == attributes["time"]
        assert product["profile"] == attributes["profile"]


def test_order_without_optional_parts_sends_no_nulls() -> None:
    bare = order(
        items=[],
        discount_code=None,
        discount_value=None,
        billing_address=None,
        shipping_address=None,
        payment_method=None,
    )
    (request,) = order_placed(sample("OrderPlaced", order=bare), CONTEXT).requests
    assert event_attributes(request)["properties"] == {
        "OrderId": "1234",
        "Categories": [],
        "ItemNames": [],
        "Items": [],
    }
