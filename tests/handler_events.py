"""Domain-event datums for handler tests, shaped as fastavro reads them (tz-aware UTC
datetimes, Decimal amounts, None for null), built directly: no codec, no I/O.

``sample(record)`` gives the guide's sample data for each record; ``datums(record)`` is a
hypothesis strategy of arbitrary valid datums of that record.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
OCCURRED_AT = datetime(2023, 10, 15, tzinfo=UTC)
EVENT_ID = "9f1c6a58-2d1e-4c36-8f60-1a2b3c4d5e01"
PROFILE_ID = "01H81WC034AKRMQJQARPEEBHJE"


def customer(**overrides: Any) -> dict[str, Any]:
    return {
        "customer_id": "cust-1001",
        "klaviyo_profile_id": PROFILE_ID,
        "email": "john.smith@shopmail.io",
        "phone_number": "+15551234567",
        "first_name": "John",
        "last_name": "Smith",
        "address": {
            "address1": "123 Abc St",
            "address2": None,
            "city": "Boston",
            "region": "MA",
            "country": "United States",
            "zip": "02110",
        },
        **overrides,
    }


def representative(**overrides: Any) -> dict[str, Any]:
    return customer(
        customer_id="rep-7",
        klaviyo_profile_id=None,
        email="sam.rivera@shop-sales.io",
        phone_number=None,
        first_name="Sam",
        last_name="Rivera",
        address=None,
        **overrides,
    )


def contact_address(**overrides: Any) -> dict[str, Any]:
    return {
        "first_name": "John",
        "last_name": "Smith",
        "address1": "123 Abc St",
        "address2": None,
        "city": "Boston",
        "region_code": "MA",
        "country_code": "US",
        "zip": "02110",
        "phone": "+15551234567",
        **overrides,
    }


def line_item(**overrides: Any) -> dict[str, Any]:
    return {
        "product_id": "1111",
        "sku": "WINNIEPOOH",
        "name": "Winnie the Pooh",
        "quantity": 1,
        "unit_price": Decimal("9.99"),
        "row_total": Decimal("9.99"),
        "product_url": "http://www.example.com/path/to/product",
        "image_url": "http://www.example.com/path/to/product/image.png",
        "categories": ["Fiction", "Children"],
        **overrides,
    }


def order(**overrides: Any) -> dict[str, Any]:
    return {
        "order_id": "1234",
        "currency": "USD",
        "items": [line_item()],
        "discount_code": "Free Shipping",
        "discount_value": Decimal("5.00"),
        "total": Decimal("9.99"),
        "billing_address": contact_address(),
        "shipping_address": contact_address(),
        "payment_method": "Visa ending 4242",
        **overrides,
    }


def sample(record: str, **overrides: Any) -> dict[str, Any]:
    """The guide's sample data as a datum of ``record`` (short name), fields overridable."""
    extra: dict[str, dict[str, Any]] = {
        "AccountCreated": {"customer": customer(), "signup_source": "Checkout"},
        "AccountUpdated": {
            "customer": customer(),
            "update_type": "Property Update",
            "changes": [
                {
                    "field": "FavoriteColors",
                    "old_value": ["green", "yellow"],
                    "new_value": ["green", "yellow", "black"],
                },
                {"field": "Birthday", "old_value": None, "new_value": "1989-01-18 00:00:00"},
            ],
        },
        "AccountEmailChanged": {
            "customer_id": "cust-1001",
            "klaviyo_profile_id": PROFILE_ID,
            "old_email": "john.smith@shopmail.io",
            "new_email": "john@smith.family",
        },
        "PasswordResetRequested": {
            "customer": customer(),
            "reset_url": "https://www.website.com/reset/1234567890987654321",
            "expires_at": None,
        },
        "InvoiceCreated": {
            "customer": customer(),
            "order": order(),
            "missing_information": ["Size selection"],
        },
        "OrderPlaced": {"customer": customer(), "order": order()},
        "PaymentFailed": {
            "customer": customer(),
            "order": order(),
            "failure_reason": "Credit card not accepted",
            "next_steps": "Please use a different payment method.",
        },
        "ShipmentUpdated": {
            "customer": customer(),
            "order": order(),
            "status": "OUT_FOR_DELIVERY",
            "carrier": "UPS",
            "tracking_number": "1Z999AA10123456784",
            "tracking_url": "https://www.ups.com/track?tracknum=1Z999AA10123456784",
        },
        "LeadCaptured": {
            "lead": customer(klaviyo_profile_id=None, phone_number="(617) 555-0188"),
            "action": "Filled out whitepaper request form",
            "lead_source": "Whitepaper request form",
            "representative": representative(),
        },
        "LeadAssigned": {
            "lead": customer(klaviyo_profile_id=None, phone_number="(617) 555-0188"),
            "action": "Filled out whitepaper request form",
            "lead_source": "Whitepaper request form",
            "representative": representative(),
        },
    }
    return {"event_id": EVENT_ID, "occurred_at": OCCURRED_AT, **extra[record], **overrides}


# ---------------------------------------------------------------- hypothesis strategies

_text = st.text(max_size=12)
# Mostly present, sometimes empty: an empty customer id is no identifier.
_id = st.one_of(*[st.text(min_size=1, max_size=12)] * 3, st.just(""))
_opt_text = st.none() | _text
_amount = st.decimals(
    min_value=Decimal("-9999999999.99"),
    max_value=Decimal("9999999999.99"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)
_phone = (
    st.none()
    | _text
    | st.sampled_from(
        ["+15551234567", "(617) 555-0188", "020 7946 0958", "+44 20 7946 0958", "12", "+999 1"]
    )
)
_email = st.none() | _text | st.emails()
# Mostly times Klaviyo accepts, sometimes far outside (the handler must refuse those).
_moment = st.one_of(
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2025, 12, 31)),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC))
_event_id = st.uuids().map(str)
_field_value = st.one_of(
    st.none(),
    _text,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.lists(_text, max_size=4),
)

_postal = st.fixed_dictionaries(
    {k: _opt_text for k in ("address1", "address2", "city", "region", "country", "zip")}
)
_contact = st.fixed_dictionaries(
    {
        k: _opt_text
        for k in (
            "first_name",
            "last_name",
            "address1",
            "address2",
            "city",
            "region_code",
            "country_code",
            "zip",
            "phone",
        )
    }
)
customers = st.fixed_dictionaries(
    {
        "customer_id": _id,
        "klaviyo_profile_id": st.none()
        | st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=26, max_size=26),
        "email": _email,
        "phone_number": _phone,
        "first_name": _opt_text,
        "last_name": _opt_text,
        "address": st.none() | _postal,
    }
)
_items = st.fixed_dictionaries(
    {
        "product_id": _text,
        "sku": _opt_text,
        "name": _text,
        "quantity": st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "unit_price": _amount,
        "row_total": st.none() | _amount,
        "product_url": _opt_text,
        "image_url": _opt_text,
        "categories": st.lists(_text, max_size=4),
    }
)
orders = st.fixed_dictionaries(
    {
        "order_id": _text,
        "currency": _text,
        "items": st.lists(_items, max_size=4),
        "discount_code": _opt_text,
        "discount_value": st.none() | _amount,
        "total": _amount,
        "billing_address": st.none() | _contact,
        "shipping_address": st.none() | _contact,
        "payment_method": _opt_text,
    }
)
_changes = st.lists(
    st.fixed_dictionaries({"field": _text, "old_value": _field_value, "new_value": _field_value}),
    max_size=5,
)
_lead = {"lead": customers, "action": _text, "lead_source": _text}
_order_event = {"customer": customers, "order": orders}

_EXTRA: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "AccountCreated": {"customer": customers, "signup_source": _opt_text},
    "AccountUpdated": {"customer": customers, "update_type": _text, "changes": _changes},
    "AccountEmailChanged": {
        "customer_id": _id,
        "klaviyo_profile_id": customers.map(lambda c: c["klaviyo_profile_id"]),
        "old_email": _email.map(lambda e: e or ""),
        "new_email": st.one_of(*[st.emails()] * 3, st.just("")),
    },
    "PasswordResetRequested": {
        "customer": customers,
        "reset_url": _text,
        "expires_at": st.none() | _moment,
    },
    "InvoiceCreated": {**_order_event, "missing_information": st.lists(_text, max_size=3)},
    "OrderPlaced": _order_event,
    "PaymentFailed": {**_order_event, "failure_reason": _text, "next_steps": _text},
    "ShipmentUpdated": {
        **_order_event,
        "status": st.sampled_from(["SHIPPED", "OUT_FOR_DELIVERY", "DELIVERED"]),
        "carrier": _opt_text,
        "tracking_number": _opt_text,
        "tracking_url": _opt_text,
    },
    "LeadCaptured": {**_lead, "representative": st.none() | customers},
    "LeadAssigned": {**_lead, "representative": customers},
}


def datums(record: str) -> st.SearchStrategy[dict[str, Any]]:
    """Arbitrary valid datums of ``record`` (short name), as fastavro would read them."""
    return st.fixed_dictionaries({"event_id": _event_id, "occurred_at": _moment, **_EXTRA[record]})


def within_time_limits(moment: datetime, now: datetime) -> bool:
    """Whether Klaviyo takes ``moment`` as an event time (1990 or later, ≤ 1 year ahead)."""
    return moment.year >= 1990 and moment <= now + timedelta(days=365)
