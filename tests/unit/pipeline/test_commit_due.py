"""The commit loop's wait: due at every finish, and still cancellable as it falls due."""

from __future__ import annotations

import asyncio

import pytest

from consumer.pipeline.inflight import COMMIT_AT_ONCE, InFlight, Work
from consumer.pipeline.records import SourceRecord


def taken(book: InFlight, count: int) -> list[Work]:
    book.assign([("t", 0)], {})
    return book.take([SourceRecord("t", 0, o, b"k", b"v", None) for o in range(count)])


async def test_a_commit_is_due_at_every_finish_and_soon_after_many() -> None:
    book = InFlight(None)
    works = taken(book, COMMIT_AT_ONCE + 1)
    book.finish(works[0])
    assert await asyncio.wait_for(book.wait_commit_due(3600), 5) is False
    for work in works[1:]:
        book.finish(work)
    assert await asyncio.wait_for(book.wait_commit_due(3600), 5) is True


async def test_a_cancel_that_comes_as_the_commit_falls_due_still_cancels() -> None:
    # The shutdown cancels the commit loop right after the drain's last finish: a wait that
    # swallowed that cancel (asyncio.wait_for on Python 3.11) kept the loop, and the stop, going.
    book = InFlight(None)
    [work] = taken(book, 1)
    waiting = asyncio.create_task(book.wait_commit_due(3600))
    await asyncio.sleep(0)
    book.finish(work)  # the wait is woken, and cancelled before it runs again
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
