"""CPU seconds and peak RSS of a child process (the relay or the baseline).

CPU: user + system time of the process (every thread: the event loop, librdkafka's threads)
from psutil, read while it runs, so a slow shutdown is not counted. Peak RSS: the kernel's
high-water mark (``VmHWM`` in ``/proc/<pid>/status``), which catches a spike between two
samples; psutil's current RSS is the fallback where there is no ``/proc``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]

MB = 1024 * 1024


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_rss_mb: float


class ProcessSampler:
    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self._process = psutil.Process(pid)
        self._status = Path(f"/proc/{pid}/status")
        self._interval = interval
        self._stop = threading.Event()
        self._cpu = 0.0
        self._peak = 0
        self._began = time.monotonic()
        # (seconds since sampling began, RSS MB, CPU seconds): the run over time, for charts.
        self.series: list[tuple[float, float, float]] = []
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        try:
            times = self._process.cpu_times()
            self._cpu = times.user + times.system
            self._peak = max(self._peak, self._high_water_mark())
            rss = round(self._process.memory_info().rss / MB, 1)
            self.series.append((round(time.monotonic() - self._began, 2), rss, round(self._cpu, 2)))
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            pass

    def _high_water_mark(self) -> int:
        try:
            for line in self._status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int(self._process.memory_info().rss)

    def finish(self) -> Usage:
        """Stop sampling (call while the process still runs) and give the final reading."""
        self._stop.set()
        self._thread.join()
        self.sample()
        return Usage(round(self._cpu, 2), round(self._peak / MB, 1))
