"""KlaviyoRequest.at_priority: the same request, waiting at another priority and order."""

from __future__ import annotations

from dataclasses import fields

from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan


def _lookup_step() -> KlaviyoRequest:
    fallback = KlaviyoRequest(Endpoint.PROFILE_IMPORT, "POST", "/api/profile-import", {"b": 2})
    return KlaviyoRequest(
        Endpoint.UPDATE_PROFILE,
        "PATCH",
        "/api/profiles/{profile_id}",
        {"data": {"id": "{profile_id}"}},
        (("filter", "x"),),
        "other",
        fallback,
    )


def test_at_priority_keeps_every_other_field_and_moves_the_fallback_too() -> None:
    step = _lookup_step()
    moved = step.at_priority(3, 17)
    assert (moved.priority, moved.order) == (3, 17)
    assert moved.fallback is not None and step.fallback is not None
    assert (moved.fallback.priority, moved.fallback.order) == (3, 17)
    for f in fields(KlaviyoRequest):
        if f.name not in {"priority", "order", "fallback"}:
            assert getattr(moved, f.name) is getattr(step, f.name), f.name
    assert moved.fallback.body is step.fallback.body


def test_plan_at_priority_returns_itself_when_nothing_changes() -> None:
    plan = Plan((_lookup_step().at_priority(2, 5),))
    assert plan.at_priority(2, 5) is plan
    assert plan.at_priority(1, 5).requests[0].priority == 1
