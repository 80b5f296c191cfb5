"""Account events: Created Account, Updated Account, the email change, Reset Password."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from consumer.errors import ExpiredEvent, MalformedEvent
from consumer.handlers.context import HandlerContext
from consumer.handlers.events import person_event
from consumer.handlers.limits import check_profile_request
from consumer.klaviyo.requests import Endpoint, JSONObject, KlaviyoRequest, Plan

Datum = Mapping[str, Any]

PROFILES_PATH = "/api/profiles"
PROFILE_IMPORT_PATH = "/api/profile-import"
# The name a profile lookup binds its answer to, used by the PATCH that follows it.
PROFILE_ID = "profile_id"


def account_created(datum: Datum, context: HandlerContext) -> Plan:
    return person_event(
        datum,
        context,
        metric="Created Account",
        person=datum["customer"],
        field="customer",
        properties={"SignupSource": datum.get("signup_source")},
    )


def account_updated(datum: Datum, context: HandlerContext) -> Plan:
    """Updated Account; the new values also become the profile's properties.

    A null old or new value is left out of ``OldValues``/``NewValues`` (never sent as null);
    the field is still listed in ``UpdatedProperties``.
    """
    old_values: dict[str, Any] = {}
    new_values: dict[str, Any] = {}
    for n, change in enumerate(datum["changes"]):
        name = change["field"]
        # A field changed twice in one event: its first old value, its last new value.
        old_values.setdefault(name, _json_value(change.get("old_value"), f"changes[{n}].old_value"))
        new_values[name] = _json_value(change.get("new_value"), f"changes[{n}].new_value")
    properties = {
        "UpdateType": datum["update_type"],
        "UpdatedProperties": list(new_values),
        "OldValues": {k: v for k, v in old_values.items() if v is not None},
        "NewValues": {k: v for k, v in new_values.items() if v is not None},
    }
    return person_event(
        datum,
        context,
        metric="Updated Account",
        person=datum["customer"],
        field="customer",
        properties=properties,
        profile_properties=new_values,
    )


def account_email_changed(datum: Datum, context: HandlerContext) -> Plan:
    """Change the profile's email, then record "Updated Account" on the profile.

    With the profile id known: one PATCH. Without it, the plan stays data: a lookup by the old
    email binds ``profile_id`` for the PATCH, whose fallback (no profile found) imports a
    profile with the new email and the customer id. The event then names the new email.
    """
    customer_id = datum["customer_id"]
    profile_id = datum.get("klaviyo_profile_id") or None
    old_email, new_email = datum["old_email"], datum["new_email"]
    if not new_email:
        raise MalformedEvent("new_email is empty", field="new_email")
    event = person_event(
        datum,
        context,
        metric="Updated Account",
        person={"customer_id": customer_id, "klaviyo_profile_id": profile_id, "email": new_email},
        field="customer",
        properties={
            "UpdateType": "Email Update",
            "UpdatedProperties": ["email"],
            "OldValues": {"email": old_email},
            "NewValues": {"email": new_email},
        },
    )
    update = _email_update(profile_id, old_email, new_email, customer_id)
    return Plan((*update, *event.requests), event.warnings)


def password_reset_requested(datum: Datum, context: HandlerContext) -> Plan:
    """Reset Password, the link in both the event's and the profile's properties (a flow's
    email reads either). A link already expired is refused: sending it would mail a dead link."""
    expires_at = datum.get("expires_at")
    if expires_at is not None and expires_at <= context.now:
        raise ExpiredEvent("password reset link has expired", field="expires_at")
    link = {"PasswordResetLink": datum["reset_url"]}
    return person_event(
        datum,
        context,
        metric="Reset Password",
        person=datum["customer"],
        field="customer",
        properties=link,
        profile_properties=link,
    )


def _email_update(
    profile_id: str | None, old_email: str, new_email: str, customer_id: str
) -> tuple[KlaviyoRequest, ...]:
    create = _profile_request(
        Endpoint.PROFILE_IMPORT,
        "POST",
        PROFILE_IMPORT_PATH,
        {"type": "profile", "attributes": {"email": new_email, "external_id": customer_id}},
    )
    if profile_id is not None:
        return (_patch_email(quote(profile_id, safe=""), profile_id, new_email),)
    if not old_email:  # nothing to look up by: the profile can only be created
        return (create,)
    lookup = KlaviyoRequest(
        Endpoint.GET_PROFILES,
        "GET",
        PROFILES_PATH,
        query=(("filter", f"equals(email,{_filter_string(old_email)})"),),
        binds=PROFILE_ID,
    )
    placeholder = "{" + PROFILE_ID + "}"
    patch = _patch_email(placeholder, placeholder, new_email)
    return (lookup, replace(patch, fallback=create))


def _patch_email(path_id: str, profile_id: str, new_email: str) -> KlaviyoRequest:
    return _profile_request(
        Endpoint.UPDATE_PROFILE,
        "PATCH",
        f"{PROFILES_PATH}/{path_id}",
        {"type": "profile", "id": profile_id, "attributes": {"email": new_email}},
    )


def _profile_request(
    endpoint: Endpoint, method: str, path: str, data: JSONObject
) -> KlaviyoRequest:
    body = {"data": data}
    check_profile_request(body)
    return KlaviyoRequest(endpoint, method, path, body)


def _filter_string(value: str) -> str:
    """A quoted string literal for Klaviyo's filter syntax (backslash-escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_value(value: Any, field: str) -> Any:
    """A FieldChange value as JSON can carry it (Avro doubles may be NaN or infinite)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedEvent(f"{field} is not a finite number", field=field)
    return list(value) if isinstance(value, list) else value
