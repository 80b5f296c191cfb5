"""Pulse wakes the tasks waiting when it fires, and only those."""

from __future__ import annotations

import asyncio

from consumer.pulse import Pulse


async def test_fire_wakes_every_waiter_and_a_later_wait_waits_for_the_next() -> None:
    pulse = Pulse()
    waiters = [asyncio.create_task(pulse.wait()) for _ in range(3)]
    await asyncio.sleep(0)  # let them start waiting
    pulse.fire()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)

    late = asyncio.create_task(pulse.wait())
    await asyncio.sleep(0)
    assert not late.done()  # the earlier fire does not count for it
    pulse.fire()
    await asyncio.wait_for(late, 5)
