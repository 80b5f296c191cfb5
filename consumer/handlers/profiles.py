"""A ``Customer`` record as the ``profile`` object of a Create Event.

Identifiers: ``id`` only when the producer knows the Klaviyo profile id, ``email``,
``phone_number`` normalised to E.164 and ``external_id`` = the shop's customer id. Empty strings
count as absent (Klaviyo rejects an empty identifier). A phone number that cannot be read is
left out with a warning; the event is refused only when no identifier at all remains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import phonenumbers

from consumer.errors import NoIdentifier
from consumer.handlers.context import HandlerContext
from consumer.handlers.values import compact
from consumer.klaviyo.requests import JSONObject, PlanWarning

_LOCATION_FIELDS = ("address1", "address2", "city", "region", "country", "zip")
# Parsing a number costs 60-110 µs of phonenumbers' Python code (a quarter of a batch-mode
# event's CPU); a customer's events repeat their raw number, so the last few thousand distinct
# (number, region) pairs are remembered. Bounded: about 200 bytes an entry.
_E164_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Profile:
    resource: JSONObject  # {"data": {"type": "profile", ...}}
    warnings: tuple[PlanWarning, ...] = ()


@lru_cache(maxsize=_E164_CACHE_SIZE)
def e164(raw: str, default_region: str) -> str | None:
    """``raw`` in E.164, or None when it cannot be read as a phone number.

    "Possible" (right length for its country) rather than "valid" (an allocated range): the
    guide's own +1 555 numbers are not allocated, and Klaviyo checks the format, not the range.
    """
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    formatted: str = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return formatted


def build_profile(
    customer: Mapping[str, Any],
    context: HandlerContext,
    *,
    field: str,
    properties: Mapping[str, Any] | None = None,
) -> Profile:
    """The profile for ``customer`` (a Customer datum; ``field`` names it in warnings/errors).

    ``properties`` become the profile's custom properties, under ``attributes.properties``.
    """
    warnings: list[PlanWarning] = []
    phone = None
    if raw_phone := customer.get("phone_number"):
        phone = e164(raw_phone, context.default_region)
        if phone is None:
            warnings.append(PlanWarning("phone_unparseable", f"{field}.phone_number"))
    profile_id = customer.get("klaviyo_profile_id") or None
    email = customer.get("email") or None
    external_id = customer["customer_id"] or None
    if not (profile_id or email or phone or external_id):
        raise NoIdentifier(
            f"{field} has no profile id, email, usable phone number or customer id", field=field
        )
    attributes = compact(
        {
            "email": email,
            "phone_number": phone,
            "external_id": external_id,
            "first_name": customer.get("first_name"),
            "last_name": customer.get("last_name"),
            "location": _location(customer.get("address")),
            "properties": compact(properties) or None if properties else None,
        }
    )
    data = compact({"type": "profile", "id": profile_id, "attributes": attributes})
    return Profile({"data": data}, tuple(warnings))


def _location(address: Mapping[str, Any] | None) -> JSONObject | None:
    if address is None:
        return None
    return compact({name: address.get(name) for name in _LOCATION_FIELDS}) or None
