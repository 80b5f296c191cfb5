"""The one time format: UTC with ``Z``, as short as exact unless fixed width is asked for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from consumer.rfc3339 import format_rfc3339, parse_rfc3339

PARIS = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2023, 10, 15, tzinfo=UTC), "2023-10-15T00:00:00Z"),
        (datetime(2023, 10, 15, 2, 0, 0, 750_000, tzinfo=PARIS), "2023-10-15T00:00:00.750Z"),
        (datetime(2023, 10, 15, 0, 0, 0, 750_001, tzinfo=UTC), "2023-10-15T00:00:00.750001Z"),
        (datetime(2023, 10, 15, 0, 0, 0), "2023-10-15T00:00:00Z"),  # naive: taken as UTC
    ],
)
def test_format_is_utc_with_z_and_the_shortest_exact_fraction(moment: datetime, text: str) -> None:
    assert format_rfc3339(moment) == text
    assert parse_rfc3339(text) == moment.replace(tzinfo=moment.tzinfo or UTC)


def test_milliseconds_are_fixed_width() -> None:
    moment = datetime(2026, 7, 20, 10, 0, 0, 123_456, tzinfo=UTC)
    assert format_rfc3339(moment, timespec="milliseconds") == "2026-07-20T10:00:00.123Z"
    assert format_rfc3339(moment.replace(microsecond=0), timespec="milliseconds") == (
        "2026-07-20T10:00:00.000Z"
    )


def test_parse_reads_offsets_and_takes_no_offset_as_utc() -> None:
    assert parse_rfc3339("2023-10-15T02:00:00+02:00") == datetime(2023, 10, 15, tzinfo=UTC)
    assert parse_rfc3339("2023-10-15T00:00:00").tzinfo is UTC
    with pytest.raises(ValueError):
        parse_rfc3339("yesterday")
