"""Retry policy: full-jitter backoff, Retry-After as a floor, attempt and time budgets.

Time is simulated: the injected sleep advances an injected clock, so nothing waits for real.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.klaviyo.outcomes import Accepted, Fatal, Outcome, Permanent, Retryable
from consumer.klaviyo.retry import RetryPolicy, call_with_retries
from consumer.settings import load_settings


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(
    outcomes: list[Outcome], time: FakeTime, cost: float = 0.0
) -> tuple[Callable[[], Awaitable[Outcome]], list[float]]:
    """An attempt function answering ``outcomes`` in turn; records when each attempt started."""
    started: list[float] = []
    answers = iter(outcomes)

    async def attempt() -> Outcome:
        started.append(time.now)
        time.now += cost
        return next(answers)

    return attempt, started


def test_policy_from_settings() -> None:
    settings = load_settings(
        retry_max_attempts=4,
        retry_max_elapsed_seconds=9.5,
        retry_base_seconds=0.25,
        retry_cap_seconds=3.0,
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(4, 9.5, 0.25, 3.0)


def test_backoff_ceiling_doubles_then_caps() -> None:
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=5.0)
    assert [policy.backoff_ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.backoff_ceiling(10_000) == 5.0


@given(
    retry=st.integers(min_value=0, max_value=200),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=600)),
    seed=st.integers(),
)
def test_delay_is_jittered_within_ceiling_and_never_before_retry_after(
    retry: int, retry_after: float | None, seed: int
) -> None:
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=60.0)
    delay = policy.delay(retry, Retryable(429, "http_429", retry_after), random.Random(seed))
    assert delay >= (retry_after or 0.0)
    assert delay <= max(policy.backoff_ceiling(retry), retry_after or 0.0)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = RetryPolicy(base_seconds=1.0, cap_seconds=60.0)
    rng = random.Random(7)
    draws = [policy.delay(3, Retryable(503, "http_503"), rng) for _ in range(2000)]
    ceiling = policy.backoff_ceiling(3)
    assert min(draws) < 0.05 * ceiling  # full jitter reaches down to zero ...
    assert max(draws) > 0.95 * ceiling  # ... and up to the ceiling
    assert 0.4 * ceiling < sum(draws) / len(draws) < 0.6 * ceiling


@pytest.mark.parametrize(
    "final",
    [Accepted(202), Permanent(400), Fatal(401)],
    ids=["accepted", "permanent", "fatal"],
)
async def test_non_retryable_returns_at_once(final: Outcome) -> None:
    time = FakeTime()
    attempt, started = scripted([final], time)
    outcome = await call_with_retries(attempt, RetryPolicy(), clock=time.clock, sleep=time.sleep)
    assert type(outcome) is type(final)
    assert outcome.attempts == 1
    assert started == [0.0] and time.sleeps == []


async def test_retries_until_accepted_and_counts_attempts() -> None:
    time = FakeTime()
    seen: list[tuple[Retryable, float]] = []
    attempt, started = scripted(
        [Retryable(503, "http_503"), Retryable(None, "timeout"), Accepted(202, {"ok": 1})], time
    )
    outcome = await call_with_retries(
        attempt,
        RetryPolicy(base_seconds=1.0),
        rng=random.Random(1),
        clock=time.clock,
        sleep=time.sleep,
        on_retry=lambda o, wait: seen.append((o, wait)),
    )
    assert outcome == Accepted(202, {"ok": 1}, attempts=3)
    assert len(started) == 3
    assert [wait for _, wait in seen] == time.sleeps
    assert [o.reason for o, _ in seen] == ["http_503", "timeout"]


async def test_attempt_budget_returns_the_last_retryable() -> None:
    time = FakeTime()
    failures = [Retryable(503, "http_503")] * 3 + [Retryable(502, "http_502")]
    attempt, started = scripted([*failures, Accepted(202)], time)
    policy = RetryPolicy(max_attempts=4, max_elapsed_seconds=1e9, base_seconds=0.1)
    outcome = await call_with_retries(attempt, policy, clock=time.clock, sleep=time.sleep)
    assert outcome == Retryable(502, "http_502", attempts=4)
    assert len(started) == 4
    assert len(time.sleeps) == 3


@given(seed=st.integers(), cost=st.floats(min_value=0.0, max_value=3.0))
async def test_elapsed_budget_no_attempt_starts_after_it(seed: int, cost: float) -> None:
    time = FakeTime()
    policy = RetryPolicy(
        max_attempts=1000, max_elapsed_seconds=30.0, base_seconds=1.0, cap_seconds=8.0
    )
    attempt, started = scripted([Retryable(500, "http_500")] * 1000, time, cost=cost)
    outcome = await call_with_retries(
        attempt, policy, rng=random.Random(seed), clock=time.clock, sleep=time.sleep
    )
    assert isinstance(outcome, Retryable)
    assert outcome.attempts == len(started) < 1000
    assert all(start <= policy.max_elapsed_seconds for start in started)
    # It stopped because the next wait would have run past the budget, not earlier.
    assert time.now + policy.backoff_ceiling(len(started) - 1) > policy.max_elapsed_seconds - 1e-9


async def test_retry_after_is_a_floor_for_every_wait() -> None:
    time = FakeTime()
    throttled = Retryable(429, "http_429", retry_after=7.0)
    answers: list[Outcome] = [throttled, throttled, throttled, Accepted(202)]
    attempt, started = scripted(answers, time)
    policy = RetryPolicy(base_seconds=0.01, cap_seconds=0.02, max_elapsed_seconds=100.0)
    outcome = await call_with_retries(attempt, policy, clock=time.clock, sleep=time.sleep)
    assert isinstance(outcome, Accepted)
    assert time.sleeps == [7.0, 7.0, 7.0]
    assert [b - a for a, b in itertools.pairwise(started)] == [7.0, 7.0, 7.0]


async def test_retry_after_beyond_the_budget_returns_without_waiting() -> None:
    time = FakeTime()
    attempt, started = scripted([Retryable(429, "http_429", retry_after=300.0)], time)
    policy = RetryPolicy(max_elapsed_seconds=60.0)
    outcome = await call_with_retries(attempt, policy, clock=time.clock, sleep=time.sleep)
    assert outcome == Retryable(429, "http_429", retry_after=300.0, attempts=1)
    assert started == [0.0]
    assert time.sleeps == []
