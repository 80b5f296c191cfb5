"""The pinned revision's lifecycle: stable for a year, deprecated for a year, then retired."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from consumer.klaviyo.revision import InvalidRevision, Phase, revision_date, revision_status

SHIPPED = date(2026, 7, 15)


def at(days: int) -> date:
    return SHIPPED + timedelta(days=days)


@pytest.mark.parametrize(
    ("days", "phase", "close"),
    [
        (0, Phase.STABLE, False),
        (364, Phase.STABLE, False),
        (365, Phase.DEPRECATED, False),
        (639, Phase.DEPRECATED, False),
        (640, Phase.DEPRECATED, True),  # 90 days before the 2-year mark
        (729, Phase.DEPRECATED, True),
        (730, Phase.RETIRED, False),
        (1000, Phase.RETIRED, False),
    ],
)
def test_phase_at_the_boundaries(days: int, phase: Phase, close: bool) -> None:
    status = revision_status("2026-07-15", at(days))
    assert status.age_days == days
    assert status.phase is phase
    assert status.close_to_retirement is close
    assert status.days_to_retirement == 730 - days


def test_stable_needs_nothing_and_says_so() -> None:
    status = revision_status("2026-07-15", at(300))
    assert not status.needs_attention
    assert "stable for another 65 days" in status.describe()
    assert "KLAVIYO_REVISION" not in status.describe()


@pytest.mark.parametrize("days", [365, 700, 730])
def test_deprecated_and_retired_name_the_setting(days: int) -> None:
    status = revision_status("2026-07-15", at(days))
    assert status.needs_attention
    assert "set KLAVIYO_REVISION to a newer revision" in status.describe()
    assert status.phase.value in status.describe()


def test_close_to_retirement_is_said() -> None:
    assert "close to retirement" in revision_status("2026-07-15", at(700)).describe()
    assert "close to retirement" not in revision_status("2026-07-15", at(400)).describe()


def test_pre_release_suffix_is_dated_like_its_revision() -> None:
    assert revision_date("2026-07-15.pre") == SHIPPED
    assert revision_status("2026-07-15.pre", at(10)).age_days == 10


@pytest.mark.parametrize("bad", ["", "2026-7-15", "2026-13-01", "2026-02-30", "latest", "v2026"])
def test_anything_else_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(InvalidRevision, match="KLAVIYO_REVISION"):
        revision_date(bad)
