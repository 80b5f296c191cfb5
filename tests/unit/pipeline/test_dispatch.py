"""Per-key lanes: order within a key, concurrency across keys, lanes kept while a ticket is open."""

from __future__ import annotations

import asyncio

from consumer.pipeline.dispatch import Dispatcher, Lane

Item = tuple[bytes | None, int]


class Recorder:
    """A process function whose items block until the test releases them."""

    def __init__(self) -> None:
        self.started: list[Item] = []
        self.finished: list[Item] = []
        self.gates: dict[Item, asyncio.Event] = {}
        self.progress = asyncio.Event()

    def gate(self, item: Item) -> asyncio.Event:
        return self.gates.setdefault(item, asyncio.Event())

    async def process(self, _lane: Lane[Item], item: Item) -> None:
        self.started.append(item)
        self.progress.set()
        await self.gate(item).wait()
        self.finished.append(item)
        self.progress.set()

    async def until(self, condition: object, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not condition():  # type: ignore[operator]
                self.progress.clear()
                await self.progress.wait()


def crash(exc: BaseException) -> None:
    raise AssertionError(f"lane crashed: {exc!r}")


async def test_one_key_runs_in_submission_order_and_keys_run_concurrently() -> None:
    rec = Recorder()
    dispatcher: Dispatcher[Item] = Dispatcher(rec.process, crash)
    items = [(b"a", 0), (b"b", 0), (b"a", 1), (b"b", 1), (b"a", 2)]
    for item in items:
        dispatcher.submit(item[0], item)
    # Both keys start at once; a's second item waits for its first.
    await rec.until(lambda: len(rec.started) == 2)
    assert set(rec.started) == {(b"a", 0), (b"b", 0)}
    rec.gate((b"b", 0)).set()
    await rec.until(lambda: (b"b", 1) in rec.started)
    assert (b"a", 1) not in rec.started
    for item in items:
        rec.gate(item).set()
    await rec.until(lambda: len(rec.finished) == len(items))
    assert [i for i in rec.finished if i[0] == b"a"] == [(b"a", 0), (b"a", 1), (b"a", 2)]
    await rec.until(lambda: dispatcher.lanes == 0)


async def test_records_without_a_key_are_not_serialised() -> None:
    rec = Recorder()
    dispatcher: Dispatcher[Item] = Dispatcher(rec.process, crash)
    for n in range(3):
        dispatcher.submit(None, (None, n))
    await rec.until(lambda: len(rec.started) == 3)
    for n in range(3):
        rec.gate((None, n)).set()
    await rec.until(lambda: dispatcher.lanes == 0)


async def test_lane_with_an_open_ticket_is_kept_and_waits_for_it() -> None:
    loop = asyncio.get_running_loop()
    first_job: asyncio.Future[None] = loop.create_future()
    second_job: asyncio.Future[None] = loop.create_future()
    waited: list[bool] = []
    placed = asyncio.Event()
    checked = asyncio.Event()

    async def process(lane: Lane[Item], item: Item) -> None:
        if item[1] == 0:
            lane.last_ticket = first_job
            placed.set()  # the lane's task ends in the same step, before the test resumes
        else:
            # Same open job: no wait; another job: wait for the first.
            waited.append(await lane.wait_for_ticket_unless(first_job))
            checked.set()
            waited.append(await lane.wait_for_ticket_unless(second_job))
            placed.set()

    dispatcher: Dispatcher[Item] = Dispatcher(process, crash)
    dispatcher.submit(b"k", (b"k", 0))
    async with asyncio.timeout(5):
        await placed.wait()
    assert dispatcher.lanes == 1  # idle, but its job is not settled yet
    placed.clear()
    dispatcher.submit(b"k", (b"k", 1))
    async with asyncio.timeout(5):
        await checked.wait()
    assert waited == [False]  # the open job is its own: no waiting
    first_job.set_result(None)
    async with asyncio.timeout(5):
        await placed.wait()
    assert waited == [False, True]  # another job: it waited for the first one to settle
    assert dispatcher.lanes == 0  # settled and idle: forgotten


async def test_a_bug_in_process_is_reported() -> None:
    seen: list[BaseException] = []
    done = asyncio.Event()

    async def process(_lane: Lane[Item], _item: Item) -> None:
        raise KeyError("boom")

    def on_crash(exc: BaseException) -> None:
        seen.append(exc)
        done.set()

    dispatcher: Dispatcher[Item] = Dispatcher(process, on_crash)
    dispatcher.submit(b"k", (b"k", 0))
    async with asyncio.timeout(5):
        await done.wait()
    assert isinstance(seen[0], KeyError)


async def test_cancel_stops_busy_lanes() -> None:
    rec = Recorder()
    dispatcher: Dispatcher[Item] = Dispatcher(rec.process, crash)
    dispatcher.submit(b"a", (b"a", 0))
    await rec.until(lambda: rec.started)
    await dispatcher.cancel()
    assert dispatcher.lanes == 0 and rec.finished == []
