"""Retrying retryable outcomes: exponential backoff with full jitter, inside a budget.

Full jitter (a uniform draw in ``[0, min(cap, base·2^n)]``) spreads the retries of many callers
that failed together, so they do not come back as one wave. Klaviyo's ``Retry-After`` is a floor:
a retry never leaves before it has passed. Each request has a budget of attempts and of elapsed
time; when it is spent the last :class:`Retryable` is returned and the pipeline holds the event
and tries again later (a retryable outcome never dead-letters).

Time, sleeping and randomness are injected so tests can run the policy without real waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from consumer.klaviyo.outcomes import Outcome, Retryable
from consumer.settings import Settings

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[Retryable, float], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    max_elapsed_seconds: float = 120.0
    base_seconds: float = 0.5
    cap_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            max_elapsed_seconds=settings.retry_max_elapsed_seconds,
            base_seconds=settings.retry_base_seconds,
            cap_seconds=settings.retry_cap_seconds,
        )

    def backoff_ceiling(self, retry: int) -> float:
        """Upper bound of the jittered wait before retry number ``retry`` (0 = first retry)."""
        # min() before the power would overflow only for absurd retry counts; clamp the exponent.
        return min(self.cap_seconds, self.base_seconds * 2.0 ** min(retry, 64))

    def delay(self, retry: int, outcome: Retryable, rng: random.Random) -> float:
        """Full-jitter backoff, but never shorter than the server's ``Retry-After``."""
        jittered = rng.uniform(0.0, self.backoff_ceiling(retry))
        return max(jittered, outcome.retry_after or 0.0)


async def call_with_retries(
    attempt: Callable[[], Awaitable[Outcome]],
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    on_retry: OnRetry | None = None,
) -> Outcome:
    """Run ``attempt`` until it is not retryable or the budget is spent.

    Accepted, Permanent and Fatal return at once. No attempt starts after
    ``max_elapsed_seconds``: when the next wait would end past the budget, the last
    Retryable is returned now rather than after a sleep that leads nowhere. The outcome's
    ``attempts`` says how many HTTP attempts were made.
    """
    rng = rng or random.Random()
    started = clock()
    attempts = 0
    while True:
        attempts += 1
        outcome = await attempt()
        if not isinstance(outcome, Retryable) or attempts >= policy.max_attempts:
            return dataclasses.replace(outcome, attempts=attempts)
        wait = policy.delay(attempts - 1, outcome, rng)
        if clock() - started + wait > policy.max_elapsed_seconds:
            return dataclasses.replace(outcome, attempts=attempts)
        if on_retry is not None:
            on_retry(outcome, wait)
        await sleep(wait)
