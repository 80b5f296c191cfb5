"""The scenarios: the relay and the naive baseline against the sandbox, on one broker.

Every run gets a fresh consumer group whose committed offsets are first set to the topics'
current end, so it reads exactly the events produced for it (the topics are never recreated),
and a sandbox reset, so its counts and delays are its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.floors import Floors, measure_floors
from bench.loadgen import LoadGenerator, produce
from bench.measure import ProcessSampler, Usage
from consumer.settings import DEFAULT_RATE_LIMITS, EndpointLimit, WindowLimit
from consumer.topics import CONTRACT_TOPICS
from dev import harness
from dev.harness import (
    RELAY_COMMAND,
    UNLIMITED_RATE_LIMITS,
    ChildProcess,
    GroupOffsets,
    rate_limits_json,
    wait_until,
)

PARTITIONS = 3
DLQ_TOPIC = "bench.dead-letters"
OVERSUBSCRIBE = 1.1  # scenario 2 produces 10 % more than the steady limit lets through
STALL_SECONDS = 60.0


def _limit(burst: int, steady: int, steady_seconds: float) -> EndpointLimit:
    return EndpointLimit(
        burst=WindowLimit(requests=burst, seconds=1.0),
        steady=WindowLimit(requests=steady, seconds=steady_seconds),
    )


# --quick: small windows and counts so scenario 2 finishes in seconds (it proves the machinery,
# not the numbers).
QUICK_LIMITS: dict[str, EndpointLimit] = {
    **DEFAULT_RATE_LIMITS,
    "create_event": _limit(60, 150, 5.0),
    "bulk_create_events": _limit(2, 6, 5.0),
}


@dataclass(frozen=True)
class Config:
    quick: bool
    events: int  # scenario 1, per mode
    baseline_events: int  # scenario 1 baseline
    backlog: int  # scenario 3 (and backlog // 10 for the flatness check)
    quota_windows: int  # full steady windows measured per relay mode in scenario 2
    baseline_windows: int
    limits: dict[str, EndpointLimit]
    latency_ms: str = "50-150"
    customers: int = 2000
    floor_events: int = 20_000  # codec floor (bench/floors.py)
    floor_seconds: float = 10.0  # HTTP floor
    # Scenario 3's backlogs; empty: backlog // 10 and backlog (--backlog-sizes).
    backlog_sizes: tuple[int, ...] = ()


FULL = Config(
    quick=False,
    events=100_000,
    baseline_events=10_000,
    backlog=1_000_000,
    quota_windows=3,
    baseline_windows=1,
    limits=DEFAULT_RATE_LIMITS,
)
QUICK = Config(
    quick=True,
    events=2_000,
    baseline_events=200,
    backlog=4_000,
    quota_windows=1,
    baseline_windows=1,
    limits=QUICK_LIMITS,
    customers=300,
    floor_events=2_000,
    floor_seconds=2.0,
)


@dataclass
class Row:
    scenario: str
    system: str  # "relay realtime", "relay batch", "baseline (klaviyo-api)"
    events: int  # domain events relayed
    klaviyo_events: int  # events Klaviyo (the sandbox) accepted
    seconds: float  # first to last acceptance
    events_per_s: float
    p50_s: float | None
    p99_s: float | None
    throttled: int  # 429 answers
    cpu_s: float
    peak_rss_mb: float
    steady_share: float | None = None  # scenario 2: share of the steady limit used
    wall_s: float | None = None  # start of the process to the last acceptance
    notes: list[str] = field(default_factory=list)
    requests: int = 0  # Klaviyo requests answered (any endpoint, any status)
    # Over time (chart.py): (seconds since start, RSS MB, CPU s) and (seconds, accepted events).
    usage_series: list[tuple[float, float, float]] = field(default_factory=list, repr=False)
    progress_series: list[tuple[float, int]] = field(default_factory=list, repr=False)


def _json_get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post(url: str) -> None:
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=60):
        pass


class InstrumentedSandbox(ChildProcess):
    """``python -m bench.sandbox_proc``: the sandbox with its measuring control port."""

    def __init__(
        self,
        *,
        limits: dict[str, EndpointLimit] | None,
        latency_ms: str | None,
        log: Path,
        trace: bool = False,
        more: Sequence[str] = (),
    ) -> None:
        args = [sys.executable, "-m", "bench.sandbox_proc", *more]
        args += ["--rate-limits", "none" if limits is None else rate_limits_json(limits)]
        if latency_ms:
            args += ["--latency-ms", latency_ms]
        if trace:
            args.append("--trace")
        self.limits = limits
        super().__init__(args, log)
        # Its one line on stdout, once it listens: {"base_url": ..., "control_url": ...}.
        wait_until(lambda: self.line_with('"control_url"') is not None, 120, "the sandbox")
        urls = json.loads(self.line_with('"control_url"') or "")
        self.base_url: str = urls["base_url"]
        self.control_url: str = urls["control_url"]

    def reset(self) -> None:
        _post(self.control_url + "/reset")

    def progress(self) -> dict[str, Any]:
        result: dict[str, Any] = _json_get(self.control_url + "/progress")
        return result

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = _json_get(self.control_url + "/summary")
        return result

    def trace(self) -> list[list[Any]]:
        """Every event the store took (``trace=True`` only): clock, fate, endpoint, metric,
        unique_id."""
        result: list[list[Any]] = _json_get(self.control_url + "/trace")
        return result


class Child(ChildProcess):
    """The relay or the baseline as a child process, measured while it runs."""

    def __init__(self, args: Iterable[str], env: dict[str, str], log: Path) -> None:
        self.started = time.time()
        super().__init__(args, log, env)
        self.sampler = ProcessSampler(self.pid)

    def finish(self, timeout: float = 60) -> Usage:
        """Read the usage, then stop the process (SIGTERM, SIGKILL after ``timeout``)."""
        usage = self.sampler.finish()
        self.stop(timeout)
        return usage


class Bench:
    def __init__(self, config: Config, bootstrap: str, workdir: Path) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.rows: list[Row] = []
        self.gen = LoadGenerator(config.customers)
        self.gen.self_check()
        self.per_event = self.gen.klaviyo_events_per_event
        self.topics = list(CONTRACT_TOPICS)
        # --memprobe: every relay runs under bench.memprobe (heap, allocator and librdkafka
        # statistics sampled inside the process, next to <name>.mem.jsonl in the workdir).
        self.memprobe = False
        # (seconds since the relay started, events accepted by the sandbox), per drain.
        self.progress: list[tuple[float, int]] = []
        self.floors: Floors | None = None

    def measure_floors(self, sandbox: InstrumentedSandbox) -> Floors:
        """The codec and HTTP floors (bench/floors.py), against ``sandbox`` (reset after)."""
        sandbox.reset()
        self.floors = measure_floors(
            self.gen,
            sandbox.base_url,
            events=self.config.floor_events,
            seconds=self.config.floor_seconds,
        )
        sandbox.reset()
        return self.floors

    # --- kafka ---------------------------------------------------------------------------------

    def end_offsets(self) -> dict[tuple[str, int], int]:
        return harness.end_offsets(self.bootstrap, self.topics)

    def new_group(self, name: str, offsets: dict[tuple[str, int], int]) -> str:
        """A consumer group that starts reading at ``offsets``."""
        group = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        with closing(GroupOffsets(self.bootstrap, group)) as positions:
            positions.commit(offsets)
        return group

    # --- processes -----------------------------------------------------------------------------

    def relay(
        self, name: str, group: str, sandbox: InstrumentedSandbox, mode: str, limits: str
    ) -> Child:
        env = harness.relay_env(
            self.bootstrap,
            sandbox.base_url,
            group=group,
            dlq_topic=DLQ_TOPIC,
            RATE_LIMITS=limits,
            SEND_MODE=mode,
        )
        command: list[str] = list(RELAY_COMMAND)
        if self.memprobe:
            probe = self.workdir / f"{name}.mem.jsonl"
            command = [sys.executable, "-m", "bench.memprobe", str(probe)]
        return Child(command, env, self.workdir / f"{name}.relay.log")

    def baseline(
        self,
        name: str,
        group: str,
        sandbox: InstrumentedSandbox,
        count: int = 0,
        seconds: float = 0,
    ) -> Child:
        args = [
            sys.executable,
            "-m",
            "bench.baseline",
            "--bootstrap",
            self.bootstrap,
            "--group",
            group,
            "--base-url",
            sandbox.base_url,
            "--count",
            str(count),
            "--seconds",
            str(seconds),
        ]
        return Child(args, dict(os.environ), self.workdir / f"{name}.baseline.log")

    def drain(
        self,
        sandbox: InstrumentedSandbox,
        expected: int,
        child: Child,
        within: float | None = None,
    ) -> None:
        """Wait until the sandbox accepted ``expected`` events (or progress stalls, or
        ``within`` seconds passed)."""
        seen, since = -1, time.monotonic()
        deadline = None if within is None else since + within
        self.progress = []
        while True:
            accepted = sandbox.progress()["accepted"]
            self.progress.append((round(time.time() - child.started, 2), accepted))
            if accepted >= expected:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{accepted} of {expected} accepted after {within:g}s")
            if child.process.poll() is not None:
                raise RuntimeError(
                    f"{child.log_path.name}: exited early ({child.process.returncode})"
                )
            if accepted != seen:
                seen, since = accepted, time.monotonic()
            elif time.monotonic() - since > STALL_SECONDS:
                raise TimeoutError(f"stalled at {accepted} of {expected} accepted events")
            time.sleep(0.25)

    def row(
        self,
        scenario: str,
        system: str,
        sandbox: InstrumentedSandbox,
        *,
        usage: Usage,
        child: Child,
        domain_events: int | None = None,
    ) -> Row:
        s = sandbox.summary()
        seconds = max(s["last"] - s["first"], 1e-9)
        events = (
            domain_events if domain_events is not None else round(s["accepted"] / self.per_event)
        )
        row = Row(
            scenario=scenario,
            system=system,
            events=events,
            klaviyo_events=s["accepted"],
            seconds=round(seconds, 2),
            events_per_s=round(events / seconds, 1),
            p50_s=s["p50"],
            p99_s=s["p99"],
            throttled=s["throttled"],
            cpu_s=usage.cpu_seconds,
            peak_rss_mb=usage.peak_rss_mb,
            wall_s=round(s["last"] - child.started, 2) if s["last"] else None,
        )
        failed = {
            f"{endpoint} {status}": n
            for endpoint, counts in s["requests"].items()
            for status, n in counts.items()
            if not status.startswith("2") and status != "429"
        }
        row.requests = sum(n for counts in s["requests"].values() for n in counts.values())
        row.usage_series = child.sampler.series
        row.progress_series = self.progress
        if failed:
            row.notes.append(f"refused by the sandbox: {failed}")
        row.notes.append(f"summary: {json.dumps(_quota_digest(s))}")
        self.rows.append(row)
        return row

    # --- scenario 1 and 3: drain a pre-filled backlog ----------------------------------------

    def backlog_run(
        self,
        scenario: str,
        sandbox: InstrumentedSandbox,
        count: int,
        system: str,
        *,
        mode: str = "realtime",
        profile: bool = False,
    ) -> Row:
        sandbox.reset()
        start = self.end_offsets()
        report = produce(self.gen, self.bootstrap, count)
        print(f"  produced {count} events in {report.seconds:.1f}s", flush=True)
        name = f"{scenario}-{system.split(maxsplit=1)[0]}-{mode}"
        group = self.new_group(name, start)
        if system.startswith("relay"):
            child = self.relay(name, group, sandbox, mode, rate_limits_json(UNLIMITED_RATE_LIMITS))
        else:
            child = self.baseline(name, group, sandbox, count=count)
        spy = _py_spy(child.process.pid, self.workdir / f"{name}.py-spy.txt") if profile else None
        try:
            self.drain(sandbox, report.klaviyo_events, child)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            usage = child.finish()
        return self.row(scenario, system, sandbox, usage=usage, child=child, domain_events=count)

    # --- scenario 2: steady production above the limit ---------------------------------------

    def quota_run(
        self, sandbox: InstrumentedSandbox, system: str, mode: str, windows: int, rate: float
    ) -> Row:
        assert sandbox.limits is not None
        endpoint = "bulk_create_events" if mode == "batch" else "create_event"
        steady = sandbox.limits[endpoint].steady
        sandbox.reset()
        self.progress = []
        group = self.new_group(f"quota-{mode}", self.end_offsets())
        name = f"2-{system.split(maxsplit=1)[0]}-{mode}"
        if system.startswith("relay"):
            child = self.relay(name, group, sandbox, mode, rate_limits_json(sandbox.limits))
            wait_until(lambda: child.logged("partitions assigned"), 120, "the relay's partitions")
        else:
            child = self.baseline(name, group, sandbox)
        stop = threading.Event()
        producer = threading.Thread(
            target=_produce_until, args=(self.gen, self.bootstrap, rate, stop), daemon=True
        )
        producer.start()
        try:
            # Until ``windows`` steady windows have passed entirely after the first admission.
            wait_until(lambda: sandbox.progress()["first"] > 0, 120, "the first accepted event")
            first_window = int(sandbox.progress()["first"] // steady.seconds)
            end = (first_window + windows + 1) * steady.seconds + 0.5
            while time.time() < end:
                if child.process.poll() is not None:
                    raise RuntimeError(f"{child.log_path.name}: exited early")
                time.sleep(min(1.0, max(0.0, end - time.time())))
        finally:
            stop.set()
            producer.join(60)
            usage = child.finish()
        row = self.row("2", system, sandbox, usage=usage, child=child)
        admitted = sandbox.summary()["quotas"][endpoint]["admitted"]
        full = [
            admitted.get(str(w), 0) for w in range(first_window + 1, first_window + 1 + windows)
        ]
        row.steady_share = round(sum(full) / (len(full) * steady.requests), 4)
        row.notes.append(
            f"{endpoint}: {full} requests admitted in {len(full)} full {steady.seconds:g}s windows"
            f" (limit {steady.requests}); produced at {rate:.0f} events/s"
        )
        return row


def _produce_until(gen: LoadGenerator, bootstrap: str, rate: float, stop: threading.Event) -> None:
    """Produce at ``rate`` events/s in one-second slices until ``stop``."""
    while not stop.is_set():
        produce(gen, bootstrap, max(1, round(rate)), rate=rate)


def _quota_digest(summary: dict[str, Any]) -> dict[str, Any]:
    return {"requests": summary["requests"], "duplicates": summary["duplicates"]}


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
