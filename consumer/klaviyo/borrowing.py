"""Borrowing the quota other replicas leave unused, from Klaviyo's own figures.

When the share follows the consumer group (``RATE_LIMIT_SHARE`` unset), a replica's share is its
partitions' part of all partitions, but the load per partition is uneven: a replica holding quiet
partitions leaves part of its share unused, and with local windows alone nobody else may use it
(three relays used 78-80 % of the account's steady windows in the group bench). Klaviyo's
``RateLimit-Remaining`` / ``RateLimit-Reset`` describe the account's current steady window as all
replicas have used it, so they show what is left over. This module decides how much of it one
replica may claim, without any coordination between replicas:

1. **A claim is the replica's share of what Klaviyo says remains**, ``floor(share × remaining)``,
   less the replica's own requests the figure does not count yet (in flight when it was
   answered, and granted since). The shares of the group add up to at most 1, so the claims of all
   replicas, each taken from a figure that counts every request that arrived before it, add up to
   at most what the account has left. A replica that keeps sending re-bases its claim on every
   answer: as the others leave requests unused, ``remaining`` stays high and the claim grows back
   (a lone busy replica takes share, then share of the rest, ... of the window: nearly all of it).
   ``remaining`` is the lowest figure answered in the window (it only falls within a window, so a
   higher one is a reordered answer).
2. **Borrowing is paced** so a quiet replica keeps its share's pace: a replica past its own share
   (its local steady window, ``share`` × the published limit per window, is full) claims only from
   what exceeds the others' shares of the rest of the window, ``(1 − share) × limit × time left /
   window``: it borrows what the others did *not* use in the elapsed part of the window, and the
   rest as the window ends (the reserve shrinks to 0 at the reset). A replica within its own share
   claims from all of ``remaining``.
3. **Figures go stale.** A figure is only as good as the moment it was answered: the other
   replicas spend the remainder meanwhile, at most at their burst windows' rate (the burst
   window stays local, and their shares of it add up to ``1 − share``). So a figure's
   ``remaining`` is discounted by ``(1 − share) × burst rate × its age``. A replica that keeps
   sending gets answers every round trip, and a quiet replica's figure keeps enough while the
   account has plenty left; once the discount leaves nothing, one request goes alone and its
   answer re-bases the claim. So does the first request of a window (no figure for it yet) and
   one after a larger share (see ``EndpointBudget.rescale``). A replica alone (share 1) has nobody
   to discount for.

What remains is the error of figures that cannot see requests still on their way from the other
replicas (a round trip's worth) and of reordered answers: a few requests at the end of a
window that Klaviyo answers 429, and every replica then pauses for ``Retry-After``. The bench's
group scenario counts them (target: at most 0.5 % of requests).

Borrowing needs the figures: a replica whose last answer carried none (a proxy in between) goes
back to its local windows (``consumer.klaviyo.ratelimit``), and an explicit ``RATE_LIMIT_SHARE``
never borrows (the operator fixed the share, for instance because other applications use the
same account).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def reserve(share: float, steady_requests: int, steady_seconds: float, time_left: float) -> float:
    """What the other replicas may still use at their shares' pace before the window resets."""
    left = min(max(time_left, 0.0), steady_seconds)
    return (1.0 - share) * steady_requests * left / steady_seconds


def claim(share: float, remaining: float, pending: int) -> int:
    """Requests this replica may still send on a figure of ``remaining`` (what the account has
    left, less any reserve), with ``pending`` of its own requests not counted by it yet."""
    return math.floor(share * remaining) - pending


@dataclass
class AccountWindow:
    """What Klaviyo last said about the account's current steady window. Pure: times passed in."""

    steady_requests: int
    steady_seconds: float
    burst_rate: float = 0.0  # the account's burst limit per second (what others may spend)
    reset_slack: float = 1.0
    remaining: int = 0  # the lowest RateLimit-Remaining answered in this window
    # Earliest (answer + RateLimit-Reset): the server's window ends by then if it rounds the
    # reset up (the sandbox does); the reserve counts the time left up to it.
    resets_at: float = -math.inf
    # Latest (answer + reset + slack): until then the figures are about this window.
    deadline: float = -math.inf
    seen_at: float = -math.inf
    pending: int = 0  # our requests the figure may not count yet
    speaks: bool = False  # the last answer carried the figures

    def current(self, now: float) -> bool:
        return now < self.deadline

    def _left(self, share: float, now: float, *, aged: bool) -> float:
        """``remaining``, less what the others may have spent since it was answered (``aged``)."""
        if not aged:
            return self.remaining
        return self.remaining - (1.0 - share) * self.burst_rate * max(0.0, now - self.seen_at)

    def observe(self, now: float, remaining: int, reset: float, in_flight: int) -> None:
        """An answer received at ``now``, with ``in_flight`` requests (itself included) out."""
        self.speaks = True
        deadline = now + reset + self.reset_slack
        if self.current(now) and abs(deadline - self.deadline) <= self.steady_seconds / 2:
            remaining = min(remaining, self.remaining)
            self.resets_at = min(self.resets_at, now + reset)
            self.deadline = max(self.deadline, deadline)
        elif self.current(now) and deadline < self.deadline:
            return  # a late answer about a window that has ended
        else:
            self.resets_at, self.deadline = now + reset, deadline
        self.remaining = remaining
        self.seen_at = now
        self.pending = max(0, in_flight - 1)

    def granted(self, now: float) -> None:
        if self.current(now):
            self.pending += 1

    def own_claim(self, share: float, now: float, *, aged: bool = True) -> int:
        """Claim of a replica within its own share: its share of all that remains."""
        return claim(share, self._left(share, now, aged=aged), self.pending)

    def borrowing_claim(self, share: float, now: float, *, aged: bool = True) -> int:
        """Claim of a replica past its own share: its share of what exceeds the others' pace."""
        held = reserve(share, self.steady_requests, self.steady_seconds, self.resets_at - now)
        return claim(share, self._left(share, now, aged=aged) - held, self.pending)

    def borrow_at(self, share: float, now: float) -> float:
        """Earliest time (≥ now) the figure as answered (not aged) lets a borrowing claim reach
        one request as the reserve shrinks; ``inf``: not in this window."""
        if share <= 0:
            return math.inf
        if self.borrowing_claim(share, now, aged=False) >= 1:
            return now
        if share >= 1 or self.steady_requests <= 0:
            return math.inf  # no reserve to shrink
        # share × (remaining − (1 − share) × L × τ / W) ≥ 1 + pending, solved for τ (time left).
        excess = self.remaining - (1 + self.pending) / share
        if excess < 0:
            return math.inf
        time_left = excess * self.steady_seconds / ((1.0 - share) * self.steady_requests)
        return max(now, self.resets_at - time_left)

    def pace_used(self, now: float) -> float:
        """The account's use of its window so far, over the pace that would use all of it by
        the reset (capped at 1; 0 when nothing is known yet)."""
        elapsed = self.steady_seconds - (self.resets_at - now)
        if elapsed <= 0 or self.steady_requests <= 0:
            return 0.0
        pace = self.steady_requests * min(1.0, elapsed / self.steady_seconds)
        return min(1.0, (self.steady_requests - self.remaining) / pace)
