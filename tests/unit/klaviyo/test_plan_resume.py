"""A plan resumed after a crash: its first Create Event steps, accepted already, are left out."""

from __future__ import annotations

from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan


def request(endpoint: Endpoint, name: str) -> KlaviyoRequest:
    return KlaviyoRequest(endpoint, "POST", f"/api/{name}", {"name": name})


PROFILE = request(Endpoint.PROFILE_IMPORT, "profile")
PLACED = request(Endpoint.CREATE_EVENT, "placed")
FIRST = request(Endpoint.CREATE_EVENT, "first")
SECOND = request(Endpoint.CREATE_EVENT, "second")


def test_the_first_create_event_steps_are_left_out_and_the_rest_keeps_its_order() -> None:
    plan = Plan((PROFILE, PLACED, FIRST, SECOND))
    assert plan.without_events(0) is plan
    assert plan.without_events(2).requests == (PROFILE, SECOND)
    # Profile steps stay: they are idempotent, and a later step may need what they set.
    assert plan.without_events(5).requests == (PROFILE,)
