"""The quota share follows the consumer group: two relay processes on the real broker and the
sandbox (published limits), scaled 1 → 2 → 1. Each relay's share, read from its own /metrics,
is 1.0 alone, and with two members both hold some share and together never more than 1 — also
while the partitions move. Events produced while the share moves are all delivered with no
429. With uneven demand, the busy relay borrows what the quiet one leaves of the account's
window (counted per window at the sandbox)."""

from __future__ import annotations

from collections import Counter

import pytest

from consumer.settings import DEFAULT_RATE_LIMITS, EndpointLimit, WindowLimit
from dev.harness import RelayNotServing, rate_limits_json
from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.facts import PUBLISHED_LIMITS, Limit
from klaviyo_sandbox.fixed_windows import FixedWindowQuota
from tests.fixtures.relay_harness import (
    RelayCase,
    RelayProcess,
    base_ids,
    make_events,
    produce_events,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SHARE = "klaviyo_relay_quota_share"
SATURATION = "klaviyo_relay_quota_saturation"


def group_env(case: RelayCase, base_url: str, limits: dict[str, EndpointLimit]) -> dict[str, str]:
    """A realtime relay under ``limits`` whose share the group decides (and which borrows)."""
    env = case.env(base_url, SEND_MODE="realtime", RATE_LIMITS=rate_limits_json(limits))
    env.pop("RATE_LIMIT_SHARE", None)
    return env


async def share_of(relay: RelayProcess) -> float:
    """The relay's share; 0 once it stopped (a stopping relay closes /metrics last, after it
    left the group)."""
    try:
        return await relay.metric(SHARE)
    except RelayNotServing:
        return 0.0


class ShareWatch:
    """Samples both relays' shares while a rebalance runs. The member whose share may grow is
    read first: it grows only after the other shrank, so a pair read in that order can only
    under-count the sum (never show a sum above 1 that never was). A relay not started yet, or
    stopped, holds no share."""

    def __init__(self, grower: RelayProcess, shrinker: RelayProcess) -> None:
        self.grower, self.shrinker = grower, shrinker
        self.sums: list[float] = []
        self.last: tuple[float, float] = (0.0, 0.0)

    async def sample(self) -> tuple[float, float]:
        grows = await share_of(self.grower)
        shrinks = await share_of(self.shrinker)
        self.sums.append(grows + shrinks)
        self.last = (grows, shrinks)
        return self.last


async def test_shares_follow_the_group_across_a_rebalance(relay_case: RelayCase) -> None:
    # Uneven partition counts: 4 partitions in all, whatever their topic.
    relay_case.topic("share-orders", "shop.order.placed", partitions=3)
    relay_case.topic("share-resets", "shop.account.password-reset-requested", partitions=1)
    sent: set[str] = set()

    def produce(count: int, seed: int) -> None:
        events = make_events(relay_case.factory, relay_case.topics, count, 40, seed)
        produce_events(relay_case.bootstrap, events)
        sent.update(e.event_id for e in events)

    options = SandboxOptions(rate_limits=dict(PUBLISHED_LIMITS))
    async with running_sandbox(options) as sandbox:

        def delivered() -> bool:
            return base_ids(sandbox.state.events) >= sent

        env = group_env(relay_case, sandbox.base_url, DEFAULT_RATE_LIMITS)
        first = relay_case.start(env, "first")
        produce(40, seed=1)

        async def first_alone() -> bool:
            return await first.metric(SHARE) == 1.0

        await wait_for(first_alone, what="the only member's share to be 1.0")
        await wait_for(delivered, what="the first events delivered")
        saturation = await first.metric_by(SATURATION, "endpoint")
        assert 0 < saturation["create_event"] <= 1  # its steady window holds those sends

        second = relay_case.start(env, "second")
        joining = ShareWatch(grower=second, shrinker=first)

        async def both_hold_some() -> bool:
            grown, shrunk = await joining.sample()
            return grown > 0 and shrunk > 0 and grown + shrunk == pytest.approx(1.0)

        await wait_for(both_hold_some, what="both members to hold a share", interval=0.05)
        assert max(joining.sums) <= 1.0 + 1e-9, joining.sums
        produce(40, seed=2)
        await wait_for(delivered, what="events delivered by two members")

        second.terminate()  # leaves the group: its partitions go back to the first
        leaving = ShareWatch(grower=first, shrinker=second)

        async def first_alone_again() -> bool:
            grown, _ = await leaving.sample()
            return grown == 1.0

        await wait_for(first_alone_again, what="the remaining member's share back at 1.0")
        assert max(leaving.sums) <= 1.0 + 1e-9, leaving.sums
        assert await second.wait_exit() == 0
        produce(40, seed=3)
        await wait_for(delivered, what="events delivered by the remaining member")
        first.terminate()
        assert await first.wait_exit() == 0
        throttled = dict(sandbox.sandbox.throttled)
    assert sum(throttled.values()) == 0, throttled
    assert second.logged("quota share") and first.logged("partitions revoked")


async def test_rate_limit_share_set_explicitly_wins_over_the_group(
    relay_case: RelayCase,
) -> None:
    relay_case.topic("share-fixed", "shop.order.placed", partitions=2)
    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        env = relay_case.env(sandbox.base_url, SEND_MODE="realtime", RATE_LIMIT_SHARE="0.25")
        relay = relay_case.start(env, "fixed")
        await wait_for(lambda: relay.logged("partitions assigned"), what="an assignment")
        # Alone in its group it holds every partition, yet keeps the share it was given.
        assert await relay.metric(SHARE) == 0.25
        relay.terminate()
        assert await relay.wait_exit() == 0
    assert not relay.logged("quota share")


class WindowCount(FixedWindowQuota):
    """The sandbox's quota for one endpoint, also counting admissions per steady window."""

    def __init__(self, limit: Limit) -> None:
        super().__init__(limit)
        self.admitted: Counter[int] = Counter()

    def take(self, now: float) -> int | None:
        retry_after = super().take(now)
        if retry_after is None:
            self.admitted[int(now // self.steady.seconds)] += 1
        return retry_after


# Short windows so a backlog spans several: 40 Create Events per 10 s, for the account.
SMALL = EndpointLimit(
    burst=WindowLimit(requests=50, seconds=1.0), steady=WindowLimit(requests=40, seconds=10.0)
)


async def test_a_busy_relay_borrows_what_a_quiet_one_leaves_of_the_window(
    relay_case: RelayCase,
) -> None:
    factory = relay_case.factory
    # One partition each: the two relays hold half the share each, but all the load is on one.
    busy_topic = relay_case.topic("borrow-orders", "shop.order.placed")
    quiet_topic = relay_case.topic("borrow-resets", "shop.account.password-reset-requested")
    topics = relay_case.topics
    limits = {"create_event": SMALL}
    options = SandboxOptions(rate_limits={"create_event": Limit.model_validate(SMALL.model_dump())})
    async with running_sandbox(options) as sandbox:
        counting = WindowCount(options.rate_limits["create_event"])  # type: ignore[index]
        sandbox.sandbox.quotas["create_event"] = counting
        env = group_env(relay_case, sandbox.base_url, limits)
        relays = [relay_case.start(env, f"relay{n}") for n in (1, 2)]

        async def halves() -> bool:
            shares = [await relay.metric(SHARE) for relay in relays]
            return shares == [0.5, 0.5]

        await wait_for(halves, what="both relays at half the share")
        busy = make_events(factory, {busy_topic: topics[busy_topic]}, 200, 50, seed=4)
        quiet = make_events(factory, {quiet_topic: topics[quiet_topic]}, 5, 5, seed=5)
        produce_events(relay_case.bootstrap, busy + quiet)
        sent = {e.event_id for e in busy + quiet}

        def delivered() -> bool:
            return base_ids(sandbox.state.events) >= sent

        # 205 requests: ~6 windows at the account's limit, ~11 at one relay's half.
        await wait_for(delivered, within=240, what="the backlog delivered")
        for relay in relays:
            relay.terminate()
        for relay in relays:
            assert await relay.wait_exit() == 0
        throttled = dict(sandbox.sandbox.throttled)
    assert sum(throttled.values()) == 0, throttled
    windows = sorted(counting.admitted)
    # Full windows: after the first admission's and before the last's.
    full = [counting.admitted[w] for w in range(windows[0] + 1, windows[-1])]
    assert full, counting.admitted
    # One relay's own half would be 20 a window; borrowing, the pair uses most of each window.
    assert min(full) >= 0.75 * SMALL.steady.requests, counting.admitted
    assert max(counting.admitted.values()) <= SMALL.steady.requests
