"""Client-side rate limiting shaped like Klaviyo's: per endpoint, a burst and a steady window.

Klaviyo counts requests per endpoint in two FIXED windows (1 s burst, 60 s steady by default),
by the time they ARRIVE, and the client cannot know where the server's window boundaries fall.
A local fixed window out of phase with the server's lets up to twice the limit into one server
window (the end of one local window plus the start of the next), and network jitter moves
arrivals about. So:

1. Each limit is enforced over a SLIDING window, counted so that latency cannot break it: a
   request's arrival lies somewhere between our grant and its answer, so it holds a place from
   the grant until ``length`` seconds after its answer (while in flight: until it is answered).
   A new request is granted only if fewer than ``limit`` places are held. Then no interval of
   ``length`` seconds, wherever it falls, can see more than ``limit`` arrivals, and neither can
   any of the server's fixed windows, whatever their phase. The price is one round-trip per
   window (≈0.3 % of a 60 s window at 200 ms latency); the boundary double-burst a fixed window
   would allow is given up on purpose.
2. Klaviyo's own ``RateLimit-Remaining`` / ``RateLimit-Reset`` (its steady window) cap what we
   send until that server window ends: never more than it says remain. This corrects what local
   counting cannot see (other users of the account's quota, other replicas, drift). Requests
   still in flight when the answer arrives may be counted after it, so they are subtracted too.
   The reset gets ``reset_slack`` on top because Klaviyo states it in whole seconds.
3. A 429's ``Retry-After`` pauses the endpoint for every caller until it has passed.

Limits are scaled by ``share`` (floor; below one request per window, one request per a longer
window) so replicas whose shares add up to at most 1 stay under the account's quota rate
together, for any number of them; the server's remaining count is scaled the same way (each
replica takes its part of what the account has left, so they never claim the same requests
twice). The share moves with the consumer group (:meth:`RateLimiter.set_share`, see
:mod:`consumer.pipeline.share`). While it does (``RATE_LIMIT_SHARE`` unset) and Klaviyo's answers
carry the figures, the steady limit is Klaviyo's own count instead of the local steady window: a
replica claims its share of what the account has left, re-based on every answer, and past its own
share only what the others did not use at their shares' pace (:mod:`consumer.klaviyo.borrowing`),
so the shares idle replicas leave unused are spent. The burst window stays local. An explicit
share never borrows. Replicas do not coordinate, so with more replicas than a window's limit a
few of them can still land in the same server second: Klaviyo then answers 429 and every replica
pauses for its Retry-After.

Each window also keeps a *reserve* (:func:`reserve_share`): a caller that asks for room only
beyond it (``try_acquire(..., beyond_reserve=True)``: auto mode's late urgent events, see
:mod:`consumer.pipeline.delivery.auto`) is refused while one more request would leave less than
the reserve in either window, so a backlog bursting into an endpoint leaves places for the fresh
events behind it. Everyone else may use the whole window.

Waiting is ordered per endpoint by priority, then arrival (a heap): when the quota is short, a
waiting request is never passed by a less urgent one, nor by a later one of its own class (see
:mod:`consumer.priorities`). It never busy-waits: waiters park on futures, and one timer per
endpoint (or the next answer, when every place is held by a request in flight) wakes the head
of the queue. A waiter cancelled while queued stays in the heap until it reaches the head, and
is skipped there. :class:`EndpointBudget` is the pure, clock-free state (times are passed in) so it
can be tested without waiting.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import Histogram

from consumer.klaviyo.borrowing import AccountWindow
from consumer.klaviyo.classify import parse_retry_after
from consumer.observability.metrics import (
    QUOTA_SATURATION,
    RATE_LIMIT_REMAINING,
    RATE_LIMIT_WAIT,
    RATE_LIMIT_WAIT_BY_PRIORITY,
)
from consumer.priorities import DEFAULT_RANK, class_of
from consumer.settings import EndpointLimit, Settings, WindowLimit

# A timer may fire a hair before its deadline (the loop's clock resolution); treat that as on time
# rather than re-arming it in a tight loop.
_EPSILON = 1e-6
# Pause after a 429 that carries no Retry-After (Klaviyo always sends one; proxies may not).
_DEFAULT_PAUSE_SECONDS = 1.0
_LEADING_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)")


# No more than this share of a window is kept in reserve: where the burst is no faster than the
# steady pace, the pace's share would be the whole window, and a backlog of urgent events would
# lose the endpoint entirely (half for it, half for the fresh events behind it).
_MAX_RESERVE_SHARE = 0.5


def reserve_share(limit: EndpointLimit) -> float:
    """The share of each window kept for requests that may use the whole window.

    The steady pace's part of the burst window: what the steady limit allows in one burst
    window, out of the burst limit (Klaviyo's Create Event: 3,500/min is 58 a second, of 350,
    a sixth), and the same share of the steady window (583 of 3,500: ten seconds at the pace).
    Fresh traffic runs at most at the steady pace (faster, it would not fit the steady window
    anyway), so fresh events at that pace still find a place in every burst window; what the
    burst allows beyond the pace exists for bursts, and a backlog released at once is one.
    """
    pace = limit.steady.requests / limit.steady.seconds * limit.burst.seconds
    return min(_MAX_RESERVE_SHARE, pace / limit.burst.requests)


class SlidingWindow:
    """At most ``limit`` requests whose arrival could fall in any interval of ``length`` s."""

    def __init__(self, limit: int, length: float) -> None:
        self.limit = limit
        self.length = length
        self.in_flight = 0
        # Answer times, in order (answers are recorded as they come, so the deque stays sorted).
        self._answered: deque[float] = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self.length
        while self._answered and self._answered[0] <= horizon:
            self._answered.popleft()

    def free_at(self, now: float) -> float:
        """Earliest time (≥ now) one more request fits; ``inf`` until an answer comes back."""
        self._expire(now)
        spare = self.limit - self.in_flight
        if spare <= 0:
            return math.inf
        if len(self._answered) < spare:
            return now
        return self._answered[len(self._answered) - spare] + self.length

    def left(self, now: float) -> int:
        self._expire(now)
        return max(0, self.limit - self.in_flight - len(self._answered))

    def take(self) -> None:
        self.in_flight += 1

    def answered(self, now: float) -> None:
        self.in_flight -= 1
        self._answered.append(now)

    def used(self, now: float) -> int:
        """Places held now: in flight, or answered within the last ``length`` seconds."""
        self._expire(now)
        return self.in_flight + len(self._answered)

    def resize(self, other: SlidingWindow) -> None:
        """Take ``other``'s limit and length, keeping this window's history."""
        self.limit = other.limit
        self.length = other.length


def scaled(limit: WindowLimit, share: float) -> SlidingWindow:
    """This replica's part of a window's quota, as a window of its own.

    Normally the floor of ``requests × share`` per window. Below one request per window the
    window lengthens instead (one request per ``seconds / (requests × share)``): a floor of one
    request per window would let more replicas than the limit (11 pods at Bulk Create Events'
    10/s) add up past the account's quota.
    """
    allowed = limit.requests * share
    if allowed <= 0:  # share 0 (a group member with no partitions): nothing may go
        return SlidingWindow(0, limit.seconds)
    if allowed >= 1:
        return SlidingWindow(math.floor(allowed), limit.seconds)
    return SlidingWindow(1, limit.seconds / allowed)


@dataclass
class EndpointBudget:
    """Everything known about one endpoint's quota. Pure: every method takes ``now``."""

    burst: SlidingWindow | None
    steady: SlidingWindow | None
    share: float = 1.0
    steady_seconds: float = 60.0  # the server's steady window length, to tell windows apart
    reset_slack: float = 1.0
    paused_until: float = -math.inf
    server_deadline: float = -math.inf
    server_allowance: int = 0
    in_flight: int = 0
    # The published limit the windows are scaled from (None: unlimited), for rescale.
    limit: EndpointLimit | None = None
    # Until the next answer, at most one request in flight (see rescale).
    probing: bool = False
    # The share follows the group: spend what Klaviyo's figures show the others leave unused
    # (consumer.klaviyo.borrowing), past the local steady window.
    borrow: bool = False
    account: AccountWindow | None = None
    # The share of each window a request beyond the reserve must leave (reserve_share).
    reserve: float = 0.0

    @classmethod
    def from_limit(
        cls,
        limit: EndpointLimit | None,
        *,
        share: float = 1.0,
        reset_slack: float = 1.0,
        probe: bool = False,
    ) -> EndpointBudget:
        if limit is None:
            return cls(burst=None, steady=None, share=share, reset_slack=reset_slack)
        return cls(
            burst=scaled(limit.burst, share),
            steady=scaled(limit.steady, share),
            share=share,
            steady_seconds=limit.steady.seconds,
            reset_slack=reset_slack,
            limit=limit,
            probing=probe,
            borrow=probe,
            reserve=reserve_share(limit),
            account=AccountWindow(
                limit.steady.requests,
                limit.steady.seconds,
                burst_rate=limit.burst.requests / limit.burst.seconds,
                reset_slack=reset_slack,
            ),
        )

    def _windows(self) -> tuple[SlidingWindow, ...]:
        return tuple(w for w in (self.burst, self.steady) if w is not None)

    def _server_capped(self, now: float) -> bool:
        return now < self.server_deadline

    def _borrowing(self) -> AccountWindow | None:
        if self.borrow and self.account is not None and self.account.speaks:
            return self.account
        return None

    def ready_at(self, now: float) -> float:
        """Earliest time (≥ now) at which one more request may be sent."""
        at = max(now, self.paused_until)
        account = self._borrowing()
        if account is not None:
            if self.burst is not None:
                at = max(at, self.burst.free_at(now))
            return max(at, self._shared_ready_at(account, now))
        for window in self._windows():
            at = max(at, window.free_at(now))
        if self._server_capped(now) and self.server_allowance <= 0:
            at = max(at, self.server_deadline)
        if self.probing and self.in_flight > 0:
            at = math.inf  # the answer in flight tells what the account has left
        return at

    def _shared_ready_at(self, account: AccountWindow, now: float) -> float:
        """When the account's figures let one more request go (borrowing mode). The local
        steady window only tells whether this replica is within its own share."""
        if self.share <= 0:
            return math.inf  # no partitions: nothing goes (set_share wakes the waiters)
        ask = math.inf if self.in_flight > 0 else now  # one request alone, whose answer tells
        if self.probing or not account.current(now):
            # No figure for this window yet, or one from before a larger share. Alone, the
            # replica's own window is the account's (as without borrowing).
            if self.share >= 1 and not self.probing and self.steady is not None:
                return min(ask, self.steady.free_at(now))
            return ask
        at = self._room_at(account, now, aged=True)
        if at <= now + _EPSILON or self.in_flight > 0:
            return at  # inf: an answer on its way re-bases the claim (release wakes the queue)
        # Nothing in flight and no room on the aged figure: once the figure as answered has
        # room (the reserve shrank, a local place freed), one request asks again; used up, the
        # window's end.
        return min(self._room_at(account, now, aged=False), account.deadline)

    def _room_at(self, account: AccountWindow, now: float, *, aged: bool) -> float:
        if aged:
            at = now if account.borrowing_claim(self.share, now) >= 1 else math.inf
        else:
            at = account.borrow_at(self.share, now)
        if account.own_claim(self.share, now, aged=aged) >= 1 and self.steady is not None:
            at = min(at, self.steady.free_at(now))
        return at

    def grant(self, now: float) -> None:
        if self.account is not None:
            self.account.granted(now)
        for window in self._windows():
            window.take()
        if self._server_capped(now):
            self.server_allowance -= 1
        self.in_flight += 1

    def remaining(self, now: float) -> int | None:
        """Requests left in the current steady window as we see it (None: unlimited)."""
        account = self._borrowing()
        if account is not None and account.current(now):
            return max(0, account.own_claim(self.share, now))
        left = self.steady.left(now) if self.steady is not None else None
        if self._server_capped(now):
            allowance = max(0, self.server_allowance)
            left = allowance if left is None else min(left, allowance)
        return left

    def beyond_reserve(self, now: float) -> bool:
        """Whether one more request leaves at least the reserve in both windows (the steady
        one as :meth:`remaining` sees it: Klaviyo's figures and the share included)."""
        if self.burst is not None and self.burst.left(now) <= self._kept(self.burst):
            return False
        remaining = self.remaining(now)
        return remaining is None or self.steady is None or remaining > self._kept(self.steady)

    def _kept(self, window: SlidingWindow) -> int:
        return math.floor(self.reserve * window.limit)

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    def observe_server(self, now: float, remaining: int, reset: float) -> None:
        """Apply ``RateLimit-Remaining`` / ``RateLimit-Reset`` from an answer received at ``now``.

        Call before the answering request leaves ``in_flight``: every other request still in
        flight may reach the server's count after this answer was computed.
        """
        if self.account is not None:
            self.account.observe(now, remaining, reset, self.in_flight)
        deadline = now + reset + self.reset_slack
        allowance = math.floor(remaining * self.share) - max(0, self.in_flight - 1)
        if self._server_capped(now) and not self.probing:
            tolerance = self.steady_seconds / 2
            if abs(deadline - self.server_deadline) <= tolerance:
                # Same server window: both figures are safe bounds, keep the tighter one.
                allowance = min(allowance, self.server_allowance)
                deadline = max(deadline, self.server_deadline)
            elif deadline < self.server_deadline:
                return  # a late answer about a server window that has already ended
        self.server_deadline = deadline
        self.server_allowance = allowance

    def silent(self) -> None:
        """An answer came without the figures: back to the local windows until one has them."""
        if self.account is not None:
            self.account.speaks = False

    def done(self, now: float) -> None:
        """The request granted earlier was answered (or given up) at ``now``."""
        for window in self._windows():
            window.answered(now)
        self.in_flight -= 1
        self.probing = False

    def saturation(self, now: float) -> float:
        """Share of this replica's steady window in use (0 when unlimited or idle). Borrowing,
        at least the account's: a quiet replica is saturated too when the busy ones use what it
        leaves (another pod would add nothing then)."""
        if self.steady is None:
            return 0.0
        used = self.steady.used(now)
        if used == 0:
            return 0.0
        local = 1.0 if self.steady.limit == 0 else min(1.0, used / self.steady.limit)
        account = self._borrowing()
        if account is None or not account.current(now):
            return local
        return max(local, account.pace_used(now))

    def rescale(self, share: float, *, probe: bool = False) -> None:
        """Apply a new share, keeping the windows' history (what this replica sent lately still
        counts against its new limit: a shrinking replica waits until its excess ages out).

        A share that grows cannot be trusted the same way: the quota it gains was in use by
        another replica a moment ago, and our empty history does not show it. So a growing
        budget probes: one request until an answer comes, whose ``RateLimit-Remaining`` then
        replaces (rather than tightens) the server cap, scaled by the new share. ``probe``: so
        does any share, when the history predates the group's shares (the first one).
        """
        if share > self.share or probe:
            self.probing = True
        if self.share > 0:
            self.server_allowance = math.floor(self.server_allowance * share / self.share)
        else:
            self.server_deadline = -math.inf  # an allowance of nothing says nothing
        self.share = share
        if self.limit is not None and self.burst is not None and self.steady is not None:
            self.burst.resize(scaled(self.limit.burst, share))
            self.steady.resize(scaled(self.limit.steady, share))


@dataclass
class Permit:
    """Leave to send one request; give it back with :meth:`RateLimiter.release`."""

    endpoint: str
    waited: float
    released: bool = field(default=False)


# A queued request: (priority, order, arrival number, its future). Tuples compare by priority,
# then order (when its event started, see KlaviyoRequest.order), then arrival; arrival numbers
# are unique, so the futures themselves are never compared.
_Waiter = tuple[int, int, int, asyncio.Future[None]]


@dataclass
class _Queue:
    budget: EndpointBudget
    waiters: list[_Waiter] = field(default_factory=list)  # a heap
    arrivals: itertools.count[int] = field(default_factory=itertools.count)
    timer: asyncio.TimerHandle | None = None


class RateLimiter:
    """Per-endpoint limiter shared by every caller (and every client) that holds it."""

    def __init__(
        self,
        limits: Mapping[str, EndpointLimit],
        *,
        share: float = 1.0,
        reset_slack: float = 1.0,
        account: str = "default",
    ) -> None:
        self._limits = dict(limits)
        self._account = account  # the metrics' label (consumer.accounts)
        self._share = share
        self._reset_slack = reset_slack
        self._queues: dict[str, _Queue] = {}

    @classmethod
    def from_settings(cls, settings: Settings, account: str = "default") -> RateLimiter:
        # Unset: the relay sets the group-derived share at every rebalance (set_share); until
        # the first, the whole quota (only `check` and the start-up probe send before it).
        share = settings.rate_limit_share
        return cls(settings.rate_limits, share=1.0 if share is None else share, account=account)

    def _queue(self, endpoint: str) -> _Queue:
        queue = self._queues.get(endpoint)
        if queue is None:
            budget = EndpointBudget.from_limit(
                self._limits.get(endpoint),
                share=self._share,
                reset_slack=self._reset_slack,
                probe=self._group_share,
            )
            queue = self._queues[endpoint] = _Queue(budget)
        return queue

    async def acquire(self, endpoint: str, priority: int = DEFAULT_RANK, order: int = 0) -> Permit:
        """Wait until ``endpoint`` may take one more request, and take it.

        Waiters go by ``priority`` (a rank, smaller first), then by ``order`` (their events'
        start, smaller first), then in arrival order. Nobody
        jumps a queue that exists: with any waiter queued, even an urgent newcomer queues (and
        goes ahead of every less urgent waiter at the next grant).
        """
        loop = asyncio.get_running_loop()
        queue = self._queue(endpoint)
        started = loop.time()
        if not queue.waiters and queue.budget.ready_at(started) <= started + _EPSILON:
            queue.budget.grant(started)
        else:
            waiter: asyncio.Future[None] = loop.create_future()
            heapq.heappush(queue.waiters, (priority, order, next(queue.arrivals), waiter))
            if queue.timer is None:
                self._wake(queue)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    # Granted, then cancelled before it could send: hand the place back.
                    queue.budget.done(loop.time())
                    if queue.waiters:
                        self._wake(queue)
                raise
        waited = loop.time() - started
        RATE_LIMIT_WAIT.labels(endpoint).observe(waited)
        _wait_by_priority(endpoint, priority).observe(waited)
        self._report(endpoint, queue, loop.time())
        return Permit(endpoint=endpoint, waited=waited)

    def try_acquire(
        self, endpoint: str, priority: int = DEFAULT_RANK, *, beyond_reserve: bool = False
    ) -> Permit | None:
        """Take one place for ``endpoint`` at once if nobody waits and one is free now; else
        None, and nothing is taken (for a caller with another way to send). ``priority`` only
        labels the wait: in auto mode most Create Events are granted here, and each class's
        wait must count them or the per-class figures would show retries and bulk jobs only.
        ``beyond_reserve``: only if the place leaves the windows' reserve (see the module)."""
        now = asyncio.get_running_loop().time()
        queue = self._queue(endpoint)
        if queue.waiters or queue.budget.ready_at(now) > now + _EPSILON:
            return None
        if beyond_reserve and not queue.budget.beyond_reserve(now):
            return None
        queue.budget.grant(now)
        RATE_LIMIT_WAIT.labels(endpoint).observe(0.0)
        _wait_by_priority(endpoint, priority).observe(0.0)
        self._report(endpoint, queue, now)
        return Permit(endpoint=endpoint, waited=0.0)

    def release(
        self,
        permit: Permit,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Hand back a permit with what the answer said (``headers`` case-insensitive)."""
        if permit.released:
            return
        permit.released = True
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue(permit.endpoint)
        headers = headers or {}
        if status == 429:
            pause = parse_retry_after(headers.get("Retry-After"))
            queue.budget.pause(now + (_DEFAULT_PAUSE_SECONDS if pause is None else pause))
        remaining = _leading_number(headers.get("RateLimit-Remaining"))
        reset = _leading_number(headers.get("RateLimit-Reset"))
        if remaining is not None and reset is not None:
            queue.budget.observe_server(now, int(remaining), reset)
        elif status is not None and status != 429:  # a 429 carries Retry-After instead
            queue.budget.silent()
        queue.budget.done(now)
        self._report(permit.endpoint, queue, now)
        if queue.waiters:
            self._wake(queue)

    def _wake(self, queue: _Queue) -> None:
        """Grant every waiter that may go now, most urgent first; re-arm the timer for the rest."""
        loop = asyncio.get_running_loop()
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        now = loop.time()
        while queue.waiters:
            head = queue.waiters[0][3]
            if head.done():  # cancelled while waiting
                heapq.heappop(queue.waiters)
                continue
            at = queue.budget.ready_at(now)
            if at > now + _EPSILON:
                if at < math.inf:  # else every place is in flight: the next answer wakes us
                    queue.timer = loop.call_at(at, self._wake, queue)
                return
            heapq.heappop(queue.waiters)
            queue.budget.grant(now)
            head.set_result(None)

    def _report(self, endpoint: str, queue: _Queue, now: float) -> None:
        remaining = queue.budget.remaining(now)
        if remaining is not None:
            RATE_LIMIT_REMAINING.labels(endpoint, self._account).set(remaining)
        QUOTA_SATURATION.labels(endpoint, self._account).set(queue.budget.saturation(now))

    # Set by set_share: shares move with the consumer group from then on, so a budget made
    # later (an endpoint first used after a rebalance) must not trust its empty history either.
    _group_share: bool = False

    def set_share(self, share: float) -> None:
        """Apply a new share of the account's quota to every endpoint (a rebalance moved it).

        The caller orders it: a shrinking share is applied before the partitions go to
        another member, a growing one after they arrived (see consumer.pipeline.share).
        """
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within [0, 1], not {share}")
        first = not self._group_share
        self._share = share
        self._group_share = True
        now = asyncio.get_running_loop().time()
        for endpoint, queue in self._queues.items():
            queue.budget.rescale(share, probe=first)
            queue.budget.borrow = True
            self._report(endpoint, queue, now)
            if queue.waiters:
                self._wake(queue)


# ``.labels()`` takes a lock on every call; the children are kept (endpoints x classes).
@functools.cache
def _wait_by_priority(endpoint: str, priority: int) -> Histogram:
    return RATE_LIMIT_WAIT_BY_PRIORITY.labels(endpoint, class_of(priority).value)


def _leading_number(value: str | None) -> float | None:
    """The first number of a header such as ``"42"`` or ``"42, 42;w=60"``."""
    if value is None:
        return None
    match = _LEADING_NUMBER.match(value)
    return float(match.group(1)) if match else None
