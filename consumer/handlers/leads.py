"""Lead events: Became Lead on the lead's profile, New Lead on the representative's.

``unique_id``: Klaviyo deduplicates on (metric, profile, unique_id), so the captured lead's
Became Lead and New Lead both carry the plain event id: they differ in metric (and profile),
and a redelivery of the domain event still collapses onto each of them. No ``:<n>`` suffix,
which is reserved for several events of one metric from one domain event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumer.handlers.context import HandlerContext
from consumer.handlers.events import person_event
from consumer.handlers.profiles import e164
from consumer.klaviyo.requests import Plan

Datum = Mapping[str, Any]


def lead_captured(datum: Datum, context: HandlerContext) -> Plan:
    became = person_event(
        datum,
        context,
        metric="Became Lead",
        person=datum["lead"],
        field="lead",
        properties={"Action": datum["action"]},
        profile_properties={"MostRecentLeadSource": datum["lead_source"]},
    )
    if datum.get("representative") is None:
        return became
    new = _new_lead(datum, context)
    return Plan(became.requests + new.requests, became.warnings + new.warnings)


def lead_assigned(datum: Datum, context: HandlerContext) -> Plan:
    return _new_lead(datum, context)


def _new_lead(datum: Datum, context: HandlerContext) -> Plan:
    lead = datum["lead"]
    raw_phone = lead.get("phone_number")
    return person_event(
        datum,
        context,
        metric="New Lead",
        person=datum["representative"],
        field="representative",
        properties={
            "LeadFirstName": lead.get("first_name"),
            "LeadLastName": lead.get("last_name"),
            # Shown to the representative: E.164 when readable, as given otherwise.
            "LeadPhoneNumber": (e164(raw_phone, context.default_region) or raw_phone)
            if raw_phone
            else None,
            "LeadEmailAddress": lead.get("email"),
            "LeadAction": datum["action"],
            "LeadSource": datum["lead_source"],
        },
    )
