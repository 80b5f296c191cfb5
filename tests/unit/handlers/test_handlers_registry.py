"""The handler registry: topic → record → handler, overrides, dispatch and typed refusals."""

from __future__ import annotations

import pytest

from consumer.codec import DecodedEvent
from consumer.errors import MalformedEvent, UnknownRecord
from consumer.handlers.registry import HANDLERS, HandlerRegistry
from consumer.schemas import default_schemas_dir, load_store
from consumer.settings import SettingsError, load_settings
from tests.fixtures.contract import RECORDS, TOPICS
from tests.fixtures.handler_events import NOW, customer, sample


def event(record: str, **overrides: object) -> DecodedEvent:
    return DecodedEvent(f"shop.events.{record}", sample(record, **overrides))


def metrics(registry: HandlerRegistry, topic: str, decoded: DecodedEvent) -> list[str]:
    plan = registry.plan(topic, decoded, NOW)
    return [
        r.body["data"]["attributes"]["metric"]["data"]["attributes"]["name"]
        for r in plan.requests
        if r.path == "/api/events" and r.body is not None
    ]


def test_default_registry_serves_the_ten_contract_topics() -> None:
    registry = HandlerRegistry.from_settings(load_settings())
    assert sorted(registry.topics()) == sorted(TOPICS.values())
    for record, topic in TOPICS.items():
        assert registry.record_for(topic) == f"shop.events.{record}"


def test_every_handled_record_has_a_current_schema() -> None:
    store = load_store(default_schemas_dir())
    assert sorted(HANDLERS) == sorted(f"shop.events.{r}" for r in RECORDS)
    for record in HANDLERS:
        assert store.find_current(record) is not None, record


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("AccountCreated", ["Created Account"]),
        ("AccountUpdated", ["Updated Account"]),
        ("AccountEmailChanged", ["Updated Account"]),
        ("PasswordResetRequested", ["Reset Password"]),
        ("InvoiceCreated", ["Created Invoice"]),
        ("OrderPlaced", ["Placed Order", "Ordered Product"]),
        ("PaymentFailed", ["Failed Payment"]),
        ("ShipmentUpdated", ["Shipping Update"]),
        ("LeadCaptured", ["Became Lead", "New Lead"]),
        ("LeadAssigned", ["New Lead"]),
    ],
)
def test_each_topic_yields_the_contracts_metrics(record: str, expected: list[str]) -> None:
    registry = HandlerRegistry.from_settings(load_settings())
    assert metrics(registry, TOPICS[record], event(record)) == expected


def test_a_record_the_topic_does_not_carry_is_refused() -> None:
    registry = HandlerRegistry.from_settings(load_settings())
    with pytest.raises(UnknownRecord) as caught:
        registry.plan("shop.order.placed", event("AccountCreated"), NOW)
    assert caught.value.reason == "unknown_record"


def test_an_unknown_topic_is_refused() -> None:
    registry = HandlerRegistry.from_settings(load_settings())
    with pytest.raises(UnknownRecord):
        registry.record_for("shop.nothing")
    with pytest.raises(UnknownRecord):
        registry.plan("shop.nothing", event("AccountCreated"), NOW)


def test_override_lets_one_topic_carry_several_records_dispatched_by_name() -> None:
    settings = load_settings(
        topic_handlers={
            "legacy.orders": "shop.order.placed, PaymentFailed,shop.events.ShipmentUpdated"
        }
    )
    registry = HandlerRegistry.from_settings(settings)
    assert "legacy.orders" in registry.topics()
    assert registry.record_for("legacy.orders") == "shop.events.OrderPlaced"
    assert metrics(registry, "legacy.orders", event("OrderPlaced")) == [
        "Placed Order",
        "Ordered Product",
    ]
    assert metrics(registry, "legacy.orders", event("PaymentFailed")) == ["Failed Payment"]
    assert metrics(registry, "legacy.orders", event("ShipmentUpdated")) == ["Shipping Update"]
    with pytest.raises(UnknownRecord):
        registry.plan("legacy.orders", event("InvoiceCreated"), NOW)


def test_override_can_reroute_a_contract_topic() -> None:
    settings = load_settings(topic_handlers={"shop.order.placed": "InvoiceCreated"})
    registry = HandlerRegistry.from_settings(settings)
    assert registry.record_for("shop.order.placed") == "shop.events.InvoiceCreated"
    assert metrics(registry, "shop.order.placed", event("InvoiceCreated")) == ["Created Invoice"]


def test_override_naming_no_handler_is_a_configuration_error() -> None:
    with pytest.raises(SettingsError, match="TOPIC_HANDLERS"):
        HandlerRegistry.from_settings(load_settings(topic_handlers={"x": "NoSuchRecord"}))


def test_configured_topics_are_served_and_must_have_a_handler() -> None:
    settings = load_settings(topics=["shop.order.placed", "shop.lead.captured"])
    assert HandlerRegistry.from_settings(settings).topics() == [
        "shop.order.placed",
        "shop.lead.captured",
    ]
    with pytest.raises(SettingsError, match="TOPICS"):
        HandlerRegistry.from_settings(load_settings(topics=["shop.order.placed", "other"]))


def test_default_phone_region_comes_from_settings() -> None:
    registry = HandlerRegistry.from_settings(load_settings(default_phone_region="GB"))
    decoded = event("AccountCreated", customer=customer(phone_number="020 7946 0958"))
    (request,) = registry.plan("shop.account.created", decoded, NOW).requests
    profile = request.body["data"]["attributes"]["profile"]["data"]  # type: ignore[index]
    assert profile["attributes"]["phone_number"] == "+442079460958"


def test_a_datum_missing_a_required_field_is_malformed() -> None:
    datum = sample("PaymentFailed")
    del datum["failure_reason"]
    registry = HandlerRegistry.from_settings(load_settings())
    with pytest.raises(MalformedEvent) as caught:
        registry.plan(
            "shop.order.payment-failed", DecodedEvent("shop.events.PaymentFailed", datum), NOW
        )
    assert caught.value.reason == "invalid_event"
    assert caught.value.field == "failure_reason"
