"""The reason codes operators read about are the ones the relay writes: the table in
docs/operations.md lists every :class:`consumer.errors.Reason`, in order, and marks exactly
the ones ``dlq replay`` skips as unfixable."""

from __future__ import annotations

import re
from pathlib import Path

from consumer.errors import UNFIXABLE_BY_REPLAY, Reason

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
_ROW = re.compile(r"^\| `(?P<reason>[a-z_]+)` \|.*\| (?P<replay>[^|]+) \|$")


def _table() -> dict[str, str]:
    text = DOC.read_text()
    section = text[text.index("**Reasons.**") :]
    section = section[: section.index("\n#")]
    rows = (_ROW.match(line) for line in section.splitlines())
    return {m["reason"]: m["replay"].strip() for m in rows if m}


def test_the_table_lists_every_reason_in_order() -> None:
    assert list(_table()) == [reason.value for reason in Reason]


def test_the_table_marks_what_replay_skips() -> None:
    unfixable = {reason for reason, replay in _table().items() if replay == "unfixable"}
    assert unfixable == set(UNFIXABLE_BY_REPLAY)
