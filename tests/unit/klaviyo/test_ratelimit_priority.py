"""Priorities at the quota: waiters go by priority class, then their events' start, then arrival;
cancelled waiters are skipped; a request carries its event's class (and start) through binding,
bulk jobs and the client."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from consumer.klaviyo.bulk import build_bulk_jobs
from consumer.klaviyo.client import KlaviyoClient
from consumer.klaviyo.ratelimit import Permit, RateLimiter
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.observability.metrics import REGISTRY
from consumer.priorities import DEFAULT_RANK, Priorities, PriorityClass, class_of
from consumer.settings import EndpointLimit, SettingsError, WindowLimit, load_settings

URGENT, HIGH, NORMAL, LOW, LOWEST = (cls.rank for cls in PriorityClass)
# One request at a time, the next 10 ms after the previous answer: waiters queue while the
# first permit is held, and each later one is granted only after the one before it answered.
ONE_AT_A_TIME = {
    "create_event": EndpointLimit(
        burst=WindowLimit(requests=1, seconds=0.01),
        steady=WindowLimit(requests=10_000, seconds=60.0),
    )
}


def event(email: str, priority: int = DEFAULT_RANK) -> KlaviyoRequest:
    body = {
        "data": {
            "type": "event",
            "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
                "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
                "properties": {},
                "unique_id": email,
            },
        }
    }
    return KlaviyoRequest(Endpoint.CREATE_EVENT, "POST", "/api/events", body, priority=priority)


async def caller(limiter: RateLimiter, order: list[str], name: str, priority: int) -> None:
    """Take a place at ``priority``, note ``name`` in ``order`` and hand the place back."""
    permit = await limiter.acquire("create_event", priority)
    order.append(name)
    limiter.release(permit, status=202)


async def served_order(limiter: RateLimiter, arrivals: list[tuple[str, int]]) -> list[str]:
    """Queue ``arrivals`` (name, priority) in that order behind a held permit, then let them
    through one by one; the order they were granted in."""
    held = await limiter.acquire("create_event")
    order: list[str] = []
    tasks = []
    for name, priority in arrivals:
        tasks.append(asyncio.create_task(caller(limiter, order, name, priority)))
        await asyncio.sleep(0)  # each one queues in turn (ordering, not timing)
    limiter.release(held, status=202)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    return order


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    arrivals = [
        ("lead-1", LOWEST),
        ("order-1", NORMAL),
        ("lead-2", LOWEST),
        ("reset-1", URGENT),  # came after the leads: still goes first
        ("invoice-1", HIGH),
        ("order-2", NORMAL),
        ("reset-2", URGENT),
        ("ship-1", LOW),
    ]
    order = await served_order(RateLimiter(ONE_AT_A_TIME), arrivals)
    assert order == [
        "reset-1",
        "reset-2",
        "invoice-1",
        "order-1",
        "order-2",
        "ship-1",
        "lead-1",
        "lead-2",
    ]


async def test_one_class_alone_is_first_come_first_served() -> None:
    arrivals = [(f"order-{i}", NORMAL) for i in range(6)]
    order = await served_order(RateLimiter(ONE_AT_A_TIME), arrivals)
    assert order == [name for name, _ in arrivals]


async def test_a_cancelled_waiter_is_skipped_wherever_it_sits_in_the_heap() -> None:
    limiter = RateLimiter(ONE_AT_A_TIME)
    held = await limiter.acquire("create_event")
    order: list[str] = []
    urgent = asyncio.create_task(caller(limiter, order, "reset", URGENT))
    middle = asyncio.create_task(caller(limiter, order, "order", NORMAL))
    deep = asyncio.create_task(caller(limiter, order, "lead-gone", LOWEST))
    last = asyncio.create_task(caller(limiter, order, "lead", LOWEST))
    await asyncio.sleep(0)
    urgent.cancel()  # the head of the heap
    deep.cancel()  # somewhere below it
    await asyncio.sleep(0)
    limiter.release(held, status=202)
    await asyncio.wait_for(asyncio.gather(middle, last), timeout=10)
    assert urgent.cancelled() and deep.cancelled()
    assert order == ["order", "lead"]
    # Nothing was left holding a place: a newcomer goes at once.
    fresh = await asyncio.wait_for(limiter.acquire("create_event", LOWEST), timeout=5)
    assert fresh.waited < 1.0


async def test_an_urgent_newcomer_does_not_jump_a_queue_it_cannot_be_served_from() -> None:
    """With waiters queued, an urgent arrival queues too (ahead of them), even if the budget
    happens to have room at that instant: only a grant in heap order hands places out."""
    limiter = RateLimiter(ONE_AT_A_TIME)
    held = await limiter.acquire("create_event")
    lead = asyncio.create_task(limiter.acquire("create_event", LOWEST))
    await asyncio.sleep(0)
    reset = asyncio.create_task(limiter.acquire("create_event", URGENT))
    await asyncio.sleep(0)
    assert not reset.done() and not lead.done()
    limiter.release(held, status=202)
    first = await asyncio.wait_for(asyncio.shield(reset), timeout=5)
    assert not lead.done()  # the place after the reset's answer goes to the lead
    limiter.release(first, status=202)
    limiter.release(await asyncio.wait_for(lead, timeout=5), status=202)


# --- the class travels with the request ---------------------------------------------------------


def test_a_plan_at_a_priority_carries_it_through_binding_and_fallback() -> None:
    fallback = KlaviyoRequest(Endpoint.PROFILE_IMPORT, "POST", "/api/profile-import", {})
    patch = KlaviyoRequest(
        Endpoint.UPDATE_PROFILE, "PATCH", "/api/profiles/{profile_id}", {}, fallback=fallback
    )
    plan = Plan((patch, event("a@shopmail.io"))).at_priority(URGENT)
    assert [r.priority for r in plan.requests] == [URGENT, URGENT]
    bound = plan.requests[0].bind({"profile_id": "01ABC"})
    assert bound.path == "/api/profiles/01ABC" and bound.priority == URGENT
    assert plan.requests[0].fallback is not None
    assert plan.requests[0].fallback.priority == URGENT
    # How urgent is not what is sent: equality (and so the handlers' tests) ignore it.
    assert plan.requests[1] == event("a@shopmail.io")
    default = Plan((event("b@shopmail.io"),))
    assert default.at_priority(DEFAULT_RANK) is default


def test_a_bulk_job_waits_at_the_most_urgent_class_of_its_events() -> None:
    events = [event("a@shopmail.io", LOWEST), event("b@shopmail.io", URGENT), event("c@x.io", LOW)]
    (job,) = build_bulk_jobs(events)
    assert job.request.priority == URGENT
    two = build_bulk_jobs(events, max_events=2)
    assert [j.request.priority for j in two] == [URGENT, LOW]


def waits_counted(priority: int) -> float:
    value = REGISTRY.get_sample_value(
        "klaviyo_relay_rate_limit_wait_by_priority_seconds_count",
        {"endpoint": "create_event", "priority": class_of(priority).value},
    )
    return value or 0.0


async def test_a_place_taken_at_once_counts_in_its_class_wait() -> None:
    # Auto mode's realtime sends take their place with try_acquire: without this, the per-class
    # wait would show only retries and bulk jobs in the default send mode.
    limiter = RateLimiter(ONE_AT_A_TIME)
    urgent, normal = waits_counted(URGENT), waits_counted(NORMAL)
    assert limiter.try_acquire("create_event", URGENT) is not None
    assert limiter.try_acquire("create_event", URGENT) is None  # refused: nothing counted
    assert (waits_counted(URGENT), waits_counted(NORMAL)) == (urgent + 1, normal)


async def test_the_client_waits_for_the_quota_at_the_requests_class_and_order() -> None:
    seen: list[tuple[str, int, int]] = []

    class Spy(RateLimiter):
        async def acquire(
            self, endpoint: str, priority: int = DEFAULT_RANK, order: int = 0
        ) -> Permit:
            seen.append((endpoint, priority, order))
            return await super().acquire(endpoint, priority, order)

    async def accept(_request: web.Request) -> web.Response:
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/events", accept)
    async with TestServer(app, host="127.0.0.1") as server:
        settings = load_settings(
            klaviyo_api_key="pk_test", klaviyo_base_url=str(server.make_url("")).rstrip("/")
        )
        async with KlaviyoClient(settings, limiter=Spy(settings.rate_limits)) as client:
            await client.send(event("a@shopmail.io", URGENT))
            await client.send(event("b@shopmail.io", LOWEST))
            await client.send(Plan((event("c@shopmail.io"),)).at_priority(HIGH, 7).requests[0])
    assert seen == [
        ("create_event", URGENT, 0),
        ("create_event", LOWEST, 0),
        ("create_event", HIGH, 7),
    ]


# --- configuration ------------------------------------------------------------------------------


def test_topic_priorities_merge_over_the_default_and_unlisted_topics_are_normal() -> None:
    settings = load_settings(topic_priorities={"shop.order.placed": "urgent"})
    priorities = Priorities(settings.topic_priorities)
    assert priorities.rank("shop.order.placed") == URGENT
    assert priorities.rank("shop.account.password-reset-requested") == URGENT
    assert priorities.rank("shop.order.payment-failed") == HIGH
    assert priorities.rank("shop.order.shipment-updated") == LOW
    assert priorities.rank("shop.lead.captured") == LOWEST
    assert priorities.rank("some.other.topic") == NORMAL


def test_a_routed_topic_may_be_given_a_class() -> None:
    settings = load_settings(
        topics=["legacy.resets"],
        topic_handlers={"legacy.resets": "shop.account.password-reset-requested"},
        topic_priorities={"legacy.resets": "urgent"},
    )
    assert Priorities(settings.topic_priorities).rank("legacy.resets") == URGENT


@pytest.mark.parametrize(
    ("priorities", "problem"),
    [
        ({"shop.lead.captur": "lowest"}, "unknown topic"),  # a typo would keep the default
        ({"shop.lead.captured": "vip"}, "urgent"),
    ],
)
def test_a_bad_topic_priority_is_refused_at_start_up(
    priorities: dict[str, str], problem: str
) -> None:
    with pytest.raises(SettingsError, match="TOPIC_PRIORITIES") as caught:
        load_settings(topic_priorities=priorities)
    assert problem in str(caught.value)


# --- within a class: the event that started first -----------------------------------------------


async def test_within_a_class_the_request_of_the_event_that_started_first_goes_first() -> None:
    """An order's second step queues after later orders' first steps, and still goes before
    them: the started event finishes (a crash cannot cut it part-way) before others start."""
    limiter = RateLimiter(ONE_AT_A_TIME)
    held = await limiter.acquire("create_event")
    served: list[str] = []

    async def step(name: str, priority: int, order: int) -> None:
        permit = await limiter.acquire("create_event", priority, order)
        served.append(name)
        limiter.release(permit, status=202)

    arrivals = [
        ("order-2 step 1", NORMAL, 2),
        ("order-3 step 1", NORMAL, 3),
        ("probe", NORMAL, 0),  # no event's: arrival order among its own
        ("order-1 step 2", NORMAL, 1),
        ("reset-4 step 1", URGENT, 4),  # the class still comes first
        ("order-1 step 3", NORMAL, 1),
    ]
    tasks = []
    for name, priority, order in arrivals:
        tasks.append(asyncio.create_task(step(name, priority, order)))
        await asyncio.sleep(0)
    limiter.release(held, status=202)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert served == [
        "reset-4 step 1",
        "probe",
        "order-1 step 2",
        "order-1 step 3",
        "order-2 step 1",
        "order-3 step 1",
    ]


def test_the_order_travels_through_binding_and_fallback() -> None:
    fallback = KlaviyoRequest(Endpoint.PROFILE_IMPORT, "POST", "/api/profile-import", {})
    patch = KlaviyoRequest(
        Endpoint.UPDATE_PROFILE, "PATCH", "/api/profiles/{profile_id}", {}, fallback=fallback
    )
    plan = Plan((patch, event("a@shopmail.io"))).at_priority(NORMAL, 42)
    assert [r.order for r in plan.requests] == [42, 42]
    assert plan.requests[0].bind({"profile_id": "01ABC"}).order == 42
    assert plan.requests[0].fallback is not None and plan.requests[0].fallback.order == 42
    assert plan.requests[1] == event("a@shopmail.io")  # not part of what is sent
