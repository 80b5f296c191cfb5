"""The lifecycle of the pinned Klaviyo API revision (``KLAVIYO_REVISION``).

Klaviyo publishes a revision each quarter; each is stable for a year, deprecated for a year, then
retired (a 410, or a silent move to a newer revision). Pure functions: the date is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

STABLE_DAYS = 365
RETIRED_DAYS = 2 * 365
# How long before retirement the relay starts warning that the revision is about to go.
WARN_BEFORE_RETIREMENT_DAYS = 90

# YYYY-MM-DD, optionally with a suffix such as ".pre" (a pre-release revision, which Klaviyo
# dates like the stable one it precedes).
_REVISION = re.compile(r"^(\d{4}-\d{2}-\d{2})(\.[a-z]+)?$")


class Phase(StrEnum):
    STABLE = "stable"
    DEPRECATED = "deprecated"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class RevisionStatus:
    revision: str
    age_days: int
    phase: Phase
    # Days until the 2-year mark (negative once retired).
    days_to_retirement: int

    @property
    def close_to_retirement(self) -> bool:
        return 0 < self.days_to_retirement <= WARN_BEFORE_RETIREMENT_DAYS

    @property
    def needs_attention(self) -> bool:
        return self.phase is not Phase.STABLE

    def describe(self) -> str:
        """One line for ``check`` and the start-up log, naming the setting to change."""
        base = f"revision {self.revision} is {self.age_days} days old"
        if self.phase is Phase.STABLE:
            return f"{base}; stable for another {STABLE_DAYS - self.age_days} days"
        if self.phase is Phase.DEPRECATED:
            soon = " (close to retirement)" if self.close_to_retirement else ""
            return (
                f"{base}; deprecated{soon}, retired in {self.days_to_retirement} days:"
                " set KLAVIYO_REVISION to a newer revision"
            )
        return (
            f"{base}; retired (Klaviyo answers 410 or silently uses a newer revision):"
            " set KLAVIYO_REVISION to a newer revision"
        )


class InvalidRevision(ValueError):
    pass


def revision_date(revision: str) -> date:
    """The date a revision was published; raises InvalidRevision for anything else."""
    match = _REVISION.match(revision.strip())
    if match is None:
        raise InvalidRevision(
            f"KLAVIYO_REVISION {revision!r} is not YYYY-MM-DD (or YYYY-MM-DD.pre)"
        )
    try:
        return date.fromisoformat(match.group(1))
    except ValueError as exc:
        raise InvalidRevision(f"KLAVIYO_REVISION {revision!r} is not a valid date") from exc


def revision_status(revision: str, today: date) -> RevisionStatus:
    age = (today - revision_date(revision)).days
    if age < STABLE_DAYS:
        phase = Phase.STABLE
    elif age < RETIRED_DAYS:
        phase = Phase.DEPRECATED
    else:
        phase = Phase.RETIRED
    return RevisionStatus(revision, age, phase, RETIRED_DAYS - age)
