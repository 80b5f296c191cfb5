"""Account events → Klaviyo requests, checked field by field against the contract."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from consumer.errors import ExpiredEvent, MalformedEvent
from consumer.handlers.accounts import (
    account_created,
    account_email_changed,
    account_updated,
    password_reset_requested,
)
from consumer.handlers.context import HandlerContext
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from tests.fixtures.handler_events import EVENT_ID, NOW, PROFILE_ID, customer, sample
from tests.fixtures.klaviyo_schemas import assert_valid_request

CONTEXT = HandlerContext(now=NOW, default_region="US")

# The guide's John Smith, as Klaviyo must receive him.
JOHN = {
    "type": "profile",
    "id": PROFILE_ID,
    "attributes": {
        "email": "john.smith@shopmail.io",
        "phone_number": "+15551234567",
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
    },
}


def only_event(plan: Plan) -> dict[str, Any]:
    """The attributes of the plan's single Create Event, after checking it is one."""
    (request,) = plan.requests
    assert_create_event(request)
    return request.body["data"]["attributes"]  # type: ignore[index,no-any-return]


def assert_create_event(request: KlaviyoRequest) -> None:
    assert (request.endpoint, request.method, request.path) == (
        Endpoint.CREATE_EVENT,
        "POST",
        "/api/events",
    )
    assert request.body is not None and request.body["data"]["type"] == "event"
    assert_valid_request(request)


def metric(attributes: dict[str, Any]) -> str:
    assert attributes["metric"]["data"]["type"] == "metric"
    return attributes["metric"]["data"]["attributes"]["name"]  # type: ignore[no-any-return]


def test_created_account() -> None:
    plan = account_created(sample("AccountCreated"), CONTEXT)

    attributes = only_event(plan)
    assert metric(attributes) == "Created Account"
    assert attributes["properties"] == {"SignupSource": "Checkout"}
    assert attributes["profile"] == {"data": JOHN}
    assert attributes["time"] == "2023-10-15T00:00:00Z"
    assert attributes["unique_id"] == EVENT_ID
    assert "value" not in attributes and "value_currency" not in attributes
    assert plan.warnings == ()


def test_created_account_without_signup_source_sends_empty_properties() -> None:
    attributes = only_event(account_created(sample("AccountCreated", signup_source=None), CONTEXT))
    assert attributes["properties"] == {}


def test_updated_account_lists_changes_and_sets_new_values_on_the_profile() -> None:
    attributes = only_event(account_updated(sample("AccountUpdated"), CONTEXT))

    assert metric(attributes) == "Updated Account"
    assert attributes["properties"] == {
        "UpdateType": "Property Update",
        "UpdatedProperties": ["FavoriteColors", "Birthday"],
        # Birthday had no old value: left out, never null.
        "OldValues": {"FavoriteColors": ["green", "yellow"]},
        "NewValues": {
            "FavoriteColors": ["green", "yellow", "black"],
            "Birthday": "1989-01-18 00:00:00",
        },
    }
    # Guide trap: profile properties live under attributes, not beside them.
    profile = attributes["profile"]["data"]
    assert "properties" not in profile
    assert profile["attributes"]["properties"] == {
        "FavoriteColors": ["green", "yellow", "black"],
        "Birthday": "1989-01-18 00:00:00",
    }
    assert attributes["unique_id"] == EVENT_ID


def test_updated_account_carries_every_value_type() -> None:
    changes = [
        {"field": "Vip", "old_value": False, "new_value": True},
        {"field": "Points", "old_value": 10, "new_value": 2**62},
        {"field": "Score", "old_value": 1.5, "new_value": None},
    ]
    attributes = only_event(account_updated(sample("AccountUpdated", changes=changes), CONTEXT))
    assert attributes["properties"]["UpdatedProperties"] == ["Vip", "Points", "Score"]
    assert attributes["properties"]["OldValues"] == {"Vip": False, "Points": 10, "Score": 1.5}
    assert attributes["properties"]["NewValues"] == {"Vip": True, "Points": 2**62}
    assert attributes["profile"]["data"]["attributes"]["properties"] == {
        "Vip": True,
        "Points": 2**62,
    }


def test_updated_account_refuses_a_value_json_cannot_carry() -> None:
    changes = [{"field": "Score", "old_value": None, "new_value": float("nan")}]
    with pytest.raises(MalformedEvent) as caught:
        account_updated(sample("AccountUpdated", changes=changes), CONTEXT)
    assert caught.value.reason == "invalid_event"
    assert caught.value.field == "changes[0].new_value"


def test_email_change_with_known_profile_patches_then_records_the_update() -> None:
    plan = account_email_changed(sample("AccountEmailChanged"), CONTEXT)

    patch, event = plan.requests
    assert (patch.endpoint, patch.method, patch.path) == (
        Endpoint.UPDATE_PROFILE,
        "PATCH",
        f"/api/profiles/{PROFILE_ID}",
    )
    assert patch.body == {
        "data": {"type": "profile", "id": PROFILE_ID, "attributes": {"email": "john@smith.family"}}
    }
    assert patch.fallback is None and patch.binds is None
    assert_valid_request(patch)

    assert_create_event(event)
    attributes = event.body["data"]["attributes"]  # type: ignore[index]
    assert metric(attributes) == "Updated Account"
    assert attributes["properties"] == {
        "UpdateType": "Email Update",
        "UpdatedProperties": ["email"],
        "OldValues": {"email": "john.smith@shopmail.io"},
        "NewValues": {"email": "john@smith.family"},
    }
    assert attributes["profile"] == {
        "data": {
            "type": "profile",
            "id": PROFILE_ID,
            "attributes": {"email": "john@smith.family", "external_id": "cust-1001"},
        }
    }
    assert attributes["unique_id"] == EVENT_ID
    assert attributes["time"] == "2023-10-15T00:00:00Z"


def test_email_change_without_profile_id_looks_up_by_old_email_with_import_fallback() -> None:
    plan = account_email_changed(sample("AccountEmailChanged", klaviyo_profile_id=None), CONTEXT)

    lookup, patch, event = plan.requests
    assert (lookup.endpoint, lookup.method, lookup.path) == (
        Endpoint.GET_PROFILES,
        "GET",
        "/api/profiles",
    )
    assert lookup.query == (("filter", 'equals(email,"john.smith@shopmail.io")'),)
    assert lookup.binds == "profile_id" and lookup.body is None

    assert (patch.endpoint, patch.method) == (Endpoint.UPDATE_PROFILE, "PATCH")
    assert patch.needs() == ("profile_id",)
    bound = patch.bind({"profile_id": "01FOUND"})
    assert bound.path == "/api/profiles/01FOUND"
    assert bound.body == {
        "data": {"type": "profile", "id": "01FOUND", "attributes": {"email": "john@smith.family"}}
    }
    assert_valid_request(bound)

    fallback = patch.fallback
    assert fallback is not None
    assert (fallback.endpoint, fallback.method, fallback.path) == (
        Endpoint.PROFILE_IMPORT,
        "POST",
        "/api/profile-import",
    )
    assert fallback.body == {
        "data": {
            "type": "profile",
            "attributes": {"email": "john@smith.family", "external_id": "cust-1001"},
        }
    }
    assert_valid_request(fallback)

    assert_create_event(event)
    profile = event.body["data"]["attributes"]["profile"]["data"]  # type: ignore[index]
    assert profile == {
        "type": "profile",
        "attributes": {"email": "john@smith.family", "external_id": "cust-1001"},
    }


def test_email_lookup_filter_quotes_the_address() -> None:
    datum = sample("AccountEmailChanged", klaviyo_profile_id=None, old_email='a"b\\c@x.io')
    lookup = account_email_changed(datum, CONTEXT).requests[0]
    assert lookup.query == (("filter", r'equals(email,"a\"b\\c@x.io")'),)


def test_email_change_with_neither_profile_id_nor_old_email_imports_the_profile() -> None:
    datum = sample("AccountEmailChanged", klaviyo_profile_id=None, old_email="")
    create, event = account_email_changed(datum, CONTEXT).requests
    assert (create.endpoint, create.method, create.path) == (
        Endpoint.PROFILE_IMPORT,
        "POST",
        "/api/profile-import",
    )
    assert create.body == {
        "data": {
            "type": "profile",
            "attributes": {"email": "john@smith.family", "external_id": "cust-1001"},
        }
    }
    assert_valid_request(create)
    assert_create_event(event)


def test_email_change_to_an_empty_address_is_refused() -> None:
    with pytest.raises(MalformedEvent) as caught:
        account_email_changed(sample("AccountEmailChanged", new_email=""), CONTEXT)
    assert caught.value.field == "new_email"


def test_reset_password_puts_the_link_in_event_and_profile_properties() -> None:
    link = "https://www.website.com/reset/1234567890987654321"
    attributes = only_event(password_reset_requested(sample("PasswordResetRequested"), CONTEXT))

    assert metric(attributes) == "Reset Password"
    assert attributes["properties"] == {"PasswordResetLink": link}
    profile = attributes["profile"]["data"]
    assert profile["attributes"]["properties"] == {"PasswordResetLink": link}
    assert "properties" not in profile
    assert attributes["unique_id"] == EVENT_ID


def test_reset_password_not_yet_expired_is_sent() -> None:
    datum = sample("PasswordResetRequested", expires_at=NOW + timedelta(milliseconds=1))
    assert metric(only_event(password_reset_requested(datum, CONTEXT))) == "Reset Password"


@pytest.mark.parametrize("age", [timedelta(0), timedelta(minutes=5)])
def test_reset_password_expired_is_refused(age: timedelta) -> None:
    datum = sample("PasswordResetRequested", expires_at=NOW - age)
    with pytest.raises(ExpiredEvent) as caught:
        password_reset_requested(datum, CONTEXT)
    assert caught.value.reason == "expired"
    assert caught.value.field == "expires_at"


def test_event_time_is_the_domain_events_not_the_processing_time() -> None:
    occurred = NOW - timedelta(days=3, milliseconds=250)
    attributes = only_event(
        account_created(sample("AccountCreated", occurred_at=occurred), CONTEXT)
    )
    assert attributes["time"] == "2024-02-27T11:59:59.750Z"


def test_profile_without_optional_fields_sends_no_nulls() -> None:
    bare = customer(
        klaviyo_profile_id=None,
        email=None,
        phone_number=None,
        first_name=None,
        last_name=None,
        address=None,
    )
    attributes = only_event(account_created(sample("AccountCreated", customer=bare), CONTEXT))
    assert attributes["profile"] == {
        "data": {"type": "profile", "attributes": {"external_id": "cust-1001"}}
    }
