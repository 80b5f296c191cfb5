"""The sandbox's fixed windows (429 + Retry-After, RateLimit-* headers), fault injection and
counters, over real HTTP."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import aiohttp
import pytest

from klaviyo_sandbox import SandboxOptions
from klaviyo_sandbox.facts import PUBLISHED_LIMITS, Limit, Window
from tests.fixtures.sandbox import FakeClock, event_body, sandbox_api


def limits(burst: int, burst_s: float, steady: int, steady_s: float) -> dict[str, Limit]:
    limit = Limit(
        burst=Window(requests=burst, seconds=burst_s),
        steady=Window(requests=steady, seconds=steady_s),
    )
    return {**PUBLISHED_LIMITS, "create_event": limit}


async def test_fixed_windows_throttle_with_retry_after_to_the_window_end() -> None:
    clock = FakeClock(1000.25)
    options = SandboxOptions(rate_limits=limits(2, 1.0, 3, 60.0))
    async with sandbox_api(options, clock=clock) as api:
        steady_end = (clock.now // 60 + 1) * 60  # windows are aligned to the clock
        first = await api.event(event_body(unique_id="1"))
        second = await api.event(event_body(unique_id="2"))
        assert (first.status, second.status) == (202, 202)
        assert first.headers["RateLimit-Limit"] == "3"
        assert [first.headers["RateLimit-Remaining"], second.headers["RateLimit-Remaining"]] == [
            "2",
            "1",
        ]
        assert first.headers["RateLimit-Reset"] == str(math.ceil(steady_end - clock.now))
        assert "Retry-After" not in first.headers

        # Burst window full: wait for its end (0.75 s → 1 whole second).
        burst_full = await api.event(event_body(unique_id="3"))
        assert burst_full.status == 429
        assert burst_full.headers["Retry-After"] == str(math.ceil(1001 - clock.now))
        assert "RateLimit-Limit" not in burst_full.headers
        [error] = burst_full.errors
        assert error["code"] == "throttled" and error["status"] == 429

        clock.now = 1001.5  # next burst window, same steady window
        third = await api.event(event_body(unique_id="3"))
        assert third.status == 202 and third.headers["RateLimit-Remaining"] == "0"
        steady_full = await api.event(event_body(unique_id="4"))
        assert steady_full.status == 429
        assert steady_full.headers["Retry-After"] == str(math.ceil(steady_end - clock.now))

        clock.now = steady_end  # a new steady window
        assert (await api.event(event_body(unique_id="4"))).status == 202

        stats = await api.inspect("stats")
        assert stats["throttled"]["create_event"] == 2
        assert stats["requests"]["create_event"] == {"202": 4, "429": 2}
        assert [e["unique_id"] for e in (await api.inspect("events"))["data"]] == [
            "1",
            "2",
            "3",
            "4",
        ]


async def test_endpoints_have_their_own_windows() -> None:
    clock = FakeClock(500.0)
    async with sandbox_api(SandboxOptions(rate_limits=limits(1, 1.0, 1, 60.0)), clock=clock) as api:
        assert (await api.event(event_body())).status == 202
        assert (await api.event(event_body())).status == 429
        lookup = await api.call("GET", '/api/profiles?filter=equals(email,"a@shopmail.io")')
        assert lookup.status == 200
        assert lookup.headers["RateLimit-Limit"] == str(
            PUBLISHED_LIMITS["get_profiles"].steady.requests
        )


async def test_short_real_windows_throttle_then_recover() -> None:
    """On the real clock, with windows scaled down as ``--window-scale 0.01`` does."""
    options = SandboxOptions(rate_limits=limits(1000, 0.01, 3, 0.6))
    async with sandbox_api(options) as api:
        statuses = [(await api.event(event_body(unique_id=str(i)))) for i in range(8)]
        throttled = [r for r in statuses if r.status == 429]
        assert throttled, [r.status for r in statuses]
        assert all(r.headers["Retry-After"] == "1" for r in throttled)  # < 1 s rounds up to 1
        # The window ends: requests go through again.
        deadline = time.monotonic() + 10
        while (await api.event(event_body(unique_id="later"))).status == 429:
            assert time.monotonic() < deadline, "the steady window never ended"
            await asyncio.sleep(0.05)


async def test_error_documents_and_successes_carry_headers_but_401_does_not() -> None:
    clock = FakeClock(30.0)
    async with sandbox_api(SandboxOptions(rate_limits=dict(PUBLISHED_LIMITS)), clock=clock) as api:
        bad = await api.event(event_body(unique_id=""))
        assert bad.status == 400 and bad.headers["RateLimit-Limit"] == "3500"
        ok = await api.event(event_body())
        assert ok.headers["RateLimit-Remaining"] == "3498"  # the 400 counted as well
        unauthenticated = await api.event(event_body(), headers={"Authorization": None})
        assert unauthenticated.status == 401 and "RateLimit-Limit" not in unauthenticated.headers


async def test_unlimited_sends_no_rate_limit_headers_and_observes_the_rate() -> None:
    clock = FakeClock(100.0)
    async with sandbox_api(SandboxOptions(rate_limits=None), clock=clock) as api:
        for i in range(5):
            reply = await api.event(event_body(unique_id=str(i)))
            assert reply.status == 202 and "RateLimit-Limit" not in reply.headers
        clock.now = 101.0
        for i in range(2):
            await api.event(event_body(unique_id=f"b{i}"))
        observed = (await api.inspect("stats"))["observed"]["create_event"]
        assert observed["burst"] == {"seconds": 1.0, "max_requests": 5}
        assert observed["steady"] == {"seconds": 60.0, "max_requests": 7}


# --- faults --------------------------------------------------------------------------------------


async def test_an_outage_starts_and_ends_at_run_time() -> None:
    async with sandbox_api() as api:
        status, faults = await api.faults({"error_rates": {"503": 1.0}})
        assert status == 200 and faults["error_rates"] == {"503": 1.0}
        for i in range(3):
            reply = await api.event(event_body(unique_id=str(i)))
            assert reply.status == 503
            assert reply.errors[0]["status"] == 503
        assert (await api.inspect("events"))["data"] == []
        await api.faults({"error_rates": {}})
        assert (await api.event(event_body())).status == 202
        stats = await api.inspect("stats")
        assert stats["injected"] == {"503": 3}
        assert stats["requests"]["create_event"] == {"202": 1, "503": 3}


async def test_error_rates_from_options_follow_their_probability() -> None:
    options = SandboxOptions(error_rates={503: 0.3, 429: 0.2}, seed=42)
    async with sandbox_api(options) as api:
        replies = [await api.event(event_body(unique_id=str(i))) for i in range(300)]
    counts = Counter(r.status for r in replies)
    # Binomial(300, p): well inside ±5 standard deviations.
    assert 90 - 40 < counts[503] < 90 + 40
    assert 60 - 35 < counts[429] < 60 + 35
    assert counts[202] == 300 - counts[503] - counts[429]
    assert all(r.headers["Retry-After"] == "1" for r in replies if r.status == 429)


async def test_fail_auth_answers_401_to_everything() -> None:
    async with sandbox_api(SandboxOptions(fail_auth=True)) as api:
        reply = await api.event(event_body())
        assert reply.status == 401 and reply.errors[0]["code"] == "authentication_failed"
        lookup = await api.call("GET", "/api/profiles")
        assert lookup.status == 401
        await api.faults({"fail_auth": False})
        assert (await api.event(event_body())).status == 202


async def test_proxy_statuses_408_and_425_can_be_injected() -> None:
    async with sandbox_api(SandboxOptions(error_rates={408: 0.5, 425: 0.5}, seed=7)) as api:
        replies = [await api.event(event_body(unique_id=str(i))) for i in range(40)]
        statuses = Counter(r.status for r in replies)
        assert set(statuses) == {408, 425}
        assert (await api.inspect("events"))["data"] == []
        assert (await api.inspect("stats"))["injected"] == {
            "408": statuses[408],
            "425": statuses[425],
        }


async def test_the_edge_challenge_is_an_html_403_in_front_of_everything() -> None:
    # fail_auth would answer Klaviyo's JSON 401: the edge answers before Klaviyo does.
    async with sandbox_api(SandboxOptions(challenge_rate=1.0, fail_auth=True)) as api:
        reply = await api.event(event_body(), headers={"Authorization": "Klaviyo-API-Key bad"})
        assert reply.status == 403
        assert reply.headers["Content-Type"] == "text/html; charset=UTF-8"
        assert reply.headers["cf-mitigated"] == "challenge"
        assert reply.raw.startswith(b"<!DOCTYPE html>")
        assert (await api.call("GET", "/api/profiles")).status == 403
        assert (await api.inspect("stats"))["challenged"] == 2
        status, faults = await api.faults({"challenge_rate": 0, "fail_auth": False})
        assert status == 200 and faults["challenge_rate"] == 0
        assert (await api.event(event_body())).status == 202
        assert len((await api.inspect("events"))["data"]) == 1


async def test_the_challenge_rate_follows_its_probability() -> None:
    async with sandbox_api(SandboxOptions(challenge_rate=0.25, seed=3)) as api:
        replies = [await api.event(event_body(unique_id=str(i))) for i in range(200)]
        challenged = sum(r.status == 403 for r in replies)
        # Binomial(200, 0.25): 50 ± 5 standard deviations (6.1 each).
        assert 50 - 30 < challenged < 50 + 30
        assert (await api.inspect("events"))["meta"]["accepted"] == 200 - challenged


async def test_a_partial_failure_is_accepted_recorded_and_named_in_a_header() -> None:
    async with sandbox_api() as api:
        status, faults = await api.faults({"partial_failure_rate": 1.0})
        assert status == 200 and faults["partial_failure_rate"] == 1.0
        reply = await api.event(event_body(unique_id="p1"))
        assert reply.status == 202
        assert reply.headers["X-Klaviyo-Partial-Failure"] == "phone_number"
        [stored] = (await api.inspect("events"))["data"]
        assert stored["unique_id"] == "p1"
        assert (await api.inspect("stats"))["partial_failures"] == 1
        await api.faults({"partial_failure_rate": 0})
        plain = await api.event(event_body(unique_id="p2"))
        assert plain.status == 202 and "X-Klaviyo-Partial-Failure" not in plain.headers


async def test_fail_matching_refuses_only_the_requests_naming_the_text() -> None:
    async with sandbox_api() as api:
        status, faults = await api.faults({"fail_matching": {"held-1": 503}})
        assert status == 200 and faults["fail_matching"] == {"held-1": 503}
        assert (await api.event(event_body(unique_id="held-1"))).status == 503
        assert (await api.event(event_body(unique_id="free-1"))).status == 202
        await api.faults({"fail_matching": {}})
        assert (await api.event(event_body(unique_id="held-1"))).status == 202
        stored = [e["unique_id"] for e in (await api.inspect("events"))["data"]]
        assert stored == ["free-1", "held-1"]


async def test_latency_delays_answers() -> None:
    async with sandbox_api(SandboxOptions(latency_ms=(150.0, 200.0))) as api:
        started = time.monotonic()
        assert (await api.event(event_body())).status == 202
        assert time.monotonic() - started >= 0.15
        await api.faults({"latency_ms": [0, 0]})
        assert (await api.inspect("faults"))["latency_ms"] == [0.0, 0.0]


async def test_timeouts_hold_the_request_until_the_client_gives_up() -> None:
    async with sandbox_api(SandboxOptions(timeout_rate=1.0)) as api:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await api.event(event_body(), give_up_after=0.5)
        assert time.monotonic() - started >= 0.5
        assert (await api.inspect("events"))["data"] == []
        await api.faults({"timeout_rate": 0})
        assert (await api.event(event_body())).status == 202


async def test_held_requests_do_not_delay_shutdown() -> None:
    started = time.monotonic()
    async with sandbox_api(SandboxOptions(timeout_rate=1.0)) as api:
        pending = asyncio.create_task(api.event(event_body(), give_up_after=60))
        deadline = time.monotonic() + 10
        while (await api.inspect("stats"))["held"] != 1:
            assert time.monotonic() < deadline, "the request was never held"
            await asyncio.sleep(0.02)
        assert not pending.done()
    # The sandbox stopped: the held request ended with it, well before its 60 s.
    with pytest.raises((aiohttp.ClientError, asyncio.TimeoutError)):
        await pending
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "change",
    [
        {"error_rates": {"503": 1.5}},
        {"error_rates": {"503": 0.6, "500": 0.6}},
        {"error_rates": {"200": 0.1}},
        {"latency_ms": [10, 5]},
        {"timeout_rate": -1},
        {"fail_auth": "yes"},
        {"challenge_rate": 2},
        {"partial_failure_rate": True},
        {"fail_matching": {"x": 200}},
        {"fail_matching": {"": 503}},
        {"fail_matching": ["x"]},
        {"error_rates": {"503": 0.5}, "challenge_rate": -0.1},
        {"nonsense": 1},
    ],
)
async def test_bad_fault_changes_are_refused_whole(change: dict[str, object]) -> None:
    async with sandbox_api(SandboxOptions(error_rates={502: 0.1})) as api:
        before = await api.inspect("faults")
        status, answer = await api.faults(change)
        assert status == 400 and answer["error"]
        assert await api.inspect("faults") == before


async def test_reset_restores_the_starting_faults() -> None:
    options = SandboxOptions(error_rates={503: 1.0}, challenge_rate=0.1, partial_failure_rate=0.2)
    async with sandbox_api(options) as api:
        await api.faults({"error_rates": {}, "challenge_rate": 0, "partial_failure_rate": 0})
        async with api.session.post(f"{api.base_url}/_sandbox/reset") as response:
            assert response.status == 204
        faults = await api.inspect("faults")
        assert faults["error_rates"] == {"503": 1.0}
        assert (faults["challenge_rate"], faults["partial_failure_rate"]) == (0.1, 0.2)
