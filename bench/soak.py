"""The soak: the relay under steady traffic for a long time; memory must not grow with time.

``python -m bench --soak SECONDS [--soak-rate N] [--soak-mode batch|realtime]``: events are
produced at a steady rate (below what the relay drains, so there is no backlog and memory
depends only on time and events processed) while the relay runs against the unlimited
sandbox. The relay's RSS is sampled all along (``measure.py``); the row's note compares the
median RSS of the second tenth of the run (after start-up and the first allocations) with that
of the last tenth: ``growth`` is their difference. A leak that follows events processed shows
there, where a backlog drain would hide it behind the prefetch.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

from bench.loadgen import produce
from bench.scenarios import Bench, InstrumentedSandbox, Row
from dev.harness import UNLIMITED_RATE_LIMITS, rate_limits_json, wait_until


@dataclass(frozen=True)
class Growth:
    early_mb: float  # median RSS over the second tenth of the run
    late_mb: float  # median RSS over the last tenth

    @property
    def growth_mb(self) -> float:
        return round(self.late_mb - self.early_mb, 1)


def growth(series: list[tuple[float, float, float]]) -> Growth:
    """Median RSS early (second tenth) and late (last tenth) of ``(t, rss, cpu)`` samples."""
    n = len(series)
    early = [rss for _, rss, _ in series[n // 10 : max(n // 5, n // 10 + 1)]]
    late = [rss for _, rss, _ in series[n - max(n // 10, 1) :]]
    return Growth(round(statistics.median(early), 1), round(statistics.median(late), 1))


def soak_run(
    bench: Bench, sandbox: InstrumentedSandbox, *, seconds: float, rate: float, mode: str
) -> Row:
    sandbox.reset()
    name = f"soak-relay-{mode}"
    group = bench.new_group(name, bench.end_offsets())
    child = bench.relay(name, group, sandbox, mode, rate_limits_json(UNLIMITED_RATE_LIMITS))
    wait_until(lambda: child.logged("partitions assigned"), 120, "the relay's partitions")
    expected = 0  # Klaviyo events the produced events make
    stop = threading.Event()

    def steady() -> None:
        nonlocal expected
        while not stop.is_set():  # one-second slices, paced
            report = produce(bench.gen, bench.bootstrap, max(1, round(rate)), rate=rate)
            expected += report.klaviyo_events

    producer = threading.Thread(target=steady, name="soak-producer", daemon=True)
    began = time.monotonic()
    producer.start()
    bench.progress = []
    try:
        while time.monotonic() - began < seconds:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.log_path.name}: exited early")
            bench.progress.append(
                (round(time.time() - child.started, 2), sandbox.progress()["accepted"])
            )
            time.sleep(1.0)
    finally:
        stop.set()
        producer.join(60)
    # Let the relay finish what was produced, then measure.
    wait_until(lambda: sandbox.progress()["accepted"] >= expected, 120, "the soak's last events")
    usage = child.finish()
    row = bench.row("soak", f"relay {mode}", sandbox, usage=usage, child=child)
    found = growth(row.usage_series)
    row.notes.append(
        f"soak: {seconds:.0f} s at {rate:.0f} events/s; RSS {found.early_mb} MB early, "
        f"{found.late_mb} MB late: growth {found.growth_mb:+.1f} MB"
    )
    return row
