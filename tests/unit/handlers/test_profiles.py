"""The Customer → Klaviyo profile mapping: identifiers, E.164 phones, location, properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.errors import NoIdentifier
from consumer.handlers.context import HandlerContext
from consumer.handlers.profiles import build_profile, e164
from consumer.klaviyo.requests import PlanWarning
from tests.fixtures.handler_events import NOW, customer

US = HandlerContext(now=NOW, default_region="US")
E164 = re.compile(r"^\+[1-9]\d{1,14}$")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+15551234567", "US", "+15551234567"),  # the guide's (unallocated) sample number
        ("(617) 555-0188", "US", "+16175550188"),
        ("617.555.0188", "US", "+16175550188"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+44 20 7946 0958", "US", "+442079460958"),  # an explicit country code wins
    ],
)
def test_e164_normalises_human_formats(raw: str, region: str, expected: str) -> None:
    assert e164(raw, region) == expected


@pytest.mark.parametrize("raw", ["call me", "12", "+999 1", "", "1" * 300])
def test_e164_gives_none_for_what_is_not_a_phone_number(raw: str) -> None:
    assert e164(raw, "US") is None


@given(st.text(max_size=30), st.sampled_from(["US", "GB", "DE", "FR", "ZZ"]))
def test_e164_output_is_always_e164(raw: str, region: str) -> None:
    result = e164(raw, region)
    assert result is None or E164.match(result)


def test_unparseable_phone_is_left_out_with_a_warning() -> None:
    profile = build_profile(customer(phone_number="ask at desk"), US, field="customer")
    assert "phone_number" not in profile.resource["data"]["attributes"]
    assert profile.resource["data"]["attributes"]["email"] == "john.smith@shopmail.io"
    assert profile.warnings == (PlanWarning("phone_unparseable", "customer.phone_number"),)


def test_unparseable_phone_does_not_block_when_only_the_customer_id_is_left() -> None:
    person = customer(klaviyo_profile_id=None, email=None, phone_number="??")
    profile = build_profile(person, US, field="lead")
    assert profile.resource["data"]["attributes"]["external_id"] == "cust-1001"
    assert profile.warnings == (PlanWarning("phone_unparseable", "lead.phone_number"),)


def test_no_identifier_left_is_refused() -> None:
    person = customer(customer_id="", klaviyo_profile_id=None, email=None, phone_number="??")
    with pytest.raises(NoIdentifier) as caught:
        build_profile(person, US, field="representative")
    assert caught.value.reason == "no_identifier"
    assert caught.value.field == "representative"


@pytest.mark.parametrize(
    "identifier",
    [
        {"klaviyo_profile_id": "01H81WC034AKRMQJQARPEEBHJE"},
        {"email": "a@b.io"},
        {"phone_number": "(617) 555-0188"},
        {"customer_id": "c-1"},
    ],
)
def test_any_one_identifier_is_enough(identifier: dict[str, str]) -> None:
    person = customer(customer_id="", klaviyo_profile_id=None, email=None, phone_number=None)
    person.update(identifier)
    data = build_profile(person, US, field="customer").resource["data"]
    assert data.get("id") or any(
        data["attributes"].get(k) for k in ("email", "phone_number", "external_id")
    )


def test_empty_strings_are_not_identifiers() -> None:
    person = customer(customer_id="c-1", klaviyo_profile_id="", email="", phone_number="")
    data = build_profile(person, US, field="customer").resource["data"]
    assert "id" not in data
    assert data["attributes"] == {
        "external_id": "c-1",
        "first_name": "John",
        "last_name": "Smith",
        "location": {
            "address1": "123 Abc St",
            "city": "Boston",
            "region": "MA",
            "country": "United States",
            "zip": "02110",
        },
    }


def test_default_region_reads_national_numbers() -> None:
    uk = HandlerContext(now=NOW, default_region="GB")
    data = build_profile(customer(phone_number="020 7946 0958"), uk, field="customer").resource
    assert data["data"]["attributes"]["phone_number"] == "+442079460958"


def test_location_is_left_out_when_the_address_is_all_null() -> None:
    empty = dict.fromkeys(("address1", "address2", "city", "region", "country", "zip"))
    data = build_profile(customer(address=empty), US, field="customer").resource["data"]
    assert "location" not in data["attributes"]


def test_properties_go_under_attributes_without_nulls() -> None:
    profile = build_profile(
        customer(), US, field="customer", properties={"MostRecentLeadSource": "Form", "X": None}
    )
    data = profile.resource["data"]
    assert set(data) == {"type", "id", "attributes"}  # the guide's trap: not beside attributes
    assert data["attributes"]["properties"] == {"MostRecentLeadSource": "Form"}


def test_all_null_properties_are_left_out() -> None:
    profile = build_profile(customer(), US, field="customer", properties={"X": None})
    assert "properties" not in profile.resource["data"]["attributes"]
