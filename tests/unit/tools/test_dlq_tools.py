"""The pure parts of the dead-letter tools: reading headers, selecting, planning replays,
recording progress, masking. Dead letters are built with the pipeline's own writer
(``build_dead_letter``) so the reader is tested against what the relay really writes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from consumer.accounts.config import accounts_from
from consumer.errors import ExpiredEvent, LimitViolation
from consumer.headers import (
    H_BACKFILL,
    H_REPLAY_OF,
)
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.pipeline.deadletter import build_dead_letter
from consumer.pipeline.failure import Failure, account_halted
from consumer.pipeline.records import SourceRecord
from consumer.settings import Settings
from consumer.tools.deadletters import (
    NotReplayable,
    ParkedRecord,
    Selection,
    format_duration,
    newest,
    parse_since,
    plan_replay,
)
from consumer.tools.masking import mask_email, mask_event, mask_phone, mask_url
from consumer.tools.progress import PartitionProgress, ProgressTooScattered
from consumer.tools.render import Original, inspect_json, inspect_line
from consumer.tools.replay import plan_replays, progress_after

NOW = datetime(2026, 7, 20, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def letter(
    failure: Failure,
    *,
    topic: str = "shop.order.placed",
    partition: int = 2,
    offset: int = 41,
    created: datetime = NOW - 2 * HOUR,
    dlq_offset: int = 0,
    headers: tuple[tuple[str, bytes], ...] = (("traceparent", b"00-abc-01"),),
    parked: datetime = NOW - HOUR / 2,
    max_bytes: int | None = None,
    value: bytes = b"\xc3\x01payload",
) -> ParkedRecord:
    """What the dead-letter topic holds for a record that failed with ``failure``, parked (the
    dead letter's own timestamp, given by the producer) at ``parked``."""
    source = SourceRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        key=b"cust-1001",
        value=value,
        timestamp_ms=int(created.timestamp() * 1000),
        headers=headers,
    )
    written = build_dead_letter(source, failure, max_bytes)
    return ParkedRecord(
        partition=0,
        offset=dlq_offset,
        key=written.key,
        value=written.value,
        timestamp=parked,
        headers=written.headers,
    )


def limit_failure(at: datetime = NOW - HOUR) -> Failure:
    exc = LimitViolation("array of more than 4000 items", field="/data/attributes/properties/Items")
    return Failure.from_exception("handle", exc.reason, exc, at)


def rejected_failure(at: datetime = NOW - HOUR) -> Failure:
    outcome = Permanent(400, (KlaviyoError(400, "invalid", "Invalid input.", pointer="/data"),))
    return Failure.from_klaviyo(outcome, "create_event", at)


# --- reading what the writer wrote ------------------------------------------------------------


def test_reads_the_writers_headers() -> None:
    dl = letter(rejected_failure(), partition=3, offset=77)
    assert dl.source == "shop.order.placed/3/77"
    assert (dl.stage, dl.reason) == ("send", "klaviyo_rejected")
    assert (dl.klaviyo_status, dl.klaviyo_code) == (400, "invalid")
    assert dl.first_failure == NOW - HOUR
    assert dl.age(NOW) == 2 * HOUR  # from the source record's CreateTime, not from parking
    assert dl.original_timestamp == NOW - 2 * HOUR and dl.timestamp == NOW - HOUR / 2
    assert dl.incomplete is None and dl.original_reason is None


def test_letters_of_older_relays_kept_the_create_time_as_their_timestamp() -> None:
    dl = letter(rejected_failure())
    old = ParkedRecord(
        dl.partition,
        dl.offset,
        dl.key,
        dl.value,
        NOW - 3 * HOUR,
        tuple(h for h in dl.headers if h[0] != "klaviyo-relay.original-timestamp"),
    )
    assert old.original_timestamp == NOW - 3 * HOUR and old.age(NOW) == 3 * HOUR


def test_too_large_marker_is_shown_and_never_replayed() -> None:
    big = bytes(2_000)
    dl = letter(limit_failure(), value=big, max_bytes=1_500)
    assert dl.reason == "too_large" and dl.original_reason == "limit_exceeded"
    assert dl.original_size == 2_000 and dl.value_truncated == "prefix"
    assert dl.value is not None and 0 < len(dl.value) < 2_000
    assert dl.incomplete == f"value truncated ({len(dl.value)} of 2000 bytes kept)"
    with pytest.raises(NotReplayable, match="too_large marker, value truncated"):
        plan_replay(dl, NOW, HOUR)
    plan = plan_replays(
        [dl], {}, Selection(), now=NOW, backfill_after=HOUR, partitions={"shop.order.placed": 3}
    )
    assert plan.replays == [] and len(plan.unreplayable) == 1
    assert "must be republished from its source topic" in plan.unreplayable[0][1]
    line = inspect_line(dl, Original(undecodable="value prefix"), NOW, replayed=False)
    assert "reason=too_large (was limit_exceeded)" in line
    assert f"sha256 {dl.value_sha256}; not replayable" in line
    assert "created=2026-07-20T10:00:00Z" in line
    shown = inspect_json(dl, Original(undecodable="value prefix"), NOW, replayed=False)
    assert shown["value_truncated"] == "prefix" and shown["original_size"] == 2_000
    assert shown["original_timestamp"] == "2026-07-20T10:00:00Z"
    assert shown["parked_at"] == "2026-07-20T11:30:00Z"


def test_handler_rejection_has_no_klaviyo_status() -> None:
    exc = ExpiredEvent("password reset link has expired")
    dl = letter(Failure.from_exception("handle", exc.reason, exc, NOW))
    assert (dl.stage, dl.reason, dl.klaviyo_status) == ("handle", "expired", None)


def test_original_headers_drop_error_and_replay_headers() -> None:
    dl = letter(limit_failure(), headers=(("traceparent", b"t"), (H_REPLAY_OF, b"x/0/1")))
    assert dl.original_headers() == (("traceparent", b"t"),)


# --- selection -------------------------------------------------------------------------------


def test_selection_by_reason_topic_and_since() -> None:
    old = letter(limit_failure(NOW - 5 * HOUR))
    new = letter(rejected_failure(NOW - HOUR), topic="shop.account.created")
    assert Selection().matches(old) and Selection().matches(new)
    by_reason = Selection(reasons=frozenset({"limit_exceeded"}))
    assert [by_reason.matches(d) for d in (old, new)] == [True, False]
    by_topic = Selection(topics=frozenset({"shop.account.created"}))
    assert [by_topic.matches(d) for d in (old, new)] == [False, True]
    assert [Selection(since=NOW - 2 * HOUR).matches(d) for d in (old, new)] == [False, True]


def test_selection_by_account_routes_the_letter_as_the_relay_did() -> None:
    routing = accounts_from(
        Settings(
            klaviyo_accounts=["a", "b"],
            klaviyo_api_key=SecretStr("pk_top"),
            klaviyo_account_topics={"shop.account.created": "b"},
        ),
        {"KLAVIYO_ACCOUNT_A_API_KEY": "k", "KLAVIYO_ACCOUNT_B_API_KEY": "k"},
    )
    halted = account_halted(NOW)
    by_header = letter(halted, headers=(("klaviyo-account", b"a"),), topic="shop.account.created")
    by_topic = letter(halted, topic="shop.account.created")
    by_default = letter(halted)
    letters = (by_header, by_topic, by_default)
    for name, wanted in (("a", [True, False, False]), ("b", [False, True, False])):
        only = Selection(accounts=frozenset({name}), routing=routing)
        assert [only.matches(d) for d in letters] == wanted, name
    only_default = Selection(accounts=frozenset({"default"}), routing=routing)
    assert [only_default.matches(d) for d in letters] == [False, False, True]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", NOW - timedelta(minutes=90)),
        ("1d12h", NOW - timedelta(hours=36)),
        ("45s", NOW - timedelta(seconds=45)),
        ("2026-07-19T08:30:00Z", datetime(2026, 7, 19, 8, 30, tzinfo=UTC)),
        ("2026-07-19T10:30:00+02:00", datetime(2026, 7, 19, 8, 30, tzinfo=UTC)),
        ("2026-07-19", datetime(2026, 7, 19, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "5 parsecs", "", "m5"])
def test_parse_since_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="neither a time"):
        parse_since(text, NOW)


def test_format_duration_keeps_two_units() -> None:
    assert format_duration(timedelta(days=3, hours=4, minutes=5)) == "3d4h"
    assert format_duration(timedelta(minutes=2, seconds=5)) == "2m5s"
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(None) == "?"


def test_newest_orders_by_failure_time() -> None:
    letters = [letter(limit_failure(NOW - n * HOUR), dlq_offset=n) for n in (1, 3, 2)]
    assert [dl.offset for dl in newest(letters, 2)] == [2, 1]
    assert [dl.offset for dl in newest(letters, None)] == [3, 2, 1]


# --- replay planning -------------------------------------------------------------------------


def test_replay_restores_source_and_marks_it() -> None:
    dl = letter(limit_failure(), partition=1, offset=9, created=NOW - 10 * HOUR)
    replay = plan_replay(dl, NOW, backfill_after=HOUR)
    assert (replay.topic, replay.partition, replay.backfill) == ("shop.order.placed", 1, True)
    assert replay.headers == (
        ("traceparent", b"00-abc-01"),
        (H_REPLAY_OF, b"shop.order.placed/1/9"),
        (H_BACKFILL, b"true"),
    )


def test_recent_events_are_replayed_without_backfill() -> None:
    replay = plan_replay(letter(limit_failure(), created=NOW - HOUR / 2), NOW, HOUR)
    assert not replay.backfill
    assert H_BACKFILL not in dict(replay.headers)


def test_record_without_source_is_not_replayable() -> None:
    foreign = ParkedRecord(0, 5, b"k", b"v", NOW, (("something", b"else"),))
    with pytest.raises(NotReplayable):
        plan_replay(foreign, NOW, HOUR)


def test_plan_skips_replayed_and_unselected_and_reports_missing_topics() -> None:
    letters = [
        letter(limit_failure(), dlq_offset=0),
        letter(rejected_failure(), dlq_offset=1),
        letter(rejected_failure(), dlq_offset=2),
        letter(rejected_failure(), dlq_offset=3, topic="gone.topic"),
        letter(rejected_failure(), dlq_offset=4, partition=7),
    ]
    plan = plan_replays(
        letters,
        {0: PartitionProgress(0, frozenset({2}))},
        Selection(reasons=frozenset({"klaviyo_rejected"})),
        now=NOW,
        backfill_after=HOUR,
        partitions={"shop.order.placed": 3},
    )
    assert [r.letter.offset for r in plan.replays] == [1, 4]
    assert plan.replays[1].partition is None  # partition 7 no longer exists: sent by key
    assert (plan.already_replayed, plan.not_selected) == (1, 1)
    assert [(dl.offset, why) for dl, why in plan.unreplayable] == [
        (3, "source topic gone.topic does not exist")
    ]


def test_progress_after_advances_over_contiguous_replays() -> None:
    letters = [letter(limit_failure(), dlq_offset=n) for n in range(5)]
    plan = plan_replays(
        letters, {}, Selection(), now=NOW, backfill_after=HOUR, partitions={"shop.order.placed": 3}
    )
    sent = [r for r in plan.replays if r.letter.offset != 3]  # offset 3 not acknowledged
    progress = progress_after({}, sent, {0: 0})
    assert progress == {0: PartitionProgress(3, frozenset({4}))}


# --- progress stored in the commit -----------------------------------------------------------


def test_progress_round_trips_through_commit_metadata() -> None:
    progress = PartitionProgress(100).advance([100, 101, 105, 107, 108, 109])
    assert progress == PartitionProgress(102, frozenset({105, 107, 108, 109}))
    assert progress.metadata() == "v1:3,5-7"
    assert PartitionProgress.from_commit(102, "v1:3,5-7", low=0) == progress


def test_never_committed_starts_at_the_low_watermark() -> None:
    assert PartitionProgress.from_commit(None, None, low=12) == PartitionProgress(12)
    assert PartitionProgress.from_commit(-1001, "", low=3) == PartitionProgress(3)


def test_deleted_records_count_as_done() -> None:
    # committed at 5 with 10 replayed; 5-9 deleted by retention since
    assert PartitionProgress.from_commit(5, "v1:5", low=10) == PartitionProgress(11)


@given(
    start=st.integers(min_value=0, max_value=10**12),
    offsets=st.sets(st.integers(min_value=0, max_value=3000), max_size=300),
)
def test_any_replayed_set_survives_the_commit(start: int, offsets: set[int]) -> None:
    progress = PartitionProgress(start).advance(start + o for o in offsets)
    restored = PartitionProgress.from_commit(progress.position, progress.metadata(), low=0)
    assert restored == progress
    assert all(restored.replayed(start + o) for o in offsets)
    assert not any(restored.replayed(start + o) for o in set(range(3001)) - offsets)


def test_too_scattered_progress_is_refused() -> None:
    progress = PartitionProgress(0).advance(range(1, 10_000, 2))
    with pytest.raises(ProgressTooScattered):
        progress.metadata()


# --- masking ---------------------------------------------------------------------------------


def test_masks_keep_a_hint_only() -> None:
    assert mask_email("john.smith@shopmail.io") == "j***@s***.io"
    assert mask_phone("(617) 555-0188") == "(***) ***-**88"
    assert mask_phone("+15551234567") == "+*********67"
    assert mask_phone("12") == "**"
    assert mask_url("https://www.website.com/reset/1234567890987654321") == (
        "https://www.website.com/***"
    )
    assert mask_url("https://www.website.com") == "https://www.website.com"


EMAIL_OR_DIGITS = re.compile(r"[\w.]+@[\w.]+\.\w+|\d{5,}|reset/|Smith|Boston|Abc St")


def test_masked_event_leaks_no_personal_data() -> None:
    customer = {
        "customer_id": "cust-1001",
        "email": "john.smith@shopmail.io",
        "phone_number": "+15551234567",
        "first_name": "John",
        "last_name": "Smith",
        "address": {"address1": "123 Abc St", "city": "Boston", "zip": "02110"},
    }
    event: dict[str, Any] = {
        "event_id": "9f1c6a58-2d1e-4c36-8f60-1a2b3c4d5e04",
        "customer": customer,
        "reset_url": "https://www.website.com/reset/1234567890987654321",
        "old_email": "john.smith@shopmail.io",
        "changes": [
            {"field": "email", "old_value": "john@smith.family", "new_value": "j@smith.me"},
            {"field": "LoyaltyPoints", "old_value": 120, "new_value": 245},
        ],
        "order": {"billing_address": {"phone": "617 555 0188", "first_name": "John"}},
    }
    masked = mask_event(event)
    text = str(masked)
    assert not EMAIL_OR_DIGITS.search(text.replace(event["event_id"], "")), text
    assert masked["customer"]["email"] == "j***@s***.io"
    assert masked["customer"]["customer_id"] == "cust-1001"  # not personal: kept to find it
    assert masked["changes"][1]["new_value"] == 245


def test_inspect_line_names_source_reason_and_klaviyo_code() -> None:
    dl = letter(rejected_failure(), partition=1, offset=8)
    line = inspect_line(dl, Original(undecodable="bad_magic"), NOW, replayed=True)
    assert line.startswith("shop.order.placed/1/8  stage=send reason=klaviyo_rejected")
    assert "klaviyo=400/invalid" in line
    assert "age=2h" in line
    assert "undecodable (bad_magic)" in line
    assert line.endswith("[replayed]")
    assert "\n" not in line
