"""The pinned Klaviyo revision's age as a metric and a start-up warning."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from consumer.klaviyo.revision import InvalidRevision, revision_status
from consumer.observability.logging import get_logger
from consumer.observability.metrics import KLAVIYO_REVISION_AGE

log = get_logger(__name__)


def utc_today() -> date:
    return datetime.now(UTC).date()


def track_revision(revision: str, today: Callable[[], date] = utc_today) -> None:
    """Export the revision's age (computed at each scrape, so a long-running pod's age keeps
    counting) and warn once at start-up when the revision is deprecated or retired."""
    try:
        status = revision_status(revision, today())
    except InvalidRevision as exc:  # preflight refuses it before run gets here
        log.warning("klaviyo revision not understood", error=str(exc))
        return
    KLAVIYO_REVISION_AGE.set_function(lambda: revision_status(revision, today()).age_days)
    if status.needs_attention:
        log.warning(
            "klaviyo revision ageing",
            setting="KLAVIYO_REVISION",
            phase=status.phase.value,
            detail=status.describe(),
        )
