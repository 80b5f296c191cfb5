"""Priority admission: less urgent partitions wait only while the in-flight window is (all but
its urgent reserve) full and
slow to turn over, until it falls below the resume mark; a fast window, or one class alone,
is never deferred."""

from __future__ import annotations

from consumer.pipeline.admission import SAMPLE_SECONDS, URGENT_RESERVE, Admission
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.priorities import Priorities, PriorityClass

RESETS: TopicPartitionKey = ("resets", 0)
ORDERS: TopicPartitionKey = ("orders", 0)
LEADS = [("leads", 0), ("leads", 1)]
ASSIGNED = [RESETS, ORDERS, *LEADS]
PRIORITIES = Priorities(
    {"resets": PriorityClass.URGENT, "orders": PriorityClass.NORMAL, "leads": PriorityClass.LOWEST}
)
WINDOW, RESUME = 100, 50
RESERVE = int(WINDOW * URGENT_RESERVE)


class Clock:
    """Drives an :class:`Admission` one sample at a time, finishing ``rate`` events a second."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.now = 0.0
        self.finished = 0

    def after_a_sample(
        self, outstanding: int, rate: float, assigned: list[TopicPartitionKey] = ASSIGNED
    ) -> set[TopicPartitionKey]:
        self.now += SAMPLE_SECONDS
        self.finished += int(rate * SAMPLE_SECONDS)
        return self.admission.deferred(assigned, outstanding, self.finished, self.now)


def clock() -> Clock:
    admission = Admission(PRIORITIES, window=WINDOW, resume_mark=RESUME)
    started = Clock(admission)
    assert admission.deferred(ASSIGNED, 0, 0, 0.0) == set()  # the first look only starts a sample
    return started


def test_a_full_window_held_by_the_quota_defers_every_less_urgent_partition() -> None:
    # 100 events finishing at 5 a second: 20 s to turn over.
    assert clock().after_a_sample(WINDOW, rate=5) == {ORDERS, *LEADS}


def test_deferral_lasts_until_the_window_is_below_the_resume_mark() -> None:
    c = clock()
    assert c.after_a_sample(WINDOW, rate=5)
    assert c.after_a_sample(RESUME, rate=5) == {ORDERS, *LEADS}  # draining: still held
    assert c.after_a_sample(RESUME - 1, rate=5) == set()
    assert c.after_a_sample(RESUME, rate=5) == set()  # not full: the leads flow again


def test_a_window_that_turns_over_fast_is_never_deferred() -> None:
    # Batch mode with quota to spare: the window drains in well under the slow bound.
    c = clock()
    for _ in range(5):
        assert c.after_a_sample(WINDOW, rate=1000) == set()


def test_a_window_that_speeds_up_releases_the_deferred_partitions() -> None:
    c = clock()
    assert c.after_a_sample(WINDOW, rate=5)
    assert c.after_a_sample(WINDOW, rate=1000) == set()


def test_a_window_short_of_its_urgent_reserve_is_never_deferred() -> None:
    assert clock().after_a_sample(WINDOW - RESERVE - 1, rate=0) == set()


def test_a_slow_window_defers_before_it_is_full_keeping_the_reserve_for_urgent_events() -> None:
    # Deferred only once full, a reset fetched meanwhile waited for places to free.
    assert clock().after_a_sample(WINDOW - RESERVE, rate=0) == {ORDERS, *LEADS}


def test_one_class_alone_has_nothing_to_prefer() -> None:
    assert clock().after_a_sample(WINDOW, rate=0, assigned=LEADS) == set()
    # Without the urgent topic, the most urgent class assigned keeps flowing.
    assert clock().after_a_sample(WINDOW, rate=0, assigned=[ORDERS, *LEADS]) == set(LEADS)
