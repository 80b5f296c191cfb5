"""Klaviyo serving again after it failed: the requests backing off from its failures go now.

During an outage every request backs off, the client's retries and the pipeline's holds alike
(:mod:`consumer.klaviyo.retry`, :mod:`consumer.pipeline.sending`): full jitter up to
``RETRY_CAP_SECONDS`` (60 s). When Klaviyo returns, a request that drew a long wait just before
slept it out, and everything behind it waited too: its key's later events, and its partition's
committed offset. Measured (bench scenario 4, three 10-minute outages at 30 events/s):

- the outage's last bulk job (auto mode's probe, see ``BulkGate``) slept out its backoff for
  14 to 34 s after Klaviyo returned. Every key with an event in it waited, and so did the
  committed offsets of nearly every partition: the lag stayed at 12,000-13,000 events while
  the rest of the backlog had long been delivered, and password resets produced meanwhile
  waited 19-42 s behind their keys' earlier ones;
- the email-change events, whose profile look-ups had failed all through the outage, kept the
  lag above normal for 36 s after the rest had caught up, and with it the catch-up's end.

So the first answer that shows Klaviyo serving again (anything but a 5xx or no answer at all)
ends those waits at once. They do not come back as a wave beyond the quota: each retry still
waits for its place in the rate limiter. A wait after a 429, or after any answer that carried
``Retry-After``, is kept: Klaviyo asked for it. Scattered 5xx among served requests (a flaky
edge) wake the same way, at the next served answer: Klaviyo serving the requests around a
failed one is the best sign its retry will be served too.
"""

from __future__ import annotations

import asyncio
import contextlib

from consumer.klaviyo.outcomes import Outcome, Retryable
from consumer.klaviyo.retry import Sleep
from consumer.pulse import Pulse


def failing(outcome: Outcome) -> bool:
    """Whether ``outcome`` shows Klaviyo failing: a 5xx, or no answer at all."""
    return isinstance(outcome, Retryable) and (outcome.status is None or outcome.status >= 500)


def wakes_early(outcome: Retryable) -> bool:
    """Whether a backoff after ``outcome`` may end once Klaviyo serves again (see the module)."""
    return failing(outcome) and outcome.retry_after is None


class Recovery:
    """Watches one account's answers; backoffs after a failure end when Klaviyo serves again."""

    def __init__(self, sleep: Sleep = asyncio.sleep) -> None:
        self._sleep = sleep
        self._failing = False
        self._served = Pulse()  # fired at the first serving answer after a failure

    def observe(self, outcome: Outcome) -> None:
        """One attempt's outcome (every attempt of every request)."""
        if failing(outcome):
            self._failing = True
        elif self._failing:
            self._failing = False
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
