"""Backoffs after Klaviyo's failures end when it serves again (consumer.klaviyo.recovery)."""

from __future__ import annotations

import asyncio

import pytest

from consumer.klaviyo.outcomes import Accepted, Outcome, Permanent, Retryable
from consumer.klaviyo.recovery import Recovery, failing, wakes_early

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


async def turns(n: int = 5) -> None:
    """Let the loop run the tasks woken so far (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


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
async def test_a_backoff_after_a_failure_ends_at_the_first_served_answer(
    after: Retryable,
) -> None:
    sleeps = Sleeps()
    recovery = Recovery(sleeps)
    recovery.observe(after)
    waiting = asyncio.create_task(recovery.backoff(600.0, after))
    await turns()
    recovery.observe(UNAVAILABLE)  # another request failing: still down
    await turns()
    assert not waiting.done()
    recovery.observe(Accepted(202))
    await asyncio.wait_for(waiting, 5)
    assert sleeps.asked == [600.0]
    assert sleeps.cancelled == 1  # the sleep it cut short is not left running


async def test_a_refusal_shows_klaviyo_serving_too() -> None:
    recovery = Recovery(Sleeps())
    recovery.observe(UNAVAILABLE)
    waiting = asyncio.create_task(recovery.backoff(600.0, UNAVAILABLE))
    await turns()
    recovery.observe(Permanent(400))
    await asyncio.wait_for(waiting, 5)


async def test_a_backoff_after_a_throttle_is_waited_out() -> None:
    sleeps = Sleeps()
    recovery = Recovery(sleeps)
    recovery.observe(UNAVAILABLE)
    waiting = asyncio.create_task(recovery.backoff(1.0, THROTTLED))
    await turns()
    recovery.observe(Accepted(202))
    await turns()
    assert not waiting.done()
    sleeps.end()
    await asyncio.wait_for(waiting, 5)


async def test_only_an_answer_after_a_failure_wakes() -> None:
    """Served answers while nothing failed are no recovery: a backoff begun later waits for
    the next served answer after a failure."""
    sleeps = Sleeps()
    recovery = Recovery(sleeps)
    recovery.observe(Accepted(202))
    recovery.observe(UNAVAILABLE)
    waiting = asyncio.create_task(recovery.backoff(600.0, UNAVAILABLE))
    await turns()
    assert not waiting.done()
    recovery.observe(Accepted(202))
    await asyncio.wait_for(waiting, 5)


async def test_a_backoff_ends_when_its_sleep_does() -> None:
    sleeps = Sleeps()
    recovery = Recovery(sleeps)
    recovery.observe(UNAVAILABLE)
    waiting = asyncio.create_task(recovery.backoff(0.5, UNAVAILABLE))
    await turns()
    sleeps.end()
    await asyncio.wait_for(waiting, 5)


async def test_cancelling_a_backoff_cancels_its_sleep() -> None:
    sleeps = Sleeps()
    recovery = Recovery(sleeps)
    recovery.observe(UNAVAILABLE)
    waiting = asyncio.create_task(recovery.backoff(600.0, UNAVAILABLE))
    await turns()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sleeps.cancelled == 1
