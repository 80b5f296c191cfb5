"""Scenario 6's attribution of each resend to its cause (bench/crash.py)."""

from __future__ import annotations

from bench.crash import resend_causes


def test_each_resend_is_put_down_to_the_kill_after_its_first_acceptance() -> None:
    kills = [10.0, 20.0]
    trace = [
        [1.0, "recorded", "create_event", "Placed Order", "a", 0],  # order a: cut by the kill
        [11.0, "recorded", "create_event", "Ordered Product", "a:0", 0],
        [9.99, "recorded", "bulk_create_events", "Shipped", "b", 1],  # finished just before
        [10.2, "recorded", "create_event", "Shipped", "c", 0],  # the killed relay's last request
        [5.0, "recorded", "create_event", "Shipped", "d", 0],  # finished long before
        [21.0, "recorded", "create_event", "Shipped", "e", 0],  # after the last kill: a retry
        [12.0, "duplicate", "create_event", "Placed Order", "a", 0],
        [12.0, "duplicate", "create_event", "Shipped", "b", 0],
        [12.0, "duplicate", "create_event", "Shipped", "c", 0],
        [25.0, "duplicate", "create_event", "Shipped", "d", 0],  # resent after the second kill
        [22.0, "duplicate", "create_event", "Shipped", "e", 0],
    ]
    assert resend_causes(trace, kills) == {
        "event cut part-way by the kill": 1,
        "finished < 0.1 s before the kill (bulk_create_events)": 1,
        "in flight at the kill": 1,
        "finished >= 2 s before the kill (create_event)": 1,
        "no kill after it (a retry)": 1,
    }
