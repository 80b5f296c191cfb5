"""A share that moves at run time: EndpointBudget.rescale and RateLimiter.set_share.

The budget keeps its windows' history across a rescale (a shrinking replica waits until what it
sent lately ages out), and a growing one probes with a single request before trusting the
server's count, because the quota it gains was in use by another replica a moment ago.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from consumer.klaviyo.ratelimit import EndpointBudget, RateLimiter
from consumer.settings import EndpointLimit, WindowLimit, load_settings


def limit(burst: int, steady: int, steady_s: float = 60.0) -> EndpointLimit:
    return EndpointLimit(
        burst=WindowLimit(requests=burst, seconds=1.0),
        steady=WindowLimit(requests=steady, seconds=steady_s),
    )


def send(budget: EndpointBudget, count: int, at: float) -> None:
    for _ in range(count):
        assert budget.ready_at(at) == at
        budget.grant(at)
        budget.done(at)


def test_shrinking_keeps_the_history_so_the_excess_must_age_out_first() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 100), share=1.0)
    send(budget, 80, at=0.0)
    budget.rescale(0.5)
    assert budget.steady is not None and budget.steady.limit == 50
    # 80 places held, 50 allowed: nothing until they expire (60 s after their answers).
    assert budget.ready_at(1.0) == pytest.approx(60.0)
    assert budget.saturation(1.0) == 1.0
    send(budget, 50, at=60.0)
    assert budget.ready_at(60.0) > 60.0


def test_growing_uses_the_larger_window_with_the_history_kept() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 100), share=0.25)
    send(budget, 25, at=0.0)
    assert budget.ready_at(1.0) == pytest.approx(60.0)
    budget.rescale(0.5)
    assert budget.steady is not None and budget.steady.limit == 50
    assert budget.ready_at(1.0) == 1.0
    assert budget.saturation(1.0) == pytest.approx(0.5)


def test_a_growing_share_probes_with_one_request_and_then_follows_the_server() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 100), share=0.5)
    budget.rescale(1.0)
    budget.grant(0.0)
    # One request in flight: the rest wait for its answer (which the limiter's release wakes).
    assert budget.ready_at(0.0) == math.inf
    # The previous owner used most of the account's window: 10 left, all ours now.
    budget.observe_server(0.1, remaining=10, reset=30)
    budget.done(0.1)
    send(budget, 10, at=0.2)
    assert budget.ready_at(0.2) == pytest.approx(0.1 + 30 + 1.0)


def test_the_probe_replaces_a_cap_observed_under_the_smaller_share() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 100), share=0.5)
    budget.grant(0.0)
    budget.observe_server(0.1, remaining=40, reset=30)
    budget.done(0.1)
    assert budget.server_allowance == 20
    budget.rescale(1.0)
    assert budget.server_allowance == 40  # scaled with the share, until the next answer
    budget.grant(1.0)
    budget.observe_server(1.1, remaining=39, reset=29)  # same server window
    budget.done(1.1)
    # Not the tighter of the two (that would keep the old share's figure): the probe's.
    assert budget.server_allowance == 39


def test_shrinking_scales_the_server_cap_down_at_once() -> None:
    budget = EndpointBudget.from_limit(limit(1000, 100), share=1.0)
    budget.grant(0.0)
    budget.observe_server(0.1, remaining=40, reset=30)
    budget.done(0.1)
    budget.rescale(0.25)
    assert budget.server_allowance == 10
    assert not budget.probing


def test_share_zero_sends_nothing_until_partitions_come_back() -> None:
    budget = EndpointBudget.from_limit(limit(10, 100), share=1.0)
    budget.rescale(0.0)
    assert budget.ready_at(0.0) == math.inf
    budget.rescale(0.5)
    assert budget.ready_at(0.0) == 0.0


def test_an_unlimited_endpoint_takes_any_share() -> None:
    budget = EndpointBudget.from_limit(None)
    budget.rescale(0.5)
    assert budget.share == 0.5
    assert budget.ready_at(0.0) == 0.0
    assert budget.saturation(0.0) == 0.0


async def test_set_share_wakes_a_waiter_the_larger_share_lets_through() -> None:
    limiter = RateLimiter({"create_event": limit(10, 10, steady_s=30.0)}, share=0.1)
    held = await limiter.acquire("create_event")
    limiter.release(held)
    queued = asyncio.create_task(limiter.acquire("create_event"))
    await asyncio.sleep(0)
    assert not queued.done()  # one place, held for 30 s after its answer
    limiter.set_share(0.5)  # five places now, one held: the waiter goes without any answer
    permit = await asyncio.wait_for(queued, timeout=5)
    limiter.release(permit)


async def test_an_endpoint_first_used_after_set_share_probes_too() -> None:
    limiter = RateLimiter({"create_event": limit(10, 10)}, share=1.0)
    limiter.set_share(1.0)
    first = await limiter.acquire("create_event")
    second = asyncio.create_task(limiter.acquire("create_event"))
    await asyncio.sleep(0)
    assert not second.done()  # its empty history says nothing of what others sent
    limiter.release(first, headers={"RateLimit-Remaining": "5", "RateLimit-Reset": "30"})
    limiter.release(await asyncio.wait_for(second, timeout=5))


async def test_the_first_group_share_probes_even_where_it_shrinks() -> None:
    # The start-up probe used an endpoint at the whole quota; the first share from the group
    # is smaller, yet what other replicas sent this window is just as unknown.
    limiter = RateLimiter({"get_profiles": limit(100, 100)}, share=1.0)
    limiter.release(await limiter.acquire("get_profiles"))
    limiter.set_share(0.5)
    first = await limiter.acquire("get_profiles")
    second = asyncio.create_task(limiter.acquire("get_profiles"))
    await asyncio.sleep(0)
    assert not second.done()
    limiter.release(first)
    limiter.release(await asyncio.wait_for(second, timeout=5))
    limiter.set_share(0.25)  # later shrinks need no probe: the history is the group's
    third = await limiter.acquire("get_profiles")
    fourth = await asyncio.wait_for(limiter.acquire("get_profiles"), timeout=5)
    limiter.release(third)
    limiter.release(fourth)


def test_rate_limit_share_unset_starts_at_the_whole_quota() -> None:
    settings = load_settings(klaviyo_api_key="pk_test")
    assert settings.rate_limit_share is None
    limiter = RateLimiter.from_settings(settings)
    assert limiter._share == 1.0


def test_set_share_refuses_a_share_outside_zero_to_one() -> None:
    limiter = RateLimiter({})
    with pytest.raises(ValueError, match="share"):
        limiter.set_share(1.5)
