"""The relay's allocator tuning: freed heap pages go back to the kernel, not only a heap's top."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator

import pytest

from consumer.cli.allocator import HeapTrimmer, _glibc, limit_arenas

LIBC = _glibc()
pytestmark = pytest.mark.skipif(LIBC is None, reason="glibc only")

BLOCK = 8 * 1024  # under glibc's mmap threshold: these come from the arena
BLOCKS = 4_000  # ~32 MB
MB = 1024 * 1024


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def stranded_free_memory() -> Iterator[int]:
    """~32 MB freed inside the heap below a block still in use: glibc's own trimming (from the
    top of the heap only) cannot give it back. Yields the RSS with it stranded."""
    LIBC.malloc.restype = ctypes.c_void_p
    LIBC.malloc.argtypes = [ctypes.c_size_t]
    LIBC.free.argtypes = [ctypes.c_void_p]
    blocks = [LIBC.malloc(BLOCK) for _ in range(BLOCKS)]
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)  # resident, not just reserved
    for block in blocks[:-1]:
        LIBC.free(block)
    try:
        yield _rss()
    finally:
        LIBC.free(blocks[-1])


def test_trim_gives_back_memory_freed_below_a_live_block(stranded_free_memory: int) -> None:
    assert HeapTrimmer().trim()
    assert _rss() < stranded_free_memory - 20 * MB


def test_the_trimmer_thread_trims_by_itself(stranded_free_memory: int) -> None:
    trimmer = HeapTrimmer(interval=0.05)
    assert trimmer.start()
    try:
        deadline = time.monotonic() + 30
        while _rss() >= stranded_free_memory - 20 * MB:
            assert time.monotonic() < deadline, "the trimmer released nothing within 30 s"
            time.sleep(0.05)
    finally:
        trimmer.stop()


def test_glibc_accepts_the_arena_cap() -> None:
    assert limit_arenas()
