"""Klaviyo serving again after it failed: the requests backing off from its failures go now.

During an outage every request backs off, the client's retries and the pipeline's holds alike
(:mod:`consumer.klaviyo.retry`, :mod:`consumer.pipeline.sending`): full jitter up to
``RETRY_CAP_SECONDS`` (60 s). When Klaviyo returns, a request that drew a long wait just before
slept it out, and everything behind it waited too: its key's later events, and its partition's
committed offset. Measured (bench scenario 4, three 10-minute outages at 30 events/s):

- the outage's last bulk job (auto mode's probe, see ``BulkGate``) slept out its backoff for
  7 to 34 s after Klaviyo returned. Every key with an event in it waited, and so did the
  committed offsets of nearly every partition: the lag stayed at 12,000-13,000 events while
  the rest of the backlog had long been delivered, and password resets produced meanwhile
  waited 19-42 s behind their keys' earlier ones;
- the email-change events, whose profile look-ups had failed all through the outage, kept the
  lag above normal for 23-38 s after the rest had caught up, and with it the catch-up's end.

So when Klaviyo has been failing (a *spell*: at least ``SPELL_FAILURES`` failed attempts, a 5xx
or no answer at all, over at least ``SPELL_SECONDS``, with nothing served in between), its first
answer that is not a failure ends those waits at once. They do not come back as a wave beyond
the quota: each retry still waits for its place in the rate limiter. Kept as they are:

- a wait after a 429, or after any answer that carried ``Retry-After``: Klaviyo asked for it;
- waits after scattered failures among served requests (a flaky edge, a request Klaviyo fails
  every time): they form no spell, so their backoff still grows. Woken at every served answer,
  a request that Klaviyo always answers 500 would be resent as fast as the quota allows,
  spending places the others need.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from consumer.klaviyo.outcomes import Outcome, Retryable
from consumer.klaviyo.retry import Clock, Sleep
from consumer.pulse import Pulse

# Klaviyo was failing, not a request or two: this many failed attempts in a row, over this long
# (in an outage a busy relay fails hundreds of attempts a second; a quiet one gets there through
# its own requests' retries).
SPELL_FAILURES = 3
SPELL_SECONDS = 1.0


def failing(outcome: Outcome) -> bool:
    """Whether ``outcome`` shows Klaviyo failing: a 5xx, or no answer at all."""
    return isinstance(outcome, Retryable) and (outcome.status is None or outcome.status >= 500)


def wakes_early(outcome: Retryable) -> bool:
    """Whether a backoff after ``outcome`` may end once Klaviyo serves again (see the module)."""
    return failing(outcome) and outcome.retry_after is None


class Recovery:
    """Watches one account's answers; backoffs after a failure end when Klaviyo serves again
    after a spell of failures."""

    def __init__(self, sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic) -> None:
        self._sleep = sleep
        self._clock = clock
        self._failures = 0  # failed attempts since the last served answer
        self._failing_since = 0.0  # the first of them
        self._served = Pulse()  # fired at the first served answer after a spell

    def observe(self, outcome: Outcome) -> None:
        """One attempt's outcome (every attempt of every request)."""
        if failing(outcome):
            if self._failures == 0:
                self._failing_since = self._clock()
            self._failures += 1
            return
        spell = (
            self._failures >= SPELL_FAILURES
            and self._clock() - self._failing_since >= SPELL_SECONDS
        )
        self._failures = 0
        if spell:
            self._served.fire()

    async def backoff(self, seconds: float, after: Retryable) -> None:
        """Wait ``seconds`` before retrying a request that ended in ``after``; less when
        Klaviyo serves again meanwhile (see the module)."""
        if not wakes_early(after):
            await self._sleep(seconds)
            return
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        served = asyncio.ensure_future(self._served.wait())
        try:
            await asyncio.wait((sleeping, served), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (sleeping, served):
                waiting.cancel()
            for waiting in (sleeping, served):
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
