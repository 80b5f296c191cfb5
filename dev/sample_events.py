"""A realistic sample of every topic of the contract, for the demo and for trying things out.

Generated in code (seeded, so a run is reproducible apart from the clock) in the plain-JSON form
of ``shop.events``: several customers per topic, keyed by customer id, with the guide's shapes
(orders with line items and addresses, account changes of every value type, leads with and
without a representative). Times are relative to ``now`` so password-reset links are still
valid when the relay sees them.

A few records are *planted* to show what the relay does with bad input (see :class:`Planted`):
a value that is not Avro at all, an invoice with more line items than Klaviyo accepts, a
password reset whose link has already expired, and a customer whose phone number cannot be read
(the event still goes, without the phone, and the relay counts the warning).

Command line: ``python -m dev.sample_events [--per-topic N] [--out DIR]`` writes one
``<topic>.jsonl`` per topic (the planted undecodable record left out: it is not JSON), for
``python -m consumer produce``.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from consumer.errors import Reason
from consumer.rfc3339 import format_rfc3339
from consumer.topics import CONTRACT_TOPICS

JSON = dict[str, Any]

# More line items than Klaviyo accepts in one array (its documented limit is 4,000).
OVERSIZED_ORDER_ITEMS = 4001


class Planted(StrEnum):
    """The bad records of the sample and what the relay is expected to do with each."""

    UNDECODABLE = "undecodable"  # dead-lettered at the decode stage
    # Dead-lettered by the handler, with the reason of the same name.
    LIMIT_EXCEEDED = Reason.LIMIT_EXCEEDED.value
    EXPIRED = Reason.EXPIRED.value
    PHONE_UNPARSEABLE = "phone_unparseable"  # delivered without the phone, warning counted


@dataclass(frozen=True, slots=True)
class SampleRecord:
    topic: str
    key: str
    record: str  # full Avro record name
    event: JSON | None  # plain-JSON event; None for a raw (undecodable) value
    raw_value: bytes | None = None
    planted: Planted | None = None


@dataclass(frozen=True, slots=True)
class _Person:
    customer_id: str
    first_name: str
    last_name: str
    email: str
    phone: str | None
    address: JSON | None
    profile_id: str | None = None


_PEOPLE = (
    _Person(
        "cust-1001",
        "John",
        "Smith",
        "john.smith@shopmail.io",
        "+15551234567",
        {"address1": "123 Abc St", "city": "Boston", "region": "MA", "zip": "02110"},
        "01H81WC034AKRMQJQARPEEBHJE",
    ),
    _Person("cust-1002", "Jane", "Doe", "jane.doe@shopmail.io", "(617) 555-0188", None),
    _Person(
        "cust-1003",
        "Amara",
        "Okafor",
        "amara.okafor@fastpost.net",
        "+44 20 7946 0958",
        {"address1": "14 Carnaby St", "city": "London", "country": "United Kingdom"},
    ),
    _Person(
        "cust-1004",
        "Luis",
        "Fernández",
        "luis.fernandez@correo.es",
        "+34 912 345 678",
        {"address1": "Calle de Alcalá 21", "city": "Madrid", "zip": "28014"},
        "01HQ3ZK8V1T9N2B7C5X4W6Y8RA",
    ),
    _Person(
        "cust-1005",
        "Mei",
        "Chen",
        "mei.chen@inboxly.com",
        "415.555.0142",
        {"address1": "500 Howard St", "city": "San Francisco", "region": "CA", "zip": "94105"},
    ),
    _Person(
        "cust-1006",
        "Tomasz",
        "Nowak",
        "t.nowak@pocztex.pl",
        None,
        {"address1": "ul. Marszałkowska 10", "city": "Warszawa", "country": "Poland"},
    ),
    _Person(
        "cust-1007",
        "Priya",
        "Raman",
        "priya.raman@mailhub.in",
        "+91 98765 43210",
        None,
        "01HS0B4Q6M2D8E9F7G1H3J5K7L",
    ),
    _Person(
        "cust-1008",
        "Olivia",
        "Brown",
        "olivia.brown@shopmail.io",
        "(212) 555-0199",
        {"address1": "77 Grand St", "city": "New York", "region": "NY", "zip": "10013"},
    ),
)
_REPRESENTATIVES = (
    _Person("rep-7", "Sam", "Rivera", "sam.rivera@shop-sales.io", None, None),
    _Person("rep-9", "Nora", "Lindqvist", "nora.lindqvist@shop-sales.io", "+46 8 123 456 78", None),
)
# A customer whose phone number is not a number any country has: delivered without it.
_UNPARSEABLE_PHONE = _Person("cust-1099", "Kim", "Park", "kim.park@inboxly.com", "12", None)

_PRODUCTS = (
    ("1111", "WINNIEPOOH", "Winnie the Pooh", "9.99", ["Fiction", "Children"]),
    ("1112", "HUNGRYCAT", "The Very Hungry Caterpillar", "7.50", ["Children", "Picture Books"]),
    ("2040", "DUNE-HC", "Dune (Hardcover)", "24.00", ["Fiction", "Science Fiction"]),
    ("3301", "MUG-BLUE", "Reading Mug, Blue", "12.00", ["Home", "Gifts"]),
    ("3302", "LAMP-CLIP", "Clip-on Reading Lamp", "18.95", ["Home", "Accessories"]),
    ("4410", "ATLAS-2024", "World Atlas 2024", "35.00", ["Reference", "Travel"]),
    ("5120", "BKMARK-SET", "Leather Bookmark Set", "6.25", ["Gifts", "Accessories"]),
)
_CARRIERS = (
    ("UPS", "1Z999AA1{:010d}", "https://www.ups.com/track?tracknum={}"),
    ("FedEx", "7{:011d}", "https://www.fedex.com/fedextrack/?trknbr={}"),
    ("USPS", "9400{:018d}", "https://tools.usps.com/go/TrackConfirmAction?tLabels={}"),
)
_PAYMENT_FAILURES = (
    ("Credit card not accepted", "Please use a different payment method."),
    ("Card expired", "Update the card's expiry date in your account and try again."),
    ("Insufficient funds", "Try again later or choose another payment method."),
)
_LEAD_ACTIONS = (
    ("Filled out whitepaper request form", "Whitepaper request form"),
    ("Requested a bulk-order quote", "Wholesale enquiry page"),
    ("Booked a demo call", "Trade show QR code"),
)


def sample(now: datetime, per_topic: int = 4, *, seed: int = 7) -> list[SampleRecord]:
    """``per_topic`` good events on every topic of the contract, plus the planted records."""
    gen = _Generator(now, random.Random(seed))
    records = [
        gen.record(topic, person)
        for topic in CONTRACT_TOPICS
        for person in gen.customers(topic, per_topic)
    ]
    records.extend(gen.planted())
    return records


class _Generator:
    def __init__(self, now: datetime, rng: random.Random) -> None:
        self.now = now.astimezone(UTC)
        self.rng = rng
        self.orders = 20_000

    def customers(self, topic: str, count: int) -> Iterator[_Person]:
        """``count`` customers for ``topic``, starting at a different one on every topic so the
        keys of one topic are spread over partitions and differ from the next topic's."""
        start = sum(topic.encode()) % len(_PEOPLE)
        for n in range(count):
            yield _PEOPLE[(start + n) % len(_PEOPLE)]

    def record(self, topic: str, person: _Person) -> SampleRecord:
        builders: dict[str, Callable[[_Person], JSON]] = {
            "shop.account.created": self._created,
            "shop.account.updated": self._updated,
            "shop.account.email-changed": self._email_changed,
            "shop.account.password-reset-requested": self._password_reset_requested,
            "shop.order.invoice-created": self._invoice_created,
            "shop.order.placed": self._placed,
            "shop.order.payment-failed": self._payment_failed,
            "shop.order.shipment-updated": self._shipment_updated,
            "shop.lead.captured": self._captured,
            "shop.lead.assigned": self._assigned,
        }
        event = {**self._envelope(), **builders[topic](person)}
        return SampleRecord(topic, person.customer_id, CONTRACT_TOPICS[topic], event)

    def planted(self) -> list[SampleRecord]:
        """The bad records, one of each kind."""
        garbage = bytes([0x7B]) + self.rng.randbytes(47)  # not C3 01: no Avro single-object
        reset = "shop.account.password-reset-requested"
        expired = {**self._envelope(hours_ago=3), **self._password_reset_requested(_PEOPLE[1])}
        expired["expires_at"] = format_rfc3339(
            self.now - timedelta(hours=1), timespec="milliseconds"
        )
        invoice = "shop.order.invoice-created"
        oversized = {**self._envelope(), **self._invoice_created(_PEOPLE[4])}
        oversized["order"] = self._order(_PEOPLE[4], items=OVERSIZED_ORDER_ITEMS)
        created = "shop.account.created"
        return [
            SampleRecord(
                "shop.order.placed",
                "cust-1003",
                CONTRACT_TOPICS["shop.order.placed"],
                None,
                garbage,
                Planted.UNDECODABLE,
            ),
            SampleRecord(
                invoice,
                "cust-1005",
                CONTRACT_TOPICS[invoice],
                oversized,
                None,
                Planted.LIMIT_EXCEEDED,
            ),
            SampleRecord(
                reset, "cust-1002", CONTRACT_TOPICS[reset], expired, None, Planted.EXPIRED
            ),
            SampleRecord(
                created,
                _UNPARSEABLE_PHONE.customer_id,
                CONTRACT_TOPICS[created],
                {**self._envelope(), **self._created(_UNPARSEABLE_PHONE)},
                None,
                Planted.PHONE_UNPARSEABLE,
            ),
        ]

    # --- shared parts -------------------------------------------------------------------------

    def _envelope(self, hours_ago: float = 0.5) -> JSON:
        occurred = self.now - timedelta(seconds=self.rng.uniform(60, hours_ago * 3600))
        return {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "occurred_at": format_rfc3339(occurred, timespec="milliseconds"),
        }

    def _customer(self, person: _Person) -> JSON:
        address = None
        if person.address is not None:
            address = {
                field: person.address.get(field)
                for field in ("address1", "address2", "city", "region", "country", "zip")
            }
        return {
            "customer_id": person.customer_id,
            "klaviyo_profile_id": person.profile_id,
            "email": person.email,
            "phone_number": person.phone,
            "first_name": person.first_name,
            "last_name": person.last_name,
            "address": address,
        }

    def _contact(self, person: _Person) -> JSON:
        address = person.address or {}
        return {
            "first_name": person.first_name,
            "last_name": person.last_name,
            "address1": address.get("address1"),
            "address2": None,
            "city": address.get("city"),
            "region_code": address.get("region"),
            "country_code": "US" if address.get("region") else None,
            "zip": address.get("zip"),
            "phone": person.phone,
        }

    def _order(self, person: _Person, items: int | None = None) -> JSON:
        self.orders += self.rng.randint(1, 40)
        count = items if items is not None else self.rng.randint(1, 3)
        lines = []
        subtotal = Decimal(0)
        for n in range(count):
            if items is None:
                product_id, sku, name, price, categories = self.rng.choice(_PRODUCTS)
            else:  # a wholesale order of distinct catalogue numbers
                product_id, sku, name = f"9{n:05d}", f"BULK-{n:05d}", f"Catalogue item {n}"
                price, categories = "0.99", ["Wholesale"]
            quantity = self.rng.randint(1, 3)
            row_total = Decimal(price) * quantity
            subtotal += row_total
            lines.append(
                {
                    "product_id": product_id,
                    "sku": sku,
                    "name": name,
                    "quantity": quantity,
                    "unit_price": price,
                    # The contract lets producers leave the row total out (= price × quantity).
                    "row_total": str(row_total) if self.rng.random() < 0.7 else None,
                    "product_url": f"https://www.northwind-books.com/products/{product_id}",
                    "image_url": f"https://cdn.northwind-books.com/img/{product_id}.png",
                    "categories": categories,
                }
            )
        discount = Decimal("5.00") if subtotal > 20 and self.rng.random() < 0.5 else None
        contact = self._contact(person)
        return {
            "order_id": str(self.orders),
            "currency": "USD",
            "items": lines,
            "discount_code": "WELCOME5" if discount else None,
            "discount_value": str(discount) if discount else None,
            "total": str(subtotal - (discount or 0)),
            "billing_address": contact,
            "shipping_address": contact if self.rng.random() < 0.8 else None,
            "payment_method": self.rng.choice(("Visa ending 4242", "Mastercard ending 5454")),
        }

    # --- one builder per topic ------------------------------------------------------------------

    def _created(self, person: _Person) -> JSON:
        source = self.rng.choice(("Checkout", "Newsletter popup", "Mobile app", None))
        return {"customer": self._customer(person), "signup_source": source}

    def _updated(self, person: _Person) -> JSON:
        changes = self.rng.choice(
            (
                [
                    {
                        "field": "FavoriteColors",
                        "old_value": ["green", "yellow"],
                        "new_value": ["green", "yellow", "black"],
                    },
                    {"field": "Birthday", "old_value": None, "new_value": "1989-01-18 00:00:00"},
                ],
                [{"field": "AcceptsMarketing", "old_value": False, "new_value": True}],
                [
                    {"field": "LoyaltyPoints", "old_value": 120, "new_value": 245},
                    {"field": "PreferredStore", "old_value": None, "new_value": "Boston"},
                ],
                [{"field": "ShoeSize", "old_value": 8.5, "new_value": 9.0}],
            )
        )
        update_type = "Preferences Update" if len(changes) == 1 else "Property Update"
        return {"customer": self._customer(person), "update_type": update_type, "changes": changes}

    def _email_changed(self, person: _Person) -> JSON:
        local, domain = person.email.split("@")
        return {
            "customer_id": person.customer_id,
            "klaviyo_profile_id": person.profile_id,
            "old_email": person.email,
            "new_email": f"{local}.{self.rng.randint(10, 99)}@{domain}",
        }

    def _password_reset_requested(self, person: _Person) -> JSON:
        token = "".join(self.rng.choices("abcdefghijkmnpqrstuvwxyz23456789", k=32))
        expires = self.now + timedelta(hours=2) if self.rng.random() < 0.7 else None
        return {
            "customer": self._customer(person),
            "reset_url": f"https://www.northwind-books.com/account/reset/{token}",
            "expires_at": format_rfc3339(expires, timespec="milliseconds") if expires else None,
        }

    def _invoice_created(self, person: _Person) -> JSON:
        missing = self.rng.choice((["Size selection"], ["Shipping address", "Phone number"], []))
        return {
            "customer": self._customer(person),
            "order": self._order(person),
            "missing_information": missing,
        }

    def _placed(self, person: _Person) -> JSON:
        return {"customer": self._customer(person), "order": self._order(person)}

    def _payment_failed(self, person: _Person) -> JSON:
        reason, steps = self.rng.choice(_PAYMENT_FAILURES)
        return {
            "customer": self._customer(person),
            "order": self._order(person),
            "failure_reason": reason,
            "next_steps": steps,
        }

    def _shipment_updated(self, person: _Person) -> JSON:
        carrier, number_format, url_format = self.rng.choice(_CARRIERS)
        tracking = number_format.format(self.rng.randrange(10**9))
        return {
            "customer": self._customer(person),
            "order": self._order(person),
            "status": self.rng.choice(("SHIPPED", "OUT_FOR_DELIVERY", "DELIVERED")),
            "carrier": carrier,
            "tracking_number": tracking,
            "tracking_url": url_format.format(tracking),
        }

    def _captured(self, person: _Person) -> JSON:
        action, source = self.rng.choice(_LEAD_ACTIONS)
        representative = self.rng.choice((*_REPRESENTATIVES, None))
        return {
            "lead": self._customer(person),
            "action": action,
            "lead_source": source,
            "representative": self._customer(representative) if representative else None,
        }

    def _assigned(self, person: _Person) -> JSON:
        action, source = self.rng.choice(_LEAD_ACTIONS)
        return {
            "lead": self._customer(person),
            "action": action,
            "lead_source": source,
            "representative": self._customer(self.rng.choice(_REPRESENTATIVES)),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-topic", type=int, default=4, help="good events per topic")
    parser.add_argument("--out", type=Path, help="folder for <topic>.jsonl (default: stdout)")
    args = parser.parse_args(argv)
    records = sample(datetime.now(UTC), args.per_topic)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for topic in CONTRACT_TOPICS:
        lines = [orjson.dumps(r.event) + b"\n" for r in records if r.topic == topic and r.event]
        if args.out is None:
            sys.stdout.buffer.write(b"".join(lines))
        else:
            (args.out / f"{topic}.jsonl").write_bytes(b"".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
