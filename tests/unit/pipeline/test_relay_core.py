"""The relay's core in-process, its I/O faked (tests/fixtures/fakes.py): the watermark, revoke
(drain, timeout), lost partitions, halt, drain on stop and SIGTERM, dead letters, and batch
mode's ordering across jobs, ``expedite``, pointer-based resend and whole-job refusals."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from consumer.klaviyo.oauth import INVALID_GRANT, GrantRevoked
from consumer.klaviyo.outcomes import Accepted, Fatal, KlaviyoError, Outcome, Permanent
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.pipeline.completed import decode, encode
from consumer.pipeline.inflight import COMMIT_AT_ONCE
from consumer.pipeline.offsets import Commit
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.relay import EXIT_OK, Relay
from consumer.settings import Settings
from tests.fixtures.fakes import (
    WAIT,
    Answer,
    FakeDeadLetters,
    FakeKlaviyo,
    FakeSource,
    Gate,
    accept,
    emails,
    until,
)
from tests.fixtures.relay_harness import EventFactory

CREATED = "shop.account.created"  # one Create Event per record
EMAIL_CHANGED = "shop.account.email-changed"  # a lookup and a profile update, then the event
P0 = (CREATED, 0)
P1 = (CREATED, 1)

OFFSETS: dict[str, int] = {}  # event id → the offset its record was given


@functools.cache
def _factory() -> EventFactory:
    return EventFactory()


def record(offset: int, key: str, *, partition: int = 0, topic: str = CREATED) -> SourceRecord:
    event = _factory().event(topic, topic, key, offset)
    OFFSETS[event.event_id] = offset
    return SourceRecord(topic, partition, offset, key.encode(), event.value, None)


def offsets_in(body: object) -> list[int]:
    """The offsets of the events in a request body, in body order."""
    if isinstance(body, dict):
        uid = body.get("unique_id")
        found = [OFFSETS[uid.split(":")[0]]] if isinstance(uid, str) else []
        return found + [o for name, v in body.items() if name != "unique_id" for o in offsets_in(v)]
    if isinstance(body, list):
        return [o for item in body for o in offsets_in(item)]
    return []


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "metrics_port": 0,
        "commit_interval_seconds": 0.02,
        "drain_timeout_seconds": 10.0,
        "retry_base_seconds": 0.001,
        "retry_cap_seconds": 0.01,
    }
    return Settings(**{**values, **overrides})


@dataclass
class Core:
    relay: Relay
    source: FakeSource
    klaviyo: FakeKlaviyo
    dead_letters: FakeDeadLetters
    task: asyncio.Task[int]

    async def stopped(self) -> int:
        self.relay.request_stop()
        return await asyncio.wait_for(self.task, WAIT)

    def customers(self) -> list[str]:
        """Every customer whose event Klaviyo was sent, in sending order (bulk jobs flattened)."""
        return [email.split("@")[0] for r in self.klaviyo.sent for email in emails(r.body)]


@asynccontextmanager
async def running(
    answer: Answer = accept, *, ping: Outcome | None = None, **overrides: Any
) -> AsyncIterator[Core]:
    source, klaviyo, dead_letters = FakeSource(), FakeKlaviyo(answer, ping=ping), FakeDeadLetters()
    relay = Relay(
        settings(**overrides),
        source=source.open,
        klaviyo=klaviyo,
        dead_letters=dead_letters.open,
    )
    task = asyncio.create_task(relay.run())
    await until(lambda: source.started.is_set() or task.done(), "the relay started its source")
    assert not task.done()
    core = Core(relay, source, klaviyo, dead_letters, task)
    try:
        yield core
    finally:
        if not task.done():
            relay.request_stop()
        await asyncio.wait_for(task, WAIT)


# --- the watermark -------------------------------------------------------------------------


async def test_a_held_event_holds_its_partitions_watermark_while_later_ones_finish() -> None:
    gate = Gate()
    gate.hold("c1")
    async with running(gate) as core:
        core.source.assign(P0, P1)
        core.source.feed([record(0, "c0"), record(1, "c1"), record(2, "c2")])
        core.source.feed([record(0, "d0", partition=1)])
        await until(lambda: core.source.committed(P1) == 1, "the other partition committed")
        await until(lambda: core.source.committed(P0) == 1, "offset 0 committed")
        await until(lambda: len(core.klaviyo.sent) == 4 and core.source.outstanding == 1)
        assert core.source.committed(P0) == 1  # 2 is finished, 1 is not: nothing passes 1
        gate.release("c1")
        await until(lambda: core.source.committed(P0) == 3, "the watermark passed the held one")
        assert core.source.outstanding == 0


async def test_a_keys_events_are_sent_one_after_another_in_offset_order() -> None:
    gate = Gate()
    gate.hold("c")
    async with running(gate) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "c"), record(1, "c"), record(2, "other")])
        await until(lambda: "other" in core.customers(), "another key overtakes")
        assert core.customers().count("c") == 1  # the key's second event waits for its first
        gate.release("c")
        await until(lambda: core.source.committed(P0) == 3)
        assert core.customers() == ["c", "other", "c"]


# --- revoke and loss -----------------------------------------------------------------------


async def test_revoke_drains_started_events_then_commits_and_leaves_waiting_ones() -> None:
    gate = Gate()
    gate.hold("c")
    # A drain timeout far beyond the test's patience: the revoke must end because it drained.
    async with running(gate, drain_timeout_seconds=600.0) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "c"), record(1, "c")])
        await until(lambda: gate.waiting == {"c"}, "the first event is being sent")
        revoke = asyncio.create_task(core.source.revoke(P0))
        await asyncio.sleep(0.05)
        assert not revoke.done(), "the revoke must wait for the started event"
        gate.release("c")
        await asyncio.wait_for(revoke, WAIT)
        assert core.source.committed(P0) == 1
        # The second event never started: the next owner reads it from offset 1.
        await until(lambda: core.source.outstanding == 0)
        assert core.customers() == ["c"]


async def test_revoke_past_the_drain_timeout_commits_only_what_finished() -> None:
    gate = Gate()
    gate.hold("stuck")
    async with running(gate, drain_timeout_seconds=0.2) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "a"), record(1, "stuck"), record(2, "b")])
        await until(lambda: core.customers().count("b") == 1 and gate.waiting == {"stuck"})
        await asyncio.wait_for(core.source.revoke(P0), WAIT)
        assert core.source.committed(P0) == 1
        assert core.source.outstanding == 0  # the detached partition's places are released
        # The partition comes back: the late answer of the old assignment moves nothing.
        core.source.assign(P0)
        gate.release("stuck")
        core.source.feed([record(1, "stuck"), record(2, "b")])
        await until(lambda: core.source.committed(P0) == 3, "the new assignment commits")
        positions = core.source.positions(P0)
        assert set(positions) == {1, 3} and positions[-1] == 3  # never 2 or past the stuck one
        # "b" was finished by the first assignment, past its watermark: not sent again.
        assert core.customers().count("b") == 1


async def test_records_an_earlier_owner_mapped_as_finished_are_skipped_not_sent() -> None:
    async with running() as core:
        # The group's last commit: position 0, offsets 1 and 3 finished, 0-4 taken.
        core.source.commits.append({P0: Commit(0, encode(5, 0b01010))})
        core.source.assign(P0)
        core.source.feed([record(i, key) for i, key in enumerate("abcdef")])
        await until(lambda: core.source.committed(P0) == 6)
        assert sorted(core.customers()) == ["a", "c", "e", "f"]
        assert core.source.outstanding == 0


@pytest.mark.parametrize("events", [1, COMMIT_AT_ONCE])
async def test_a_commit_comes_before_its_interval_once_events_finished(events: int) -> None:
    # What a crash resends because it finished after the last commit stays bounded by the
    # commits' spacing, not by the interval times the rate.
    async with running(commit_interval_seconds=3600.0) as core:
        core.source.assign(P0)
        core.source.feed([record(i, f"k{i}") for i in range(events)])
        await until(lambda: core.source.committed(P0) == events)


async def test_malformed_commit_metadata_is_ignored_and_nothing_skipped() -> None:
    async with running() as core:
        core.source.commits.append({P0: Commit(0, "fin9:whatever")})
        core.source.assign(P0)
        core.source.feed([record(i, key) for i, key in enumerate("abc")])
        await until(lambda: core.source.committed(P0) == 3)
        assert sorted(core.customers()) == ["a", "b", "c"]


async def test_a_lost_partition_commits_nothing_and_its_late_verdicts_are_ignored() -> None:
    gate = Gate()
    gate.hold("c")
    async with running(gate) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "c"), record(1, "d")])
        await until(lambda: gate.waiting == {"c"} and "d" in core.customers())
        core.source.lose(P0)
        before = len(core.source.commits)
        assert core.source.outstanding == 0
        gate.release("c")
        core.source.assign(P0)
        core.source.feed([record(0, "c")])
        await until(lambda: core.source.committed(P0) == 1)
        # Nothing from the lost assignment once lost (its late verdict on "c" moved nothing).
        assert [c[P0].position for c in core.source.commits[before:]] == [1]


# --- halt ----------------------------------------------------------------------------------


async def test_a_refused_key_halts_sending_and_committing() -> None:
    async def refuse_b(request: KlaviyoRequest) -> Outcome:
        return Fatal(401) if "b@shopmail.io" in emails(request.body) else Accepted(202)

    async with running(refuse_b) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "a")])
        await until(lambda: core.source.committed(P0) == 1)
        core.source.feed([record(1, "b"), record(2, "c")])
        await until(lambda: core.relay.state.halted, "halted")
        assert core.source.held and not core.source.discarding
        core.source.feed([record(3, "d")])
        await asyncio.sleep(0.1)  # commit intervals pass: nothing more is sent or committed
        assert "d" not in core.customers()
        assert set(core.source.positions(P0)) == {1}
        assert await core.source.revoke(P0) == {}


async def test_a_key_refused_at_the_first_probe_holds_the_source_before_it_starts() -> None:
    async with running(ping=Fatal(403)) as core:
        assert core.relay.state.halted and core.source.held
        assert core.klaviyo.sent == []


async def test_a_revoked_oauth_grant_halts_with_a_reason_that_says_so() -> None:
    revoked = GrantRevoked(INVALID_GRANT, 400).outcome()
    async with running(ping=revoked) as core:
        assert core.relay.state.halted and core.source.held
        (reason,) = core.relay.state.not_ready_because()[:1]
        assert "uninstalled" in reason and "invalid_grant" in reason


# --- stopping ------------------------------------------------------------------------------


async def test_stop_drains_in_flight_events_commits_and_closes_everything() -> None:
    gate = Gate()
    gate.hold("c")
    async with running(gate, commit_interval_seconds=60.0) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "c"), record(1, "d")])
        await until(lambda: gate.waiting == {"c"})
        core.relay.request_stop()
        await until(lambda: core.relay.state.stopping)
        assert core.source.discarding  # records fetched from now on are dropped
        gate.release("c")
        assert await asyncio.wait_for(core.task, WAIT) == EXIT_OK
        assert core.source.positions(P0) == [2]  # the final commit, before leaving the group
        assert core.source.closed and core.dead_letters.closed and not core.klaviyo.open


async def test_sigterm_stops_the_relay_cleanly() -> None:
    async with running() as core:
        core.source.assign(P0)
        core.source.feed([record(0, "c")])
        await until(lambda: core.source.committed(P0) == 1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(core.task, WAIT) == EXIT_OK
        assert core.source.closed


async def test_stop_past_the_drain_timeout_leaves_unfinished_events_uncommitted() -> None:
    gate = Gate()
    gate.hold("stuck")
    async with running(gate, drain_timeout_seconds=0.2, commit_interval_seconds=60.0) as core:
        core.source.assign(P0)
        core.source.feed([record(0, "a"), record(1, "stuck"), record(2, "b")])
        await until(lambda: gate.waiting == {"stuck"} and "b" in core.customers())
        assert await core.stopped() == EXIT_OK
        # The final commit: the watermark stays at the stuck event, "b" past it is mapped.
        [final] = core.source.commits
        assert final[P0].position == 1
        completed = decode(1, final[P0].metadata)
        assert completed is not None
        assert (completed.finished(1), completed.finished(2)) == (False, True)


# --- dead letters --------------------------------------------------------------------------


async def test_a_dead_letter_finishes_its_event_only_once_acknowledged() -> None:
    async def refuse_b(request: KlaviyoRequest) -> Outcome:
        if "b@shopmail.io" in emails(request.body):
            return Permanent(400, (KlaviyoError(400, code="invalid"),))
        return Accepted(202)

    async with running(refuse_b) as core:
        core.dead_letters.ack.clear()
        core.source.assign(P0)
        undecodable = SourceRecord(CREATED, 0, 0, b"a", b"not avro", None)
        core.source.feed([undecodable, record(1, "b"), record(2, "c")])
        await until(lambda: "c" in core.customers())
        await asyncio.sleep(0.05)
        # Both dead letters still unacknowledged: nothing passes offset 0 ("c" may be mapped).
        assert core.source.committed(P0) in (None, 0)
        core.dead_letters.ack.set()
        await until(lambda: core.source.committed(P0) == 3)
        stages = [(r.offset, f.stage) for r, f in core.dead_letters.letters]
        assert sorted(stages) == [(0, "decode"), (1, "send")]


# --- batch mode ----------------------------------------------------------------------------


def bulk_customers(request: KlaviyoRequest) -> list[str]:
    return [email.split("@")[0] for email in emails(request.body)]


async def test_batch_a_keys_events_in_different_jobs_keep_their_order() -> None:
    answered: list[int] = []  # offsets, in the order Klaviyo accepted them

    calls = 0

    async def slow_bulk(request: KlaviyoRequest) -> Outcome:
        nonlocal calls
        calls += 1
        # Earlier jobs take longer: a later job sent alongside would be accepted first.
        await asyncio.sleep(0.05 / calls)
        answered.extend(offsets_in(request.body))
        return Accepted(202)

    async with running(
        slow_bulk, send_mode="batch", batch_max_events=2, batch_linger_seconds=0.01
    ) as core:
        core.source.assign(P0)
        keys = ["a", "b", "a", "c", "a", "b", "a"]
        core.source.feed([record(i, key) for i, key in enumerate(keys)])
        await until(lambda: core.source.committed(P0) == len(keys))
        assert all(r.endpoint is Endpoint.BULK_CREATE_EVENTS for r in core.klaviyo.sent)
        assert len(core.klaviyo.sent) >= 4  # at most two events per job
        a_events = [offset for offset in answered if keys[offset] == "a"]
        assert a_events == [0, 2, 4, 6]


async def test_batch_a_profile_step_expedites_the_open_job_it_waits_for() -> None:
    # A linger of an hour: the email change's profile steps wait for the key's Create Event,
    # which sits in the open job; only expedite sends that job now.
    async with running(send_mode="batch", batch_linger_seconds=3600.0) as core:
        core.source.assign(P0, (EMAIL_CHANGED, 0))
        core.source.feed([record(0, "c"), record(0, "c", topic=EMAIL_CHANGED)])
        await until(lambda: len(core.klaviyo.sent) >= 3, "the profile steps were sent")
        endpoints = [r.endpoint for r in core.klaviyo.sent[:3]]
        # The lookup finds no profile: the update falls back to a profile import.
        assert endpoints == [
            Endpoint.BULK_CREATE_EVENTS,
            Endpoint.GET_PROFILES,
            Endpoint.PROFILE_IMPORT,
        ]


def refuse_customers(*bad: str, pointers: bool) -> Answer:
    """A bulk endpoint refusing jobs that hold ``bad`` customers' events (one per entry),
    naming them by pointer or not at all."""

    async def answer(request: KlaviyoRequest) -> Outcome:
        customers = bulk_customers(request)
        hits = [n for n, customer in enumerate(customers) if customer in bad]
        if not hits:
            return Accepted(202)
        base = "/data/attributes/events-bulk-create/data"
        errors = tuple(
            KlaviyoError(400, code="invalid", pointer=f"{base}/{n}" if pointers else None)
            for n in hits
        )
        return Permanent(400, errors)

    return answer


async def test_batch_items_named_by_pointer_are_dead_lettered_and_the_rest_resent() -> None:
    answer = refuse_customers("b", "d", pointers=True)
    async with running(answer, send_mode="batch", batch_linger_seconds=0.05) as core:
        core.source.assign(P0)
        core.source.feed([record(i, key) for i, key in enumerate("abcde")])
        await until(lambda: core.source.committed(P0) == 5)
        assert [offsets_in(r.body) for r in core.klaviyo.sent] == [[0, 1, 2, 3, 4], [0, 2, 4]]
        assert sorted(r.offset for r, _ in core.dead_letters.letters) == [1, 3]


async def test_batch_a_refused_job_naming_no_item_is_narrowed_to_the_bad_events() -> None:
    answer = refuse_customers("a", "b", "c", "d", pointers=False)
    async with running(answer, send_mode="batch", batch_linger_seconds=0.05) as core:
        core.source.assign(P0)
        core.source.feed([record(i, key) for i, key in enumerate("abcd")])
        await until(lambda: core.source.committed(P0) == 4)
        # Every event refused: each one ends up alone, refused on its own, dead-lettered.
        assert sorted(r.offset for r, _ in core.dead_letters.letters) == [0, 1, 2, 3]
        assert {len(offsets_in(r.body)) for r in core.klaviyo.sent} == {4, 2, 1}
