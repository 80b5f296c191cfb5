"""Borrowing what other replicas leave unused, from Klaviyo's figures (consumer.klaviyo.borrowing).

The arithmetic first (claims, the paced reserve, figures within a window), then replicas with
uneven demand simulated against a server that counts fixed windows as Klaviyo does: together they
use nearly all of each window, never more than it holds, and a quiet replica keeps its pace.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import pytest

from consumer.klaviyo.borrowing import AccountWindow, claim, reserve
from consumer.klaviyo.ratelimit import EndpointBudget
from consumer.settings import EndpointLimit, WindowLimit


def test_a_claim_is_the_share_of_what_remains_less_our_uncounted_requests() -> None:
    assert claim(0.5, 100, pending=0) == 50
    assert claim(0.5, 100, pending=3) == 47
    assert claim(1 / 3, 10, pending=0) == 3
    assert claim(0.0, 1000, pending=0) == 0
    # Shares that add up to 1 never claim more than remains, together.
    shares = [0.5, 0.3, 0.2]
    assert sum(claim(s, 999, pending=0) for s in shares) <= 999


def test_the_reserve_is_the_others_pace_for_the_rest_of_the_window() -> None:
    assert reserve(0.25, 3500, 60.0, time_left=60.0) == pytest.approx(2625)
    assert reserve(0.25, 3500, 60.0, time_left=30.0) == pytest.approx(1312.5)
    assert reserve(0.25, 3500, 60.0, time_left=0.0) == 0
    assert reserve(0.25, 3500, 60.0, time_left=-3.0) == 0  # past the reset
    assert reserve(0.25, 3500, 60.0, time_left=61.0) == pytest.approx(2625)  # rounded-up reset
    assert reserve(1.0, 3500, 60.0, time_left=60.0) == 0  # alone: nobody to leave room for


def window(remaining: int = 3500, at: float = 0.0, reset: float = 60.0) -> AccountWindow:
    account = AccountWindow(3500, 60.0, reset_slack=1.0)
    account.observe(at, remaining, reset, in_flight=1)
    return account


def test_within_a_window_the_lowest_figure_counts_and_late_answers_are_ignored() -> None:
    account = window(remaining=3000, at=1.0, reset=59)
    account.observe(1.1, 3200, 59, in_flight=1)  # reordered: the count only falls in a window
    assert account.remaining == 3000
    account.observe(1.2, 2900, 59, in_flight=3)  # two more of ours on their way
    assert (account.remaining, account.pending) == (2900, 2)
    account.observe(1.3, 3499, 0, in_flight=1)  # about the previous window
    assert account.remaining == 2900
    account.observe(61.5, 3490, 59, in_flight=1)  # a new window
    assert account.remaining == 3490
    assert account.resets_at == pytest.approx(120.5)


def test_grants_count_against_the_claim_until_the_next_answer() -> None:
    account = window(remaining=100)
    assert account.own_claim(0.5, 0.0) == 50
    for _ in range(10):
        account.granted(0.5)
    assert account.own_claim(0.5, 0.5) == 40
    account.observe(0.6, 90, 59.4, in_flight=10)  # the first of them answered, nine out
    assert account.own_claim(0.5, 0.6) == 45 - 9


def test_borrowing_waits_for_the_others_pace_to_lapse() -> None:
    # Half the window gone, half of the account's requests left: the others (share 0.75) are
    # owed 0.75 × 3500 × 30/60 = 1312.5 of the 1750 left; a borrower claims a quarter of the rest.
    account = window(remaining=1750, at=30.0, reset=30.0)
    assert account.borrowing_claim(0.25, 30.0) == math.floor(0.25 * (1750 - 1312.5))
    # Within its own share it claims from all that remains.
    assert account.own_claim(0.25, 30.0) == math.floor(0.25 * 1750)
    # With the others' pace using it all, borrowing starts as the window runs out.
    busy = window(remaining=2625, at=0.0, reset=60.0)
    assert busy.borrowing_claim(0.25, 0.0) == 0
    at = busy.borrow_at(0.25, 0.0)
    assert 0.0 < at < 60.0
    assert busy.borrowing_claim(0.25, at + 1e-9) >= 1
    assert busy.borrowing_claim(0.25, at - 0.1) < 1


def test_nothing_to_borrow_when_the_account_is_used_up() -> None:
    account = window(remaining=0)
    assert account.borrow_at(0.5, 0.0) == math.inf
    assert account.borrow_at(0.0, 0.0) == math.inf
    assert window(remaining=0).borrow_at(1.0, 0.0) == math.inf


def test_a_figure_ages_by_what_the_others_may_spend_at_their_burst_rate() -> None:
    account = AccountWindow(3500, 60.0, burst_rate=350.0)
    account.observe(10.0, 1000, 50.0, in_flight=1)
    assert account.own_claim(0.5, 10.0) == 500
    # Two seconds on, the other half of the group may have sent 2 × 175 of what it saw.
    assert account.own_claim(0.5, 12.0) == math.floor(0.5 * (1000 - 350))
    assert account.own_claim(0.5, 12.0, aged=False) == 500
    assert account.own_claim(1.0, 30.0) == 1000  # alone: nobody else spends it
    assert account.current(60.9) and not account.current(61.0)  # reset + one second of slack


LIMIT = EndpointLimit(
    burst=WindowLimit(requests=350, seconds=1.0),
    steady=WindowLimit(requests=600, seconds=60.0),
)


def borrowing_budget(share: float) -> EndpointBudget:
    budget = EndpointBudget.from_limit(LIMIT, share=share, probe=True)
    assert budget.borrow
    return budget


def test_an_aged_out_figure_sends_one_request_alone() -> None:
    budget = borrowing_budget(0.5)
    budget.grant(0.0)
    budget.observe_server(0.1, remaining=600, reset=59.9)
    budget.done(0.1)
    for at in (0.2, 2.0):  # plenty left, even after the others' burst rate for 1.9 s
        assert budget.ready_at(at) == at
        budget.grant(at)
        budget.done(at)
    later = 5.0  # 4.9 s at the others' 175/s could have spent all 600
    assert budget.ready_at(later) == later
    budget.grant(later)
    assert budget.ready_at(later) == math.inf  # its answer tells what is left now


def test_past_its_own_window_a_replica_goes_on_with_what_the_account_has_left() -> None:
    budget = borrowing_budget(0.5)
    budget.grant(0.0)
    budget.observe_server(0.1, remaining=599, reset=59.9)
    budget.done(0.1)
    now = 0.1
    sent = 1
    while budget.ready_at(now) <= now and sent < 600:
        budget.grant(now)
        budget.observe_server(now, remaining=600 - sent - 1, reset=60 - now)
        budget.done(now)
        sent += 1
        now += 0.05
    # The local window (300) alone would have stopped it; the others sent nothing, so by the
    # window's end it used nearly all of it, and never more.
    assert budget.steady is not None and sent > budget.steady.limit
    assert sent <= 600


def test_without_figures_the_local_windows_hold_as_before() -> None:
    budget = borrowing_budget(0.5)
    budget.grant(0.0)
    budget.silent()  # an answer without RateLimit-* (a proxy)
    budget.done(0.0)
    budget.probing = False
    for i in range(1, 300):  # 100 a second: within the burst window
        now = i / 100
        assert budget.ready_at(now) == now
        budget.grant(now)
        budget.done(now)
    assert budget.ready_at(3.0) == pytest.approx(60.0)  # the first place frees


def test_the_account_pace_counts_in_a_borrowing_replicas_saturation() -> None:
    account = window(remaining=1750, at=30.0, reset=30.0)  # half used at half time
    assert account.pace_used(30.0) == pytest.approx(1.0)
    assert window(remaining=2625, at=30.0, reset=30.0).pace_used(30.0) == pytest.approx(0.5)
    assert window(remaining=3500, at=0.0, reset=60.0).pace_used(0.0) == 0.0
    budget = borrowing_budget(0.5)
    budget.grant(30.0)
    budget.observe_server(30.0, remaining=300, reset=30.0)  # the others used half the window
    budget.done(30.0)
    assert budget.steady is not None and budget.steady.limit == 300
    assert budget.saturation(30.0) == pytest.approx(1.0)  # its own window: 1 of 300
    budget.borrow = False
    assert budget.saturation(30.0) == pytest.approx(1 / 300)


# A simulation: replicas (budgets) with their own demand, one server counting fixed windows.

LATENCY = 0.1
STEP = 0.01


@dataclass
class Replica:
    budget: EndpointBudget
    rate: float  # requests arriving per second (inf: a backlog that never empties)
    waiting: float = 0.0
    sent: int = 0
    oldest_wait: float = 0.0
    queued_since: list[float] = field(default_factory=list)


@dataclass
class Server:
    limit: int
    seconds: float
    admitted: dict[int, int] = field(default_factory=dict)
    throttled: int = 0

    def arrive(self, at: float) -> tuple[int, int, float] | None:
        """(status, remaining, reset) of the answer."""
        index = int(at // self.seconds)
        count = self.admitted.get(index, 0)
        if count >= self.limit:
            self.throttled += 1
            return None
        self.admitted[index] = count + 1
        ends_in = (index + 1) * self.seconds - at
        return 202, self.limit - count - 1, max(1, math.ceil(ends_in))


def simulate(replicas: list[Replica], seconds: float) -> Server:
    server = Server(LIMIT.steady.requests, LIMIT.steady.seconds)
    answers: list[tuple[float, int, int, tuple[int, int, float] | None]] = []
    serial = 0
    steps = int(seconds / STEP)
    for step in range(steps):
        now = step * STEP
        while answers and answers[0][0] <= now:
            at, _, who, answer = heapq.heappop(answers)
            budget = replicas[who].budget
            if answer is None:
                budget.pause(at + 1.0)
            else:
                budget.observe_server(at, remaining=answer[1], reset=answer[2])
            budget.done(at)
        for who, replica in enumerate(replicas):
            if math.isinf(replica.rate):
                replica.queued_since.append(now)
            else:
                replica.waiting += replica.rate * STEP
                while replica.waiting >= 1:
                    replica.waiting -= 1
                    replica.queued_since.append(now)
            while replica.queued_since and replica.budget.ready_at(now) <= now + 1e-9:
                replica.budget.grant(now)
                since = replica.queued_since.pop(0)
                replica.oldest_wait = max(replica.oldest_wait, now - since)
                replica.sent += 1
                answer = server.arrive(now + LATENCY / 2)
                serial += 1
                heapq.heappush(answers, (now + LATENCY, serial, who, answer))
            if math.isinf(replica.rate):
                replica.queued_since.clear()  # a backlog: only the head's wait matters
    return server


def full_windows(server: Server, seconds: float) -> list[int]:
    return [server.admitted.get(i, 0) for i in range(1, int(seconds // server.seconds))]


def test_uneven_replicas_use_nearly_all_of_each_window_and_never_more() -> None:
    shares = [1 / 3, 1 / 3, 1 / 3]
    # A busy replica (a backlog), a quiet one at a quarter of its share's pace, an idle one.
    replicas = [
        Replica(borrowing_budget(shares[0]), rate=math.inf),
        Replica(borrowing_budget(shares[1]), rate=600 / 60 / 3 / 4),
        Replica(borrowing_budget(shares[2]), rate=0.0),
    ]
    seconds = 300.0
    server = simulate(replicas, seconds)
    windows = full_windows(server, seconds)
    assert server.throttled == 0
    assert all(used <= LIMIT.steady.requests for used in server.admitted.values())
    assert min(windows) >= 0.95 * LIMIT.steady.requests, windows
    # The quiet replica kept its pace: nothing of it waited for the next window.
    assert replicas[1].oldest_wait < 5.0, replicas[1].oldest_wait


def test_without_borrowing_the_quiet_shares_go_unused() -> None:
    budgets = [borrowing_budget(1 / 3) for _ in range(3)]
    for budget in budgets:
        budget.borrow = False  # an explicit RATE_LIMIT_SHARE: the local windows only
    replicas = [
        Replica(budgets[0], rate=math.inf),
        Replica(budgets[1], rate=600 / 60 / 3 / 4),
        Replica(budgets[2], rate=0.0),
    ]
    server = simulate(replicas, 300.0)
    windows = full_windows(server, 300.0)
    assert server.throttled == 0
    assert max(windows) < 0.5 * LIMIT.steady.requests, windows


def test_two_busy_replicas_and_a_lone_one_stay_within_the_window() -> None:
    replicas = [
        Replica(borrowing_budget(0.5), rate=math.inf),
        Replica(borrowing_budget(0.5), rate=math.inf),
    ]
    server = simulate(replicas, 200.0)
    windows = full_windows(server, 200.0)
    assert server.throttled <= 0.005 * sum(server.admitted.values())
    assert min(windows) >= 0.95 * LIMIT.steady.requests, windows
    alone = [Replica(borrowing_budget(1.0), rate=math.inf)]
    server = simulate(alone, 200.0)
    assert server.throttled == 0
    assert min(full_windows(server, 200.0)) >= 0.98 * LIMIT.steady.requests
