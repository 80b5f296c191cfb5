"""Backoffs after Klaviyo's failures end when it serves again (consumer.klaviyo.recovery)."""

from __future__ import annotations

import asyncio

import pytest

from consumer.klaviyo.outcomes import Accepted, Outcome, Permanent, Retryable
from consumer.klaviyo.recovery import (
    SPELL_FAILURES,
    SPELL_SECONDS,
    Recovery,
    failing,
    wakes_early,
)

UNAVAILABLE = Retryable(503, "http_503")
NO_ANSWER = Retryable(None, "timeout")
THROTTLED = Retryable(429, "http_429", retry_after=1.0)


class Sleeps:
    """An injected sleep that returns only when the test lets it (or never)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.cancelled = 0
        self._over = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        try:
            await self._over.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def end(self) -> None:
        self._over.set()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watching() -> tuple[Recovery, Sleeps, Clock]:
    sleeps, clock = Sleeps(), Clock()
    return Recovery(sleeps, clock), sleeps, clock


def spell(recovery: Recovery, clock: Clock, failure: Outcome = UNAVAILABLE) -> None:
    """Klaviyo failing: the spell's failures, spread over its length."""
    for _ in range(SPELL_FAILURES):
        recovery.observe(failure)
        clock.now += SPELL_SECONDS / (SPELL_FAILURES - 1)


async def turns(n: int = 5) -> None:
    """Let the loop run the tasks woken so far (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def waits_out_its_sleep(recovery: Recovery, sleeps: Sleeps, after: Retryable) -> None:
    """A backoff after ``after`` that a served answer now does not end: only its sleep does."""
    waiting = asyncio.create_task(recovery.backoff(600.0, after))
    await turns()
    recovery.observe(Accepted(202))
    await turns()
    assert not waiting.done()
    sleeps.end()
    await asyncio.wait_for(waiting, 5)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (UNAVAILABLE, True),
        (Retryable(500, "http_500"), True),
        (NO_ANSWER, True),
        (THROTTLED, False),
        (Accepted(202), False),
        (Permanent(400), False),
    ],
)
def test_failing_is_a_5xx_or_no_answer(outcome: Outcome, expected: bool) -> None:
    assert failing(outcome) is expected


def test_a_wait_klaviyo_asked_for_never_ends_early() -> None:
    assert wakes_early(UNAVAILABLE)
    assert wakes_early(NO_ANSWER)
    assert not wakes_early(THROTTLED)
    assert not wakes_early(Retryable(429, "http_429"))
    assert not wakes_early(Retryable(503, "http_503", retry_after=30.0))


@pytest.mark.parametrize("after", [UNAVAILABLE, NO_ANSWER])
async def test_a_backoff_after_a_failure_ends_at_the_first_served_answer_after_a_spell(
    after: Retryable,
) -> None:
    recovery, sleeps, clock = watching()
    spell(recovery, clock, after)
    waiting = asyncio.create_task(recovery.backoff(600.0, after))
    await turns()
    recovery.observe(UNAVAILABLE)  # still failing
    await turns()
    assert not waiting.done()
    recovery.observe(Accepted(202))
    await asyncio.wait_for(waiting, 5)
    assert sleeps.asked == [600.0]
    assert sleeps.cancelled == 1  # the sleep it cut short is not left running


async def test_a_refusal_shows_klaviyo_serving_too() -> None:
    recovery, _, clock = watching()
    spell(recovery, clock)
    waiting = asyncio.create_task(recovery.backoff(600.0, UNAVAILABLE))
    await turns()
    recovery.observe(Permanent(400))
    await asyncio.wait_for(waiting, 5)


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(SPELL_FAILURES - 1, 10 * SPELL_SECONDS), (100, SPELL_SECONDS / 2)],
    ids=["too-few", "too-short"],
)
async def test_scattered_failures_keep_their_backoff(failures: int, seconds: float) -> None:
    """Failures among served answers, or a blip too short to be an outage: no wake-up, so a
    request Klaviyo fails every time cannot be resent at every served answer."""
    recovery, sleeps, clock = watching()
    for _ in range(failures):
        recovery.observe(UNAVAILABLE)
        clock.now += seconds / failures
    await waits_out_its_sleep(recovery, sleeps, UNAVAILABLE)


async def test_a_served_answer_ends_the_spell() -> None:
    """Two failures, a served answer, two failures: no spell of three in a row."""
    recovery, sleeps, clock = watching()
    for outcome in (UNAVAILABLE, UNAVAILABLE, Accepted(202), UNAVAILABLE, UNAVAILABLE):
        recovery.observe(outcome)
        clock.now += SPELL_SECONDS
    await waits_out_its_sleep(recovery, sleeps, UNAVAILABLE)


async def test_a_backoff_after_a_throttle_is_waited_out() -> None:
    recovery, sleeps, clock = watching()
    spell(recovery, clock)
    await waits_out_its_sleep(recovery, sleeps, THROTTLED)


async def test_a_backoff_ends_when_its_sleep_does() -> None:
    recovery, sleeps, clock = watching()
    spell(recovery, clock)
    waiting = asyncio.create_task(recovery.backoff(0.5, UNAVAILABLE))
    await turns()
    sleeps.end()
    await asyncio.wait_for(waiting, 5)


async def test_cancelling_a_backoff_cancels_its_sleep() -> None:
    recovery, sleeps, clock = watching()
    spell(recovery, clock)
    waiting = asyncio.create_task(recovery.backoff(600.0, UNAVAILABLE))
    await turns()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sleeps.cancelled == 1
