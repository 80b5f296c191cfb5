"""Poison records go to the dead-letter topic without stopping their partition; a Klaviyo
outage holds the relay (nothing dead-lettered, nothing committed past undelivered events); a
revoked key halts it (not ready, nothing further committed)."""

from __future__ import annotations

import asyncio
import time

import pytest

from consumer.klaviyo.recovery import SPELL_FAILURES, SPELL_SECONDS
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.fixtures.relay_harness import (
    RelayCase,
    base_ids,
    end_offsets,
    headers_dict,
    metrics_port,
    produce,
    produce_events,
    read_all,
    readiness,
    sandbox_stats,
    set_faults,
    wait_for,
)

pytestmark = pytest.mark.kafka


async def test_poison_records_are_dead_lettered_and_their_neighbours_delivered(
    relay_case: RelayCase,
) -> None:
    bootstrap, factory = relay_case.bootstrap, relay_case.factory
    topic = relay_case.topic("poison", "shop.account.created")
    key = b"cust-poison"

    def good(seq: int) -> tuple[str, bytes, bytes, str]:
        event = factory.event(topic, "shop.account.created", "cust-poison", seq)
        return topic, key, event.value, event.event_id

    too_long = factory.datum("shop.account.created", "cust-poison", 90)
    too_long["signup_source"] = "x" * (101 * 1024)  # a property string over Klaviyo's 100 KB
    refused = factory.datum("shop.account.created", "cust-poison", 91)
    refused["customer"]["email"] = "not an email"  # passes the handler, Klaviyo answers 400
    poison = {
        1: (b"garbage, not Avro", "bad_magic", "decode"),
        3: (b"\xc3\x01" + bytes(8) + b"\x02", "unknown_schema", "decode"),
        5: (factory.encode("shop.account.created", too_long), "limit_exceeded", "handle"),
        7: (factory.encode("shop.account.created", refused), "klaviyo_rejected", "send"),
    }
    records: list[tuple[str, bytes | None, bytes | None]] = []
    good_ids = []
    for offset in range(9):
        if offset in poison:
            records.append((topic, key, poison[offset][0]))
        else:
            _, _, value, event_id = good(offset)
            records.append((topic, key, value))
            good_ids.append(event_id)
    produce(bootstrap, records, headers=[("trace-id", b"t-1")])
    ends = relay_case.ends()

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        # Realtime: the refused event's dead letter names Create Event below.
        relay = relay_case.start(relay_case.env(sandbox.base_url, SEND_MODE="realtime"))
        await wait_for(
            lambda: relay_case.committed() == ends, what="committed offset past the poison records"
        )
        relay.terminate()
        assert await relay.wait_exit() == 0
        delivered = base_ids(sandbox.state.events)

    assert delivered == set(good_ids)
    letters = read_all(bootstrap, relay_case.dlq, expected=len(poison))
    assert len(letters) == len(poison)
    by_offset = {int(headers_dict(m)["__connect.errors.offset"]): m for m in letters}
    assert set(by_offset) == set(poison)
    for offset, (value, reason, stage) in poison.items():
        letter = by_offset[offset]
        headers = headers_dict(letter)
        assert letter.key() == key and letter.value() == value
        assert headers["trace-id"] == "t-1"
        assert headers["__connect.errors.topic"] == topic
        assert headers["__connect.errors.partition"] == "0"
        assert headers["__connect.errors.stage"] == stage
        assert headers["klaviyo-relay.reason"] == reason
        assert headers["__connect.errors.class.name"]
        assert headers["__connect.errors.exception.message"]
        assert "not an email" not in headers["__connect.errors.exception.message"]
        if reason == "klaviyo_rejected":
            assert headers["klaviyo-relay.klaviyo.status"] == "400"
            assert headers["klaviyo-relay.endpoint"] == "create_event"
        else:
            assert "klaviyo-relay.klaviyo.status" not in headers


async def test_outage_holds_then_catches_up_without_dead_letters(relay_case: RelayCase) -> None:
    bootstrap, factory, dlq = relay_case.bootstrap, relay_case.factory, relay_case.dlq
    topic = relay_case.topic("outage", "shop.order.placed", partitions=2)
    before = [factory.event(topic, "shop.order.placed", f"c{n % 17}", n) for n in range(100)]
    during = [factory.event(topic, "shop.order.placed", f"c{n % 17}", n) for n in range(100, 300)]
    produce_events(bootstrap, before)
    first_ends = relay_case.ends()

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = relay_case.start(relay_case.env(sandbox.base_url))
        await wait_for(lambda: relay_case.committed() == first_ends, what="first batch committed")
        await set_faults(sandbox.base_url, {"error_rates": {"503": 1.0}})
        produce_events(bootstrap, during)

        async def many_refused() -> bool:
            injected: int = (await sandbox_stats(sandbox.base_url))["injected"].get("503", 0)
            return injected > 300

        await wait_for(many_refused, what="the relay retrying through the outage")
        # Held: nothing past the undelivered events is committed, nothing dead-lettered.
        assert relay_case.committed() == first_ends
        assert sum(end_offsets(bootstrap, [dlq]).values()) == 0
        await set_faults(sandbox.base_url, {"error_rates": {}})
        ends = relay_case.ends()
        await wait_for(lambda: relay_case.committed() == ends, what="catching up after the outage")
        relay.terminate()
        assert await relay.wait_exit() == 0
        delivered = base_ids(sandbox.state.events)
    assert delivered == {e.event_id for e in before + during}
    assert sum(end_offsets(bootstrap, [dlq]).values()) == 0
    assert not relay.logged("event dead-lettered")


@pytest.mark.parametrize(
    ("where", "budget"),
    [("the client's retries", "7200"), ("the pipeline's hold", "120")],
)
async def test_backoffs_end_when_klaviyo_serves_again(
    relay_case: RelayCase, where: str, budget: str
) -> None:
    """Events whose sends failed during an outage back off for up to an hour here (full
    jitter: a draw under the test's minute has a 2 % chance each). Once Klaviyo serves another
    event, they go again at once, whether they wait in the client's retries (a budget longer
    than the wait) or in the pipeline's hold (the budget spent, the same policy holds them)."""
    bootstrap, factory = relay_case.bootstrap, relay_case.factory
    topic = relay_case.topic(f"recovery-{budget}", "shop.order.placed")
    failed = [
        factory.event(topic, "shop.order.placed", f"cust-failed-{n}", n)
        for n in range(SPELL_FAILURES)
    ]
    served = factory.event(topic, "shop.order.placed", "cust-served", SPELL_FAILURES)
    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        env = relay_case.env(
            sandbox.base_url,
            SEND_MODE="realtime",
            RETRY_MAX_ATTEMPTS="5",
            RETRY_BASE_SECONDS="3600",
            RETRY_CAP_SECONDS="3600",
            RETRY_MAX_ELAPSED_SECONDS=budget,
        )
        relay = relay_case.start(env)
        await wait_for(lambda: relay.logged("partitions assigned"), what="the relay's partitions")
        await set_faults(sandbox.base_url, {"error_rates": {"503": 1.0}})
        first_refused = 0.0
        for n, event in enumerate(failed, start=1):
            if n == len(failed):  # an outage, not a blip: its failures span the spell's length
                await asyncio.sleep(max(0.0, first_refused + SPELL_SECONDS - time.monotonic()))
            produce_events(bootstrap, [event])

            async def refused(count: int = n) -> bool:
                stats = await sandbox_stats(sandbox.base_url)
                return int(stats["injected"].get("503", 0)) >= count

            await wait_for(refused, what=f"send {n} refused")
            first_refused = first_refused or time.monotonic()
        await set_faults(sandbox.base_url, {"error_rates": {}})
        produce_events(bootstrap, [served])
        ends = relay_case.ends()
        await wait_for(
            lambda: relay_case.committed() == ends,
            60,
            what=f"all delivered ({where} cut short)",
        )
        assert base_ids(sandbox.state.events) == {e.event_id for e in [*failed, served]}
        relay.terminate()
        assert await relay.wait_exit() == 0


async def test_revoked_key_halts_the_relay_and_commits_nothing_further(
    relay_case: RelayCase,
) -> None:
    bootstrap, factory = relay_case.bootstrap, relay_case.factory
    topic = relay_case.topic("auth", "shop.account.updated")
    produce_events(
        bootstrap, [factory.event(topic, "shop.account.updated", "k", n) for n in range(20)]
    )
    first_ends = relay_case.ends()

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = relay_case.start(relay_case.env(sandbox.base_url))
        await wait_for(lambda: relay_case.committed() == first_ends, what="first batch committed")
        port = metrics_port(relay)
        assert port is not None
        assert (await readiness(port))["status"] == 200
        await set_faults(sandbox.base_url, {"fail_auth": True})
        produce_events(
            bootstrap,
            [factory.event(topic, "shop.account.updated", "k", n) for n in range(20, 40)],
        )

        async def halted() -> bool:
            return (await readiness(port))["halted"] is True

        await wait_for(halted, what="the relay to halt")
        assert (await readiness(port))["status"] == 503
        # Klaviyo would accept again, but a halted relay neither sends nor commits.
        await set_faults(sandbox.base_url, {"fail_auth": False})
        relay.terminate()
        assert await relay.wait_exit() == 0
        assert len(sandbox.state.events) == 20
    assert relay_case.committed() == first_ends
    halts = [line for line in relay.log_lines() if "halted" in str(line.get("message"))]
    assert len(halts) == 1
    assert sum(end_offsets(bootstrap, [relay_case.dlq]).values()) == 0
