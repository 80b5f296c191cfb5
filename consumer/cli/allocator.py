"""glibc's allocator, tuned for the relay: few arenas, and free memory handed back.

Why (bench/README.md, "Memory: what grew"): after librdkafka's fetch was bounded, what still
rose with the backlog was allocator slack, not live data: glibc's arenas grew from 37 to 54 MB
while the bytes in use stayed at 20-40 MB. librdkafka's broker threads and the source's poll
thread allocate records in their own arenas (glibc makes up to 8 per core) and the event loop
frees them there, so each arena keeps its own high water of freed, fragmented chunks, and
glibc returns memory to the kernel only from the top of a heap.

- :func:`limit_arenas`: at most :data:`ARENA_MAX` arenas (the ``MALLOC_ARENA_MAX`` the image
  also sets; set here too so that a relay started any other way gets the same);
- :class:`HeapTrimmer`: ``malloc_trim(0)`` every :data:`TRIM_INTERVAL_SECONDS` on its own thread
  (a trim walks the free lists; it must not run on the event loop), which releases the free
  pages inside the arenas, not only at their tops.

Both do nothing where the C library is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

# Two arenas: the event loop's (the main arena) and one shared by every other thread. The
# relay has one Python thread doing the work; more arenas only multiply the slack.
ARENA_MAX = 2
# Often enough that slack cannot build up over a drain (~10,000 events at the bench's batch
# rate), rare enough to cost nothing measurable (a trim of ~50 MB of arenas takes ~1 ms).
TRIM_INTERVAL_SECONDS = 5.0
_M_ARENA_MAX = -8  # <malloc.h>


def _glibc() -> Any:
    """The C library when it is glibc (it has ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(libc: Any = None) -> bool:
    """Cap glibc's arenas at :data:`ARENA_MAX`; applies to the threads created after it, so
    call it before the Kafka clients start. True when glibc accepted it."""
    libc = libc or _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX))


class HeapTrimmer:
    """A daemon thread that hands free heap pages back to the kernel every ``interval``."""

    def __init__(self, interval: float = TRIM_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._libc = _glibc()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heap-trimmer", daemon=True)

    def start(self) -> bool:
        """Start trimming; False (and no thread) where the C library is not glibc."""
        if self._libc is None:
            return False
        self._thread.start()
        return True

    def trim(self) -> bool:
        """One trim now; True when glibc released memory."""
        return self._libc is not None and bool(self._libc.malloc_trim(0))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.trim()


def tune_allocator() -> HeapTrimmer:
    """:func:`limit_arenas` and a started :class:`HeapTrimmer` (the process's lifetime)."""
    limit_arenas()
    trimmer = HeapTrimmer()
    trimmer.start()
    return trimmer
