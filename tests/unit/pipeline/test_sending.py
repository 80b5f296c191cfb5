"""Sending until settled, the halt, and running a plan step by step (consumer.pipeline.sending)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from consumer.klaviyo.outcomes import Accepted, Fatal, Outcome, Permanent, Retryable
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.klaviyo.retry import RetryPolicy
from consumer.pipeline.sending import (
    Halt,
    PlanRunner,
    Sender,
    StepFailure,
    UnboundStep,
    metric_name,
)

FAST = RetryPolicy(base_seconds=0.001, cap_seconds=0.001)
LOOKUP = KlaviyoRequest(Endpoint.GET_PROFILES, "GET", "/api/profiles", binds="profile_id")
PATCH = KlaviyoRequest(
    Endpoint.UPDATE_PROFILE,
    "PATCH",
    "/api/profiles/{profile_id}",
    {"data": {"type": "profile", "id": "{profile_id}"}},
    fallback=KlaviyoRequest(Endpoint.PROFILE_IMPORT, "POST", "/api/profile-import"),
)
EVENT = KlaviyoRequest(Endpoint.CREATE_EVENT, "POST", "/api/events", {"data": {}})


class Script:
    """A fake Klaviyo answering from a list, recording what was sent."""

    def __init__(self, *outcomes: Outcome) -> None:
        self._outcomes: Iterator[Outcome] = iter(outcomes)
        self.sent: list[KlaviyoRequest] = []
        self.permits: list[Permit | None] = []

    async def send(self, request: KlaviyoRequest, permit: Permit | None = None) -> Outcome:
        self.sent.append(request)
        self.permits.append(permit)
        return next(self._outcomes)


def sender_for(script: Script) -> Sender:
    return Sender(script.send, FAST, Halt(lambda *_: None), rng=random.Random(7))


async def test_retryable_answers_are_sent_again_until_settled() -> None:
    script = Script(Retryable(503, "server_error"), Retryable(None, "timeout"), Accepted(202))
    reachable: list[bool] = []
    halt = Halt(lambda *_: None)
    sender = Sender(script.send, FAST, halt, on_reachable=reachable.append)
    assert await sender.settle(EVENT) == Accepted(202)
    assert len(script.sent) == 3
    assert reachable == [True, False, True]  # a 503 is an answer; a timeout is not


async def test_a_hold_waits_in_the_given_backoff_after_each_spent_budget() -> None:
    """The pipeline's holds wait where the client's retries do (the client's backoff, which a
    served answer cuts short: consumer.klaviyo.recovery), after the outcome that spent it."""
    outcomes = (Retryable(503, "server_error"), Retryable(None, "timeout"))
    script = Script(*outcomes, Accepted(202))
    waits: list[tuple[float, Retryable]] = []

    async def backoff(seconds: float, after: Retryable) -> None:
        waits.append((seconds, after))

    policy = RetryPolicy(base_seconds=600.0, cap_seconds=600.0)
    sender = Sender(script.send, policy, Halt(lambda *_: None), backoff=backoff)
    assert await sender.wrapped(lambda send: send).settle(EVENT) == Accepted(202)
    assert [after for _, after in waits] == list(outcomes)
    assert all(0 <= seconds <= 600.0 for seconds, _ in waits)


async def test_a_permit_given_to_settle_goes_with_the_first_send_only() -> None:
    script = Script(Retryable(503, "server_error"), Accepted(202))
    permit = Permit("create_event", waited=0.0)
    assert await sender_for(script).settle(EVENT, permit) == Accepted(202)
    assert script.permits == [permit, None]


async def test_a_permanent_answer_is_returned_not_retried() -> None:
    script = Script(Permanent(400))
    sender = sender_for(script)
    assert await sender.settle(EVENT) == Permanent(400)
    assert len(script.sent) == 1


async def test_a_fatal_answer_halts_and_holds_every_caller() -> None:
    halts: list[Fatal] = []
    halted = asyncio.Event()
    script = Script(Fatal(401))

    def record(outcome: Fatal, _request: KlaviyoRequest) -> None:
        halts.append(outcome)
        halted.set()

    halt = Halt(record)
    sender = Sender(script.send, FAST, halt)
    first = asyncio.create_task(sender.settle(EVENT))
    await halted.wait()
    later = asyncio.create_task(sender.settle(EVENT))
    for _ in range(10):
        await asyncio.sleep(0)
    assert halts == [Fatal(401)]
    assert not first.done() and not later.done()
    assert len(script.sent) == 1  # nothing more reaches Klaviyo after the halt
    for task in (first, later):
        task.cancel()
    await asyncio.gather(first, later, return_exceptions=True)


async def test_a_lookup_binds_the_profile_id_into_later_steps() -> None:
    found = {"data": [{"type": "profile", "id": "01ABC"}]}
    script = Script(Accepted(200, found), Accepted(200))
    sender = sender_for(script)
    accepted: list[Endpoint] = []
    created: list[KlaviyoRequest] = []

    async def create(request: KlaviyoRequest) -> StepFailure | None:
        created.append(request)
        return None

    plan = Plan((LOOKUP, PATCH, EVENT))
    failure = await PlanRunner(sender).run(plan, create, lambda r, _o: accepted.append(r.endpoint))
    assert failure is None
    assert script.sent[1].path == "/api/profiles/01ABC"
    assert script.sent[1].body == {"data": {"type": "profile", "id": "01ABC"}}
    assert accepted == [Endpoint.GET_PROFILES, Endpoint.UPDATE_PROFILE]
    assert created == [EVENT]  # Create Event steps go to the mode's own path


async def test_a_lookup_that_finds_nothing_uses_the_fallback() -> None:
    script = Script(Accepted(200, {"data": []}), Accepted(200))
    sender = sender_for(script)

    async def create(_request: KlaviyoRequest) -> StepFailure | None:
        return None

    assert await PlanRunner(sender).run(Plan((LOOKUP, PATCH)), create, lambda *_: None) is None
    assert script.sent[1].endpoint is Endpoint.PROFILE_IMPORT


async def test_a_refused_step_stops_the_plan() -> None:
    script = Script(Permanent(400))
    sender = sender_for(script)
    created: list[KlaviyoRequest] = []

    async def create(request: KlaviyoRequest) -> StepFailure | None:
        created.append(request)
        return None

    plan = Plan((PATCH.fallback or PATCH, EVENT))
    failure = await PlanRunner(sender).run(plan, create, lambda *_: None)
    assert failure is not None and failure.outcome == Permanent(400)
    assert failure.request.endpoint is Endpoint.PROFILE_IMPORT
    assert created == []


async def test_a_step_without_its_binding_or_a_fallback_is_a_handler_bug() -> None:
    script = Script()
    sender = sender_for(script)
    unbound = KlaviyoRequest(Endpoint.UPDATE_PROFILE, "PATCH", "/api/profiles/{profile_id}")

    async def create(_request: KlaviyoRequest) -> StepFailure | None:
        return None

    with pytest.raises(UnboundStep):
        await PlanRunner(sender).run(Plan((unbound,)), create, lambda *_: None)
    assert script.sent == []


def test_metric_name_is_read_from_a_create_event_body_or_empty() -> None:
    named = KlaviyoRequest(
        Endpoint.CREATE_EVENT,
        "POST",
        "/api/events",
        {"data": {"attributes": {"metric": {"data": {"attributes": {"name": "Placed Order"}}}}}},
    )
    assert metric_name(named) == "Placed Order"
    assert metric_name(EVENT) == ""  # no metric in the body
    assert metric_name(LOOKUP) == ""  # no body at all
