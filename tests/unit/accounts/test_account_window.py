"""Each account's own in-flight window (consumer.accounts.window): the arithmetic, and in the
relay's core an account whose events wait pauses only the partitions its events came from,
resumed once it has room again, while another account's partitions flow."""

from __future__ import annotations

import pytest

from consumer.accounts.window import (
    MIN_ACCOUNT_WINDOW,
    AccountWindows,
    account_window,
    fetch_batch,
)
from consumer.observability.metrics import REGISTRY
from consumer.settings import Settings
from tests.fixtures.fakes import FakeKlaviyo, Gate, until
from tests.unit.accounts.test_accounts_core import to, two_accounts
from tests.unit.pipeline.test_relay_core import P0, P1, record

A0, A1, B0 = ("a.topic", 0), ("a.topic", 1), ("b.topic", 0)


@pytest.mark.parametrize(
    ("max_in_flight", "explicit", "accounts", "window"),
    [
        (2000, None, 2, 666),  # the shared window split in accounts + 1
        (2000, None, 1, 2000),  # one named account: nothing to isolate, the whole window
        (2000, None, 40, MIN_ACCOUNT_WINDOW),  # never below the floor
        (50, None, 2, 50),  # nor above the shared window
        (2000, 300, 2, 300),  # ACCOUNT_MAX_IN_FLIGHT wins
        (200, 300, 2, 200),  # clamped to MAX_IN_FLIGHT
    ],
)
def test_the_window_of_an_account(
    max_in_flight: int, explicit: int | None, accounts: int, window: int
) -> None:
    settings = Settings(max_in_flight=max_in_flight, account_max_in_flight=explicit)
    assert account_window(settings, accounts) == window


def test_a_fetch_takes_at_most_one_accounts_window() -> None:
    assert fetch_batch(Settings(max_in_flight=2000), 1000) == 1000  # one account: as before
    several = Settings(max_in_flight=2000, klaviyo_accounts=["a", "b"])
    assert fetch_batch(several, 1000) == 666


def test_a_full_account_holds_its_partitions_until_below_the_resume_mark() -> None:
    windows = AccountWindows(window=3, resume_mark=2)
    assert not windows.add("a", A0)
    assert not windows.add("b", B0)  # b's events do not count against a's window
    assert not windows.add("a", A0)
    assert windows.add("a", A1)  # the third: a is full
    assert windows.paused() == {A0, A1}
    assert windows.add("b", B0) is False and windows.paused() == {A0, A1}
    assert not windows.remove("a", A1)  # 2 left: not below the resume mark yet
    assert windows.paused() == {A0, A1}  # A1 stays held (an idle partition of a's topic)
    assert windows.remove("a", A0)  # 1 left: room again
    assert windows.paused() == frozenset()
    assert windows.in_flight("a") == 1 and windows.in_flight("b") == 2


def test_a_full_account_holds_a_partition_that_brings_it_one_more() -> None:
    windows = AccountWindows(window=1, resume_mark=1)
    assert windows.add("a", A0)
    assert windows.add("a", B0)  # a shared partition brought a's event: it pauses too
    assert windows.paused() == {A0, B0}


def test_partitions_that_go_no_longer_count() -> None:
    windows = AccountWindows(window=2, resume_mark=1)
    windows.add("a", A0)
    windows.add("a", A1)
    assert windows.paused() == {A0, A1}
    assert windows.forget({A0, A1})
    assert windows.paused() == frozenset() and windows.in_flight("a") == 0


async def test_a_waiting_account_pauses_only_its_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()
    gate.hold("a1")
    gate.hold("a2")
    clients = {"a": FakeKlaviyo(gate), "b": FakeKlaviyo()}
    async with two_accounts(monkeypatch, clients, account_max_in_flight=2, resume_below=0.5) as two:
        two.source.assign(P0, P1)
        two.source.feed([to("a", record(0, "a1")), to("a", record(1, "a2"))])
        await until(lambda: two.source.crowded == {P0}, "a is at its window: P0 paused")
        assert _in_flight("a") == 2
        two.source.feed([to("b", record(n, f"b{n}", partition=1)) for n in range(5)])
        await until(lambda: len(two.sent_to("b")) == 5, "b's partition flows meanwhile")
        assert two.source.crowded == {P0}
        gate.release("a1")
        gate.release("a2")
        await until(lambda: two.source.crowded == frozenset(), "a has room: P0 resumed")
        await until(lambda: two.source.committed(P0) == 2, "a's events delivered")
        assert sorted(two.sent_to("a")) == ["a1", "a2"]
        assert _in_flight("a") == 0


def _in_flight(account: str) -> float | None:
    return REGISTRY.get_sample_value("klaviyo_relay_account_events_in_flight", {"account": account})
