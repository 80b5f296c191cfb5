"""Lead events → Klaviyo requests, checked field by field against the contract."""

from __future__ import annotations

from typing import Any

from consumer.handlers.context import HandlerContext
from consumer.handlers.leads import lead_assigned, lead_captured
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, PlanWarning
from tests.fixtures.handler_events import EVENT_ID, NOW, customer, sample
from tests.fixtures.klaviyo_schemas import assert_valid_request

CONTEXT = HandlerContext(now=NOW, default_region="US")

LEAD = {
    "type": "profile",
    "attributes": {
        "email": "john.smith@shopmail.io",
        "phone_number": "+16175550188",
        "external_id": "cust-1001",
        "first_name": "John",
        "last_name": "Smith",
        "location": {
            "address1": "123 Abc St",
            "city": "Boston",
            "region": "MA",
            "country": "United States",
            "zip": "02110",
        },
        "properties": {"MostRecentLeadSource": "Whitepaper request form"},
    },
}
REPRESENTATIVE = {
    "type": "profile",
    "attributes": {
        "email": "sam.rivera@shop-sales.io",
        "external_id": "rep-7",
        "first_name": "Sam",
        "last_name": "Rivera",
    },
}
NEW_LEAD_PROPERTIES = {
    "LeadFirstName": "John",
    "LeadLastName": "Smith",
    "LeadPhoneNumber": "+16175550188",
    "LeadEmailAddress": "john.smith@shopmail.io",
    "LeadAction": "Filled out whitepaper request form",
    "LeadSource": "Whitepaper request form",
}


def event_attributes(request: KlaviyoRequest) -> dict[str, Any]:
    assert (request.endpoint, request.method, request.path) == (
        Endpoint.CREATE_EVENT,
        "POST",
        "/api/events",
    )
    assert_valid_request(request)
    return request.body["data"]["attributes"]  # type: ignore[index,no-any-return]


def test_captured_lead_becomes_lead_and_notifies_the_representative() -> None:
    became, new = lead_captured(sample("LeadCaptured"), CONTEXT).requests

    attributes = event_attributes(became)
    assert attributes["metric"]["data"]["attributes"]["name"] == "Became Lead"
    assert attributes["properties"] == {"Action": "Filled out whitepaper request form"}
    assert attributes["profile"] == {"data": LEAD}
    assert attributes["time"] == "2023-10-15T00:00:00Z"

    rep = event_attributes(new)
    assert rep["metric"]["data"]["attributes"]["name"] == "New Lead"
    assert rep["properties"] == NEW_LEAD_PROPERTIES
    assert rep["profile"] == {"data": REPRESENTATIVE}
    # Different metrics and profiles: Klaviyo's (metric, profile, unique_id) keys differ, so
    # both carry the domain event's id and a redelivery still deduplicates each.
    assert attributes["unique_id"] == rep["unique_id"] == EVENT_ID


def test_captured_lead_without_representative_is_one_event() -> None:
    (became,) = lead_captured(sample("LeadCaptured", representative=None), CONTEXT).requests
    assert event_attributes(became)["metric"]["data"]["attributes"]["name"] == "Became Lead"


def test_assigned_lead_notifies_the_representative_only() -> None:
    (new,) = lead_assigned(sample("LeadAssigned"), CONTEXT).requests
    attributes = event_attributes(new)
    assert attributes["metric"]["data"]["attributes"]["name"] == "New Lead"
    assert attributes["properties"] == NEW_LEAD_PROPERTIES
    assert attributes["profile"] == {"data": REPRESENTATIVE}
    assert attributes["unique_id"] == EVENT_ID


def test_new_lead_shows_an_unreadable_lead_phone_as_given_and_leaves_out_unknowns() -> None:
    lead = customer(phone_number="call reception", first_name=None, email=None)
    (new,) = lead_assigned(sample("LeadAssigned", lead=lead), CONTEXT).requests
    properties = event_attributes(new)["properties"]
    assert properties["LeadPhoneNumber"] == "call reception"
    assert "LeadFirstName" not in properties and "LeadEmailAddress" not in properties


def test_warnings_of_both_profiles_are_reported() -> None:
    datum = sample(
        "LeadCaptured",
        lead=customer(phone_number="not a phone"),
        representative=customer(customer_id="rep-7", phone_number="nope"),
    )
    plan = lead_captured(datum, CONTEXT)
    assert plan.warnings == (
        PlanWarning("phone_unparseable", "lead.phone_number"),
        PlanWarning("phone_unparseable", "representative.phone_number"),
    )
