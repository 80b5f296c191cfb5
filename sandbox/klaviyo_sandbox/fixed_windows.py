"""Server-side fixed windows, as Klaviyo enforces them.

Each endpoint has a burst window (1 s) and a steady window (60 s), aligned to the clock
(window *n* of length *L* is ``[n·L, (n+1)·L)``), shared by every key of the account. A request
is admitted only when both windows have room, and then counts in both; a throttled request
counts in neither. The answer to a throttled request says when to come back: ``Retry-After``
is the whole seconds (rounded up, at least 1) until every full window has ended.

:class:`RateObserver` is the sandbox's own instrument: how many requests *arrived* in the
busiest window, throttled or not, so a benchmark can tell how hard a client pushed.
"""

from __future__ import annotations

import math

from klaviyo_sandbox.facts import Limit


class FixedWindow:
    __slots__ = ("count", "index", "limit", "seconds")

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.index = -1
        self.count = 0

    def roll(self, now: float) -> None:
        index = int(now // self.seconds)
        if index != self.index:
            self.index = index
            self.count = 0

    def ends_in(self, now: float) -> float:
        return (self.index + 1) * self.seconds - now


class FixedWindowQuota:
    """One operation's burst and steady windows, as the server counts them."""

    __slots__ = ("burst", "steady")

    def __init__(self, limit: Limit) -> None:
        self.burst = FixedWindow(limit.burst.requests, limit.burst.seconds)
        self.steady = FixedWindow(limit.steady.requests, limit.steady.seconds)

    def take(self, now: float) -> int | None:
        """Admit one request (None) or say how many seconds to wait (``Retry-After``)."""
        burst, steady = self.burst, self.steady
        burst.roll(now)
        steady.roll(now)
        if burst.count < burst.limit and steady.count < steady.limit:
            burst.count += 1
            steady.count += 1
            return None
        wait = 0.0
        if burst.count >= burst.limit:
            wait = burst.ends_in(now)
        if steady.count >= steady.limit:
            wait = max(wait, steady.ends_in(now))
        return max(1, math.ceil(wait))

    def headers(self, now: float) -> dict[str, str]:
        """``RateLimit-*`` of the steady window, for an answer other than 429."""
        steady = self.steady
        steady.roll(now)
        return {
            "RateLimit-Limit": str(steady.limit),
            "RateLimit-Remaining": str(max(0, steady.limit - steady.count)),
            "RateLimit-Reset": str(max(1, math.ceil(steady.ends_in(now)))),
        }


class RateObserver:
    """Arrivals per window for one endpoint: the busiest burst and steady window seen."""

    __slots__ = ("burst", "max_burst", "max_steady", "steady")

    def __init__(self, burst_seconds: float, steady_seconds: float) -> None:
        self.burst = FixedWindow(0, burst_seconds)
        self.steady = FixedWindow(0, steady_seconds)
        self.max_burst = 0
        self.max_steady = 0

    def arrive(self, now: float) -> None:
        burst, steady = self.burst, self.steady
        burst.roll(now)
        steady.roll(now)
        burst.count += 1
        steady.count += 1
        self.max_burst = max(self.max_burst, burst.count)
        self.max_steady = max(self.max_steady, steady.count)

    def to_json(self) -> dict[str, dict[str, float]]:
        return {
            "burst": {"seconds": self.burst.seconds, "max_requests": self.max_burst},
            "steady": {"seconds": self.steady.seconds, "max_requests": self.max_steady},
        }
