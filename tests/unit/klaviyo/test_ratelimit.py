"""Klaviyo-shaped rate limiting: sliding burst/steady windows, share, header feedback, 429 pause.

The pure budget is tested with explicit times; the async limiter with short real windows; and
the slow scenarios send hundreds of requests to servers that enforce FIXED windows (as
Klaviyo does) at a phase the client cannot know, and must see zero 429s.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from consumer.klaviyo.client import KlaviyoClient
from consumer.klaviyo.outcomes import Accepted
from consumer.klaviyo.ratelimit import (
    EndpointBudget,
    RateLimiter,
    SlidingWindow,
    reserve_share,
    scaled,
)
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.settings import DEFAULT_RATE_LIMITS, EndpointLimit, WindowLimit, load_settings


def limit(burst: int, burst_s: float, steady: int, steady_s: float) -> EndpointLimit:
    return EndpointLimit(
        burst=WindowLimit(requests=burst, seconds=burst_s),
        steady=WindowLimit(requests=steady, seconds=steady_s),
    )


def max_in_any_interval(times: Sequence[float], length: float) -> int:
    """The most timestamps inside any half-open interval [t, t + length)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + length) - i for i, t in enumerate(ordered)), default=0
    )


# --- pure budget --------------------------------------------------------------------------------


def test_share_scales_with_floor_but_never_to_zero() -> None:
    window = WindowLimit(requests=350, seconds=1)
    windows = [scaled(window, s) for s in (1.0, 0.5, 1 / 3)]
    assert [(w.limit, w.length) for w in windows] == [(350, 1), (175, 1), (116, 1)]
    tiny = scaled(window, 0.001)
    assert tiny.limit == 1
    assert tiny.length == pytest.approx(1 / 0.35)


@pytest.mark.parametrize("endpoint", sorted(DEFAULT_RATE_LIMITS))
def test_shares_never_add_up_past_the_account_limit_for_any_replica_count(endpoint: str) -> None:
    limit = DEFAULT_RATE_LIMITS[endpoint]
    for replicas in range(1, 1001):
        budget = EndpointBudget.from_limit(limit, share=1 / replicas)
        for mine, account in ((budget.burst, limit.burst), (budget.steady, limit.steady)):
            assert mine is not None
            rate = replicas * mine.limit / mine.length
            assert rate <= account.requests / account.seconds * (1 + 1e-9), (replicas, account)


def test_a_request_holds_its_place_until_length_after_its_answer() -> None:
    window = SlidingWindow(limit=2, length=1.0)
    window.take()
    window.take()
    assert window.free_at(0.5) == math.inf  # both in flight: only an answer can free a place
    window.answered(0.3)
    assert window.free_at(0.5) == pytest.approx(1.3)
    assert window.left(1.29) == 0
    assert window.left(1.3) == 1
    window.answered(0.6)
    assert window.left(1.3) == 1
    assert window.left(1.6) == 2


def simulate(
    budget: EndpointBudget, wanted: list[float], latencies: list[float]
) -> list[tuple[float, float]]:
    """Callers arrive at ``wanted`` times (FIFO); each answer comes ``latency`` after its grant.

    Returns (grant, answer) per request, driving the pure budget as the limiter would.
    """
    answers: list[tuple[float, int]] = []  # heap of (answer time, request)
    spans: list[tuple[float, float]] = []
    now = 0.0
    for i, want in enumerate(sorted(wanted)):
        now = max(now, want)
        while True:
            at = budget.ready_at(now)
            if answers and answers[0][0] <= at:
                answered_at, _ = heapq.heappop(answers)
                now = max(now, answered_at)
                budget.done(answered_at)
                continue
            break
        now = at
        budget.grant(now)
        answer = now + latencies[i % len(latencies)]
        heapq.heappush(answers, (answer, i))
        spans.append((now, answer))
    return spans


@given(
    wanted=st.lists(st.floats(min_value=0, max_value=20), min_size=1, max_size=200),
    latencies=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=20),
    where=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20),
    quota=st.tuples(
        st.integers(min_value=1, max_value=8),
        st.integers(min_value=1, max_value=30),
        st.sampled_from([1.0, 0.5, 0.25]),
    ),
)
def test_no_window_of_arrivals_ever_exceeds_the_limit_whatever_the_latency(
    wanted: list[float],
    latencies: list[float],
    where: list[float],
    quota: tuple[int, int, float],
) -> None:
    burst, steady, share = quota
    burst_limit, steady_limit = (
        WindowLimit(requests=burst, seconds=1),
        WindowLimit(requests=steady, seconds=10),
    )
    budget = EndpointBudget.from_limit(
        EndpointLimit(burst=burst_limit, steady=steady_limit), share=share
    )
    spans = simulate(budget, wanted, latencies)
    # The server sees each request somewhere between its grant and its answer; wherever that
    # is (chosen adversarially here), and whatever the phase of its fixed windows, no window of
    # arrivals holds more than the limit.
    arrivals = [g + (a - g) * where[i % len(where)] for i, (g, a) in enumerate(spans)]
    for account in (burst_limit, steady_limit):
        mine = scaled(account, share)  # at least the account's window, maybe longer
        assert max_in_any_interval(arrivals, mine.length) <= mine.limit
        assert max_in_any_interval(arrivals, account.seconds) <= mine.limit


def test_grants_come_as_soon_as_a_place_frees() -> None:
    budget = EndpointBudget.from_limit(limit(2, 1.0, 5, 10.0))
    spans = simulate(budget, [0.0] * 7, [0.1])
    grants = [g for g, _ in spans]
    # Two per burst window (held until 1 s after each 0.1 s answer), five per steady window.
    assert grants == pytest.approx([0.0, 0.0, 1.1, 1.1, 2.2, 10.1, 10.1])


def test_server_remaining_caps_sends_until_its_window_resets() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 1.0, 1000, 60.0), reset_slack=0.5)
    budget.grant(0.0)  # the request whose answer carries the headers
    budget.observe_server(0.1, remaining=3, reset=10)
    budget.done(0.1)
    for _ in range(3):
        assert budget.ready_at(0.2) == 0.2
        budget.grant(0.2)
        budget.done(0.2)
    # Deadline: answer time + reset + slack for Klaviyo's whole-second rounding.
    assert budget.ready_at(0.2) == pytest.approx(0.1 + 10 + 0.5)
    assert budget.remaining(0.2) == 0


def test_requests_in_flight_count_against_the_server_remaining() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 1.0, 1000, 60.0))
    for _ in range(5):
        budget.grant(0.0)
    budget.observe_server(0.1, remaining=6, reset=30)  # four others may still be counted
    budget.done(0.1)
    assert budget.remaining(0.1) == 2


def test_share_scales_the_server_remaining() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 1.0, 1000, 60.0), share=0.25)
    budget.grant(0.0)
    budget.observe_server(0.1, remaining=10, reset=30)
    budget.done(0.1)
    assert budget.remaining(0.1) == 2


def test_feedback_keeps_the_tighter_figure_and_ignores_stale_windows() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 1.0, 1000, 60.0))
    budget.grant(0.0)
    budget.observe_server(1.0, remaining=50, reset=30)
    budget.observe_server(1.1, remaining=80, reset=30)  # same window, reordered answer
    assert budget.server_allowance == 50
    budget.observe_server(1.2, remaining=900, reset=0)  # late answer about the previous window
    assert budget.server_allowance == 50
    budget.observe_server(32.0, remaining=990, reset=59)  # a new server window
    assert budget.server_allowance == 990


def test_pause_holds_until_it_has_passed() -> None:
    budget = EndpointBudget.from_limit(limit(10, 1.0, 100, 60.0))
    budget.pause(5.0)
    budget.pause(3.0)  # a shorter pause never shortens a longer one
    assert budget.ready_at(1.0) == 5.0
    assert budget.ready_at(6.0) == 6.0


def test_an_endpoint_without_limits_is_only_paced_by_feedback() -> None:
    budget = EndpointBudget.from_limit(None)
    for _ in range(10_000):
        budget.grant(0.0)
    assert budget.ready_at(0.0) == 0.0
    assert budget.remaining(0.0) is None


# --- async limiter ------------------------------------------------------------------------------


async def test_waiters_are_served_in_fifo_order_without_busy_waiting() -> None:
    limiter = RateLimiter({"create_event": limit(2, 0.2, 100, 60.0)})
    order: list[int] = []

    async def caller(i: int) -> None:
        permit = await limiter.acquire("create_event")
        order.append(i)
        limiter.release(permit)

    cpu = time.process_time()
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(caller(i)))
        await asyncio.sleep(0)  # let each caller queue in turn (ordering, not timing)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    elapsed = loop.time() - started
    assert order == list(range(8))
    assert elapsed >= 0.6  # 8 requests at 2 per 0.2 s: the last pair waits three windows
    assert time.process_time() - cpu < 0.5 * elapsed  # parked on timers, not spinning


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    limiter = RateLimiter({"create_event": limit(1, 0.3, 100, 60.0)})
    first = await limiter.acquire("create_event")
    doomed = asyncio.create_task(limiter.acquire("create_event"))
    patient = asyncio.create_task(limiter.acquire("create_event"))
    await asyncio.sleep(0)  # both queue behind the permit in flight
    doomed.cancel()
    limiter.release(first, status=202)
    permit = await asyncio.wait_for(patient, timeout=5)
    assert doomed.cancelled()
    assert permit.waited >= 0.3  # the place was held until 0.3 s after the answer
    limiter.release(permit)


async def test_429_retry_after_pauses_every_caller() -> None:
    limiter = RateLimiter({"create_event": limit(100, 1.0, 1000, 60.0)})
    loop = asyncio.get_running_loop()
    permit = await limiter.acquire("create_event")
    limiter.release(permit, status=429, headers=CIMultiDict({"Retry-After": "1"}))
    throttled_at = loop.time()
    other = await limiter.acquire("get_profiles")  # another endpoint is not paused
    assert other.waited < 0.5
    permits = await asyncio.wait_for(
        asyncio.gather(*(limiter.acquire("create_event") for _ in range(5))), timeout=10
    )
    assert loop.time() - throttled_at >= 1.0
    assert all(p.waited >= 0.9 for p in permits)


async def test_server_headers_hold_callers_until_reset() -> None:
    limiter = RateLimiter({"create_event": limit(100, 1.0, 1000, 60.0)}, reset_slack=0.0)
    loop = asyncio.get_running_loop()
    permit = await limiter.acquire("create_event")
    headers = CIMultiDict({"RateLimit-Remaining": "0", "ratelimit-reset": "1"})
    # Read before the release: the reset counts from the release's own clock reading, and a
    # reading after it is later by however long the loop was descheduled in between.
    answered_at = loop.time()
    limiter.release(permit, status=202, headers=headers)
    await asyncio.wait_for(limiter.acquire("create_event"), timeout=10)
    assert loop.time() - answered_at >= 1.0


async def test_try_acquire_grants_at_once_while_there_is_room_and_never_waits() -> None:
    limiter = RateLimiter({"create_event": limit(2, 60.0, 100, 60.0)})
    first, second = limiter.try_acquire("create_event"), limiter.try_acquire("create_event")
    assert first is not None and second is not None and first.waited == 0.0
    assert limiter.try_acquire("create_event") is None  # the burst window is full
    limiter.release(first, status=202)  # answered: its place is held for the window's length
    assert limiter.try_acquire("create_event") is None
    assert limiter.try_acquire("get_profiles") is not None  # another endpoint, another budget


async def test_try_acquire_never_passes_a_waiter_and_takes_nothing_when_refused() -> None:
    limiter = RateLimiter({"create_event": limit(1, 0.2, 100, 60.0)})
    held = limiter.try_acquire("create_event")
    assert held is not None
    waiter = asyncio.create_task(limiter.acquire("create_event"))
    await asyncio.sleep(0)  # it queues behind the permit in flight
    limiter.release(held, status=202)
    # The window frees 0.2 s after the answer; the waiter goes first, and a refused
    # try_acquire took no place from it.
    assert limiter.try_acquire("create_event") is None
    permit = await asyncio.wait_for(waiter, timeout=5)
    assert permit.waited >= 0.2
    limiter.release(permit, status=202)


async def test_try_acquire_is_refused_while_a_429_pause_lasts() -> None:
    limiter = RateLimiter({"create_event": limit(100, 1.0, 1000, 60.0)})
    permit = limiter.try_acquire("create_event")
    assert permit is not None
    limiter.release(permit, status=429, headers=CIMultiDict({"Retry-After": "30"}))
    assert limiter.try_acquire("create_event") is None


def test_the_reserve_is_the_steady_paces_share_of_the_burst_window() -> None:
    # Klaviyo's Create Event: 3,500/min is 58.3 a second, a sixth of the 350/s burst.
    create_event = DEFAULT_RATE_LIMITS["create_event"]
    assert reserve_share(create_event) == pytest.approx(3500 / 60 / 350)
    budget = EndpointBudget.from_limit(create_event)
    assert (budget._kept(budget.burst), budget._kept(budget.steady)) == (58, 583)  # type: ignore[arg-type]
    # A burst no faster than the pace: half of each window, not all of it.
    assert reserve_share(limit(5, 1.0, 20, 4.0)) == 0.5


def test_beyond_the_reserve_one_more_request_must_leave_the_reserve_in_both_windows() -> None:
    budget = EndpointBudget.from_limit(limit(10, 1.0, 40, 60.0))
    budget.reserve = 0.2  # keep 2 of the burst, 8 of the steady window
    for _ in range(7):
        assert budget.beyond_reserve(0.0)
        budget.grant(0.0)
    assert budget.beyond_reserve(0.0)  # 3 left in the burst window
    budget.grant(0.0)
    assert not budget.beyond_reserve(0.0)  # 2 left: the reserve
    assert budget.ready_at(0.0) == 0.0  # the whole window still has room
    for _ in range(8):
        budget.done(0.0)
    # The burst window frees after a second; the steady window keeps its 8 and refuses at
    # its reserve the same way.
    for n in range(24):
        now = 2.0 + n * 2
        assert budget.beyond_reserve(now), n
        budget.grant(now)
        budget.done(now)
    assert budget.remaining(50.0) == 8
    assert not budget.beyond_reserve(50.0)


async def test_try_acquire_beyond_the_reserve_is_refused_at_the_reserve_the_rest_may_use_it() -> (
    None
):
    limiter = RateLimiter({"create_event": limit(6, 60.0, 100, 60.0)})  # keeps half: 3
    late = [limiter.try_acquire("create_event", beyond_reserve=True) for _ in range(4)]
    assert [p is not None for p in late] == [True, True, True, False]
    fresh = [limiter.try_acquire("create_event") for _ in range(4)]
    assert [p is not None for p in fresh] == [True, True, True, False]


# --- slow: hundreds of requests against fixed-window servers ------------------------------------

BURST = WindowLimit(requests=20, seconds=0.5)
STEADY = WindowLimit(requests=100, seconds=5.0)
LIMITS = {"create_event": EndpointLimit(burst=BURST, steady=STEADY)}
EVENT = KlaviyoRequest(Endpoint.CREATE_EVENT, "POST", "/api/events", {"data": {"type": "event"}})


@dataclass
class FixedWindowServer:
    """Klaviyo's enforcement: fixed windows at a phase of the server's own choosing."""

    phase: float
    admitted: list[float] = field(default_factory=list)
    throttled: int = 0
    url: str = ""

    def window(self, now: float, length: float) -> int:
        return math.floor((now - self.phase) / length)

    async def handle(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        burst = sum(
            self.window(t, BURST.seconds) == self.window(now, BURST.seconds)
            for t in self.admitted[-BURST.requests :]
        )
        steady_index = self.window(now, STEADY.seconds)
        steady = sum(
            self.window(t, STEADY.seconds) == steady_index
            for t in self.admitted[-STEADY.requests :]
        )
        if burst >= BURST.requests or steady >= STEADY.requests:
            self.throttled += 1
            return web.Response(status=429, headers={"Retry-After": "1"})
        self.admitted.append(now)
        ends_in = (steady_index + 1) * STEADY.seconds + self.phase - now
        return web.Response(
            status=202,
            headers={
                "RateLimit-Limit": str(STEADY.requests),
                "RateLimit-Remaining": str(STEADY.requests - steady - 1),
                "RateLimit-Reset": str(max(1, math.ceil(ends_in))),
            },
        )


@asynccontextmanager
async def fixed_window_server() -> AsyncIterator[FixedWindowServer]:
    loop = asyncio.get_running_loop()
    state = FixedWindowServer(phase=loop.time() - random.uniform(0, STEADY.seconds))
    app = web.Application()
    app.router.add_post("/api/events", state.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("")).rstrip("/")
    try:
        yield state
    finally:
        await server.close()


async def send_all(clients: Sequence[KlaviyoClient], total: int) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(*(clients[i % len(clients)].send(EVENT) for i in range(total)))
    elapsed = loop.time() - started
    assert all(isinstance(o, Accepted) for o in outcomes)
    return elapsed


def check_arrivals(arrivals: list[float], total: int, elapsed: float, label: str) -> None:
    assert len(arrivals) == total
    # Never faster than the limits allow, at ANY window phase (so at the server's too).
    assert max_in_any_interval(arrivals, BURST.seconds) <= BURST.requests
    assert max_in_any_interval(arrivals, STEADY.seconds) <= STEADY.requests
    floor = (math.ceil(total / STEADY.requests) - 1) * STEADY.seconds
    assert elapsed >= floor
    print(
        f"\n{label}: {total} requests in {elapsed:.1f} s = {total / elapsed:.1f}/s "
        f"(limits {BURST.requests}/{BURST.seconds} s, {STEADY.requests}/{STEADY.seconds} s; "
        f"fastest legal: {floor:.1f} s)"
    )


def client_settings(url: str, share: float = 1.0) -> Any:
    return load_settings(
        klaviyo_api_key="pk_sandbox",
        klaviyo_base_url=url,
        rate_limits=LIMITS,
        rate_limit_share=share,
        retry_max_attempts=1,  # a 429 would surface as a failure, not be hidden by a retry
    )


@pytest.mark.slow
async def test_500_requests_stay_under_fixed_windows_with_zero_429() -> None:
    async with (
        fixed_window_server() as server,
        KlaviyoClient(client_settings(server.url)) as client,
    ):
        elapsed = await send_all([client], 500)
    assert server.throttled == 0
    check_arrivals(server.admitted, 500, elapsed, "one client")


@pytest.mark.slow
async def test_replicas_sharing_the_quota_stay_under_it_together() -> None:
    async with fixed_window_server() as server:
        settings = client_settings(server.url, share=0.5)
        async with KlaviyoClient(settings) as one, KlaviyoClient(settings) as two:
            elapsed = await send_all([one, two], 200)
    assert server.throttled == 0
    check_arrivals(server.admitted, 200, elapsed, "two replicas at share 0.5")


@pytest.mark.slow
async def test_500_requests_against_the_sandbox_with_zero_429() -> None:
    app = pytest.importorskip("klaviyo_sandbox.app")
    sandbox_server = pytest.importorskip("klaviyo_sandbox.server")
    facts = pytest.importorskip("klaviyo_sandbox.facts")
    # The same windows in the sandbox's own terms (it shares no type with the client).
    limits = {
        name: facts.Limit.model_validate(limit.model_dump()) for name, limit in LIMITS.items()
    }
    options = app.SandboxOptions(rate_limits=limits)
    async with sandbox_server.running_sandbox(options) as sb:
        async with KlaviyoClient(client_settings(sb.base_url)) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            outcomes = await asyncio.gather(*(client.send(sandbox_event(i)) for i in range(500)))
            elapsed = loop.time() - started
        throttled = dict(sb.sandbox.throttled)
    assert all(isinstance(o, Accepted) for o in outcomes), {type(o).__name__ for o in outcomes}
    assert not any(throttled.values()), throttled
    print(f"\nsandbox: 500 requests in {elapsed:.1f} s = {500 / elapsed:.1f}/s")


def sandbox_event(i: int) -> KlaviyoRequest:
    attributes = {
        "properties": {"n": i},
        "metric": {"data": {"type": "metric", "attributes": {"name": "Rate Test"}}},
        "unique_id": f"rate-{i}",
        "profile": {"data": {"type": "profile", "attributes": {"email": f"r{i % 50}@example.com"}}},
    }
    return KlaviyoRequest(
        Endpoint.CREATE_EVENT,
        "POST",
        "/api/events",
        {"data": {"type": "event", "attributes": attributes}},
    )
