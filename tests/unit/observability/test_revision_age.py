"""The revision age gauge follows the clock; the start-up warning names the setting."""

from __future__ import annotations

from datetime import date

from structlog.testing import capture_logs

from consumer.cli.check import check_revision
from consumer.observability.metrics import REGISTRY
from consumer.observability.revision import track_revision
from consumer.settings import Settings


def _age() -> float | None:
    return REGISTRY.get_sample_value("klaviyo_relay_klaviyo_revision_age_days")


def test_gauge_is_computed_at_each_scrape_and_stable_is_quiet() -> None:
    today = [date(2026, 7, 25)]
    with capture_logs() as logs:
        track_revision("2026-07-15", lambda: today[0])
    assert _age() == 10
    today[0] = date(2027, 7, 15)
    assert _age() == 365
    assert not [e for e in logs if e["log_level"] == "warning"]


def test_deprecated_revision_warns_at_start_up_naming_the_setting() -> None:
    with capture_logs() as logs:
        track_revision("2026-07-15", lambda: date(2028, 5, 1))
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["setting"] == "KLAVIYO_REVISION"
    assert warning["phase"] == "deprecated"
    assert "close to retirement" in warning["detail"]


def test_check_line_per_phase() -> None:
    settings = Settings(klaviyo_revision="2026-07-15")
    assert check_revision(settings, date(2026, 12, 1)).line().startswith("revision: ok (")
    deprecated = check_revision(settings, date(2027, 12, 1))
    assert deprecated.ok and "set KLAVIYO_REVISION to a newer revision" in deprecated.detail
    retired = check_revision(settings, date(2028, 7, 15))
    assert not retired.ok and "retired" in retired.detail
    bad = check_revision(Settings(klaviyo_revision="latest"), date(2026, 12, 1))
    assert not bad.ok and "KLAVIYO_REVISION" in bad.detail
