"""The relay with a memory probe beside it: what grows, sampled from inside the process.

``python -m bench.memprobe OUT.jsonl [relay run options]`` runs ``consumer run`` exactly as
:data:`dev.harness.RELAY_COMMAND` does, plus one daemon thread that appends a JSON line to
``OUT.jsonl`` every ``MEMPROBE_INTERVAL`` seconds (default 2) with, side by side:

- ``rss_mb``, ``hwm_mb``, ``threads``: the kernel's view (``/proc/self/status``);
- ``py_blocks``, ``gc``: the Python heap (``sys.getallocatedblocks``; ``gc.get_count()``, the
  collector's counters per generation). Not ``len(gc.get_objects(n))``: from this thread it can
  hand out a tuple the event loop is still building, and the relay then fails with
  ``SystemError: Objects/tupleobject.c:927: bad argument to internal function`` (it did once,
  2026-12-02, in ``tuple(genexpr)`` inside prometheus_client's ``labels``);
- ``malloc``: glibc's allocator (``mallinfo2``): ``arena`` (bytes taken with brk/arenas),
  ``mmap`` (large blocks mapped on their own), ``used``, ``free`` (held, not in use);
- ``kafka``: the totals of librdkafka's latest statistics document (``msg_cnt``/``msg_size``:
  messages the client holds; ``fetchq_cnt``/``fetchq_size`` summed over partitions: every
  partition of the high-level consumer reports the one queue they all forward to, so divide by
  the partition count), taken from the relay's own statistics callback.

Nothing in the relay changes: the statistics callback is wrapped where the source looks it up.
``MEMPROBE_GC_MIDDLE=n`` sets the cycle collector's middle threshold first (an experiment knob).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import itertools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

MB = 1024 * 1024
PYMALLOC_EVERY = 15  # samples between two dumps of sys._debugmallocstats


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> Any:
    """glibc's ``mallinfo2`` (None elsewhere: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _Mallinfo2
    return function


def _smaps() -> dict[str, float]:
    """Resident MB by kind of mapping: ``heap`` (glibc's main arena), ``anon`` (pymalloc's
    arenas, glibc's other arenas and large blocks, thread stacks: the kernel merges adjacent
    anonymous mappings, so they cannot be told apart here), ``file`` (code and data of the
    interpreter and the libraries)."""
    kinds = dict.fromkeys(("heap", "anon", "file"), 0)
    kind = "anon"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("/"):
                kind = "file"
            else:
                kind = "anon"
        elif head[0] == "Rss:":
            kinds[kind] += int(head[1])
    return {name: round(kb / 1024, 1) for name, kb in kinds.items()}


def _status() -> dict[str, float]:
    wanted = {"VmRSS": "rss_mb", "VmHWM": "hwm_mb", "Threads": "threads"}
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        name = wanted.get(key)
        if name:
            value = float(rest.split()[0])
            out[name] = round(value / 1024, 1) if name.endswith("_mb") else value
    return out


class Probe:
    def __init__(self, out: Path, interval: float) -> None:
        self.out = out
        self.interval = interval
        self.kafka: dict[str, int] = {}
        self.trim_ms: list[float] = []  # the relay's heap trims since the last sample
        self.mallinfo = _mallinfo()
        self.began = time.monotonic()

    def on_stats(self, stats_json: str) -> None:
        stats = orjson.loads(stats_json)
        totals = {"msg_cnt": stats.get("msg_cnt", 0), "msg_size": stats.get("msg_size", 0)}
        fetchq_cnt = fetchq_size = 0
        for topic in (stats.get("topics") or {}).values():
            for partition in (topic.get("partitions") or {}).values():
                fetchq_cnt += partition.get("fetchq_cnt", 0)
                fetchq_size += partition.get("fetchq_size", 0)
        totals.update(fetchq_cnt=fetchq_cnt, fetchq_size=fetchq_size)
        self.kafka = totals

    def sample(self) -> dict[str, Any]:
        line: dict[str, Any] = {"t": round(time.monotonic() - self.began, 2), **_status()}
        line["py_blocks"] = sys.getallocatedblocks()
        line["gc"] = list(gc.get_count())
        if self.mallinfo is not None:
            info = self.mallinfo()
            line["malloc"] = {
                "arena_mb": round(info.arena / MB, 1),
                "mmap_mb": round(info.hblkhd / MB, 1),
                "used_mb": round(info.uordblks / MB, 1),
                "free_mb": round(info.fordblks / MB, 1),
            }
        line["kafka"] = self.kafka
        trims, self.trim_ms = self.trim_ms, []
        if trims:
            line["trim_ms"] = {"n": len(trims), "max": round(max(trims), 1)}
        return line

    def run(self) -> None:
        with self.out.open("ab") as out:
            for n in itertools.count():
                line = self.sample()
                out.write(orjson.dumps(line) + b"\n")
                out.flush()
                if n % PYMALLOC_EVERY == 0:
                    out.write(orjson.dumps({"t": line["t"], "smaps": _smaps()}) + b"\n")
                    out.flush()
                    # pymalloc's own arenas (mapped by Python, not glibc: outside ``malloc``)
                    # go to stderr, the relay's log, after a marker with the sample's time.
                    os.write(2, f"memprobe pymalloc t={line['t']}\n".encode())
                    sys._debugmallocstats()
                time.sleep(self.interval)


def main(argv: list[str]) -> None:
    probe = Probe(Path(argv[0]), float(os.environ.get("MEMPROBE_INTERVAL", "2")))
    # MEMPROBE_GC_MIDDLE=n: the cycle collector's middle threshold for the experiment in
    # bench/README.md (the relay raises only the young one and keeps this).
    if middle := os.environ.get("MEMPROBE_GC_MIDDLE"):
        young, _, old = gc.get_threshold()
        gc.set_threshold(young, int(middle), old)
    from consumer.cli import allocator  # noqa: PLC0415
    from consumer.pipeline import source  # noqa: PLC0415  (after the probe exists)

    record = source.record_kafka_stats  # type: ignore[attr-defined]

    def on_stats(stats_json: str) -> None:
        probe.on_stats(stats_json)
        record(stats_json)

    source.record_kafka_stats = on_stats  # type: ignore[attr-defined]
    trim = allocator.HeapTrimmer.trim

    def timed_trim(self: allocator.HeapTrimmer) -> bool:
        began = time.perf_counter()
        try:
            return trim(self)
        finally:
            probe.trim_ms.append((time.perf_counter() - began) * 1000)

    allocator.HeapTrimmer.trim = timed_trim  # type: ignore[method-assign]
    threading.Thread(target=probe.run, name="memprobe", daemon=True).start()
    from consumer.cli import main as relay_main  # noqa: PLC0415

    sys.argv = ["consumer", "run", *argv[1:]]
    relay_main()


if __name__ == "__main__":
    main(sys.argv[1:])
