"""Several accounts in the relay's core, in-process (tests/fixtures/fakes.py): each event goes
to its account's client; an account whose key is refused halts alone, its events (in flight and
new) are dead-lettered ``account_halted`` and the partitions they share with other accounts
keep committing; an event without an account is dead-lettered ``unknown_account``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from consumer.errors import Reason
from consumer.klaviyo.oauth import INVALID_GRANT, GrantRevoked
from consumer.klaviyo.outcomes import Fatal, KlaviyoError, Outcome
from consumer.klaviyo.requests import KlaviyoRequest
from consumer.observability.metrics import REGISTRY
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.relay import Relay
from tests.fixtures.fakes import (
    WAIT,
    FakeDeadLetters,
    FakeKlaviyo,
    FakeSource,
    Gate,
    emails,
    until,
)
from tests.unit.pipeline.test_relay_core import CREATED, P0, record, settings

REFUSED = Fatal(401, (KlaviyoError(401, "authentication_failed"),))
ACCOUNTS = {"KLAVIYO_ACCOUNT_A_API_KEY": "pk_a", "KLAVIYO_ACCOUNT_B_API_KEY": "pk_b"}


def to(account: str, rec: SourceRecord) -> SourceRecord:
    """``rec`` with the account header set."""
    return SourceRecord(
        rec.topic,
        rec.partition,
        rec.offset,
        rec.key,
        rec.value,
        rec.timestamp_ms,
        (("klaviyo-account", account.encode()),),
    )


class Two:
    def __init__(
        self,
        relay: Relay,
        source: FakeSource,
        clients: dict[str, FakeKlaviyo],
        dead_letters: FakeDeadLetters,
    ) -> None:
        self.relay, self.source, self.clients = relay, source, clients
        self.dead_letters = dead_letters

    def sent_to(self, account: str) -> list[str]:
        client = self.clients[account]
        return [e.split("@")[0] for r in client.sent for e in emails(r.body)]

    def parked(self, reason: str) -> list[int]:
        return sorted(r.offset for r, f in self.dead_letters.letters if f.reason == reason)


@asynccontextmanager
async def two_accounts(
    monkeypatch: pytest.MonkeyPatch, clients: dict[str, FakeKlaviyo], **overrides: Any
) -> AsyncIterator[Two]:
    for name, value in ACCOUNTS.items():
        monkeypatch.setenv(name, value)
    values: dict[str, Any] = {"klaviyo_accounts": ["a", "b"], **overrides}
    source, dead_letters = FakeSource(), FakeDeadLetters()
    relay = Relay(
        settings(**values),
        source=source.open,
        dead_letters=dead_letters.open,
        open_klaviyo=lambda _settings, name: clients[name],
    )
    two = Two(relay, source, clients, dead_letters)
    task = asyncio.create_task(relay.run())
    await until(lambda: source.started.is_set() or task.done(), "the relay started its source")
    assert not task.done()
    try:
        yield two
    finally:
        relay.request_stop()
        await asyncio.wait_for(task, WAIT)


@pytest.mark.parametrize("mode", ["realtime", "batch", "auto"])
async def test_each_event_goes_to_its_account(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    clients = {"a": FakeKlaviyo(), "b": FakeKlaviyo()}
    async with two_accounts(
        monkeypatch, clients, send_mode=mode, klaviyo_account_topics={CREATED: "b"}
    ) as two:
        two.source.assign(P0)
        two.source.feed([to("a", record(0, "x0")), record(1, "x1"), to("b", record(2, "x2"))])
        two.source.feed([to("zzz", record(3, "x3"))])
        await until(lambda: two.source.committed(P0) == 4, "all four finished")
        assert two.sent_to("a") == ["x0"]
        assert sorted(two.sent_to("b")) == ["x1", "x2"]  # the topic map, then the header
        assert two.parked(Reason.UNKNOWN_ACCOUNT) == [3]
    delivered = REGISTRY.get_sample_value(
        "klaviyo_relay_events_delivered_total",
        {"topic": CREATED, "metric": "Created Account", "account": "a"},
    )
    assert delivered is not None and delivered >= 1


@pytest.mark.parametrize("mode", ["realtime", "batch"])
async def test_a_refused_account_halts_alone_and_parks_its_events(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    async def refuse(_request: KlaviyoRequest) -> Outcome:
        return REFUSED

    gate_then_refuse = Gate(refuse)
    gate_then_refuse.hold("a1")
    clients = {"a": FakeKlaviyo(gate_then_refuse), "b": FakeKlaviyo()}
    async with two_accounts(monkeypatch, clients, send_mode=mode) as two:
        two.source.assign(P0)
        two.source.feed([to("a", record(0, "a1")), to("b", record(1, "b1"))])
        await until(lambda: "a1" in gate_then_refuse.waiting, "a's event is in flight")
        await until(lambda: two.sent_to("b") == ["b1"], "b goes on meanwhile")
        gate_then_refuse.release("a1")  # a's key is refused: a halts
        await until(lambda: two.parked(Reason.ACCOUNT_HALTED) == [0], "a's event parked")
        two.source.feed([to("a", record(2, "a2")), to("b", record(3, "b2"))])
        await until(lambda: two.source.committed(P0) == 4, "the shared partition commits")
        assert two.parked(Reason.ACCOUNT_HALTED) == [0, 2]  # the new one is not even sent
        assert two.sent_to("a") == ["a1"] and two.sent_to("b") == ["b1", "b2"]
        assert not two.relay.state.halted and not two.source.held  # the relay goes on
        halted = {
            name: REGISTRY.get_sample_value("klaviyo_relay_halted", {"account": name})
            for name in ("a", "b")
        }
        assert halted == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    "refusal", [REFUSED, GrantRevoked(INVALID_GRANT, 400).outcome()], ids=["key", "oauth"]
)
async def test_an_account_refused_at_the_first_probe_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, refusal: Fatal
) -> None:
    clients = {"a": FakeKlaviyo(ping=refusal), "b": FakeKlaviyo()}
    async with two_accounts(monkeypatch, clients) as two:
        two.source.assign(P0)
        two.source.feed([to("a", record(0, "a1")), to("b", record(1, "b1"))])
        await until(lambda: two.source.committed(P0) == 2)
        assert two.parked(Reason.ACCOUNT_HALTED) == [0]
        assert clients["a"].sent == [] and two.sent_to("b") == ["b1"]


async def test_each_account_takes_the_groups_share_of_its_own_quota(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLAVIYO_ACCOUNT_B_RATE_LIMIT_SHARE", "0.25")
    clients = {"a": FakeKlaviyo(), "b": FakeKlaviyo()}
    async with two_accounts(monkeypatch, clients) as two:
        two.source.listener.on_share(0.5)  # what KafkaSource reports at each assignment
        assert clients["a"].shares == [0.5]
        assert clients["b"].shares == []  # set explicitly: it wins over the group's
        share = {
            name: REGISTRY.get_sample_value("klaviyo_relay_quota_share", {"account": name})
            for name in ("a", "b")
        }
        assert share == {"a": 0.5, "b": 0.25}
