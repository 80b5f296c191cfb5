"""Scenario 5, a group: relays in one consumer group sharing one account, scaled 1 → 3 → 1.

Per send mode: the sandbox enforces the published limits (50–150 ms latency, as scenario 2)
for one account; events are produced steadily at 110 % of what the measured endpoint's steady
limit lets through (Create Event; Bulk Create Events for ``batch``). One relay runs for a phase,
two more join the group for a phase, then those two stop gracefully (SIGTERM: they drain and
commit) for a last phase; each phase starts once the scaling is done (the new relays have their
partitions, the stopped ones have exited), so each holds at least ``phase_s // window - 1``
full steady windows.

``RATE_LIMIT_SHARE`` is deliberately not set: each relay takes the share it works out by
itself. (With a relay whose fixed default is the whole quota, three relays overshoot it; the
429s show it.)

Measured at the sandbox, per full steady window (window index = clock // window length, as
Klaviyo counts) while production ran: requests admitted over the limit (the share used) and
429s, each window labelled with the relays that ran through it (``1→3`` when scaling happened
inside it). After production stops the last relay drains: the sandbox's count of distinct
accepted events must equal the Klaviyo events of every acknowledged produce (nothing lost);
resends it deduplicated on ``unique_id`` (Klaviyo's dedup) are counted apart.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from bench.measure import Usage
from bench.scenarios import OVERSUBSCRIBE, Bench, Child, InstrumentedSandbox
from bench.steady import SteadyProducer, combined, count, table, unavailable
from dev.harness import rate_limits_json, wait_until

GRACE_S = 60.0  # SIGTERM to SIGKILL: the relay's own drain timeout is 25 s


@dataclass(frozen=True)
class GroupPlan:
    phase_s: float  # each of the three phases
    relays: int = 3  # at the peak

    @property
    def drain_s(self) -> float:
        """How long the last relay may take to deliver what is left once production stops
        (at 110 % demand a relay that keeps up has ~10 % of a run's production left)."""
        return max(120.0, self.phase_s)

    @classmethod
    def full(cls, phase_s: float = 240.0) -> GroupPlan:
        return cls(phase_s)

    @classmethod
    def quick(cls, phase_s: float = 10.0) -> GroupPlan:
        # Two of the quick 5 s windows: each phase still holds one full window.
        return cls(phase_s)


@dataclass
class Window:
    index: int
    relays: str  # "1", "3", "1→3", "3→1"
    admitted: int
    limit: int
    refused: int

    @property
    def share(self) -> float:
        return self.admitted / self.limit


@dataclass
class GroupResult:
    mode: str
    phase_s: float
    available: bool = True
    rate: float = 0.0
    endpoint: str = ""
    windows: list[Window] = field(default_factory=list)
    requests: int = 0  # every API request
    throttled: int = 0
    expected: int | None = None
    accepted: int | None = None
    drained: bool = True
    duplicates: int | None = None
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int | None:
        if self.expected is None or self.accepted is None or not self.drained:
            return None
        return self.expected - self.accepted

    @property
    def throttled_share(self) -> float | None:
        return self.throttled / self.requests if self.requests else None


@dataclass
class _Scaling:
    began: float
    done: float
    label: str


def run(bench: Bench, sandbox: InstrumentedSandbox, plan: GroupPlan, mode: str) -> GroupResult:
    result = GroupResult(mode, plan.phase_s)
    why = unavailable(mode)
    if why is not None:
        result.available = False
        result.notes.append(f"not available: {why}")
        return result
    assert sandbox.limits is not None
    result.endpoint = "bulk_create_events" if mode == "batch" else "create_event"
    steady = sandbox.limits[result.endpoint].steady
    per_request = 1000 if mode == "batch" else 1
    result.rate = OVERSUBSCRIBE * steady.requests * per_request / steady.seconds / bench.per_event
    sandbox.reset()
    relays = _Relays(bench, sandbox, mode)
    try:
        relays.scale(1)
        production = SteadyProducer(bench.gen, bench.bootstrap, result.rate)
        try:
            wait_until(lambda: sandbox.progress()["first"] > 0, 120, "the first accepted event")
            _run_phase(relays.running, plan.phase_s)
            relays.scale(plan.relays)
            _run_phase(relays.running, plan.phase_s)
            relays.scale(1)
            _run_phase(relays.running, plan.phase_s)
        finally:
            production.stop()
        stopped = time.time()
        result.expected = production.klaviyo_events
        try:
            # Bounded: a mode that fell far behind the demand would drain for an hour.
            bench.drain(sandbox, production.klaviyo_events, relays.running[0], plan.drain_s)
        except TimeoutError as exc:
            result.notes.append(f"not drained: {exc}")
            result.drained = False  # nothing to say about lost events
    finally:
        relays.scale(0)
    if any(relays.exits):
        result.notes.append(f"relays exited with {relays.exits} (0 expected)")
    usage = combined(relays.usages)
    result.cpu_s, result.peak_rss_mb = usage.cpu_seconds, usage.peak_rss_mb
    _summarise(result, sandbox, relays.scalings, stopped)
    return result


class _Relays:
    """The group's relay processes, scaled up (start, wait for their partitions) and down
    (SIGTERM together, wait for them to drain and exit), each scaling timed."""

    def __init__(self, bench: Bench, sandbox: InstrumentedSandbox, mode: str) -> None:
        self._bench, self._sandbox, self._mode = bench, sandbox, mode
        assert sandbox.limits is not None
        self._limits = rate_limits_json(sandbox.limits)
        self._group = bench.new_group(f"group-{mode}", bench.end_offsets())
        self.running: list[Child] = []
        self.started = 0
        self.usages: list[Usage] = []
        self.exits: list[int] = []
        self.scalings: list[_Scaling] = []

    def scale(self, count: int) -> None:
        began, before = time.time(), len(self.running)
        if count > before:
            joined = [self._start() for _ in range(count - before)]
            self.running += joined
            for child in joined:
                wait_until(
                    partial(child.logged, "partitions assigned"), 120, "a relay's partitions"
                )
        elif count < before:
            leaving, self.running = self.running[count:], self.running[:count]
            self.usages += [child.sampler.finish() for child in leaving]
            for child in leaving:
                child.terminate()
            # One SIGTERM each (a second one would cut a relay's drain short), then wait.
            deadline = time.monotonic() + GRACE_S
            for child in leaving:
                with suppress(subprocess.TimeoutExpired):
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                self.exits.append(child.stop())  # SIGKILL if it is still there
        if before and count:
            self.scalings.append(_Scaling(began, time.time(), f"{before}→{count}"))

    def _start(self) -> Child:
        self.started += 1
        # No RATE_LIMIT_SHARE: each relay's own (default or derived) share is what is measured.
        return self._bench.relay(
            f"5-relay{self.started}-{self._mode}",
            self._group,
            self._sandbox,
            self._mode,
            self._limits,
        )


def _run_phase(relays: list[Child], seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end:
        for child in relays:
            if child.process.poll() is not None:
                raise RuntimeError(f"{child.log_path.name}: exited early")
        time.sleep(min(1.0, max(0.0, end - time.time())))


def _summarise(
    result: GroupResult, sandbox: InstrumentedSandbox, scalings: list[_Scaling], stopped: float
) -> None:
    s = sandbox.summary()
    quota = s["quotas"][result.endpoint]
    length, limit = quota["steady_seconds"], quota["steady_limit"]
    admitted = {int(k): v for k, v in quota["admitted"].items()}
    refused = {int(k): v for k, v in quota["refused_by_window"].items()}
    # Full windows: after the one of the first admission, before the one production stopped in.
    first = int(s["first"] // length)
    last = int(stopped // length) - 1
    for index in range(first + 1, last + 1):
        result.windows.append(
            Window(
                index,
                _relays(index * length, (index + 1) * length, scalings),
                admitted.get(index, 0),
                limit,
                refused.get(index, 0),
            )
        )
    result.accepted = s["accepted"]
    result.duplicates = s["duplicates"]
    result.throttled = s["throttled"]
    result.requests = sum(n for counts in s["requests"].values() for n in counts.values())
    result.notes.append(f"requests: {s['requests']}")
    if result.mode != "batch":
        other = s["quotas"]["bulk_create_events"]["admitted"]
        result.notes.append(f"Bulk Create Events admitted per window: {other}")


def _relays(start: float, end: float, scalings: list[_Scaling]) -> str:
    count = "1"
    for scaling in scalings:
        if scaling.began < end and scaling.done > start:
            return scaling.label
        if scaling.done <= start:
            count = scaling.label.split("→")[1]
    return count


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


COLUMNS = (
    "Send mode",
    "Relays",
    "Endpoint",
    "Events/s",
    "Full windows",
    "Least window used",
    "Mean window used",
    "429s",
    "429 share",
    "Klaviyo events",
    "Lost",
    "Deduplicated resends",
    "CPU s",
    "Peak RSS MB",
)


def markdown(results: list[GroupResult]) -> list[str]:
    lines = table(
        "## 5. Group (one account, published limits, 1 → 3 → 1 relays)",
        COLUMNS,
        [_cells(r) for r in results],
    )
    lines += ["", "Steady windows per run (relays: admitted / limit, 429s):", ""]
    for r in results:
        windows = ", ".join(f"{w.relays}: {_pct(w.share)} ({w.refused} × 429)" for w in r.windows)
        lines.append(f"- 5 / relay {r.mode}: {windows or '–'}; " + "; ".join(r.notes))
    return lines


def _cells(r: GroupResult) -> list[str]:
    if not r.available:
        return [f"relay {r.mode}", "1 → 3 → 1", "not available"]
    shares = [w.share for w in r.windows]
    return [
        f"relay {r.mode}",
        "1 → 3 → 1",
        r.endpoint,
        f"{r.rate:.0f}",
        str(len(r.windows)),
        _pct(min(shares, default=None)),
        _pct(sum(shares) / len(shares) if shares else None),
        f"{r.throttled:,}",
        _pct(r.throttled_share),
        count(r.accepted),
        count(r.lost),
        count(r.duplicates),
        f"{r.cpu_s:.1f}",
        f"{r.peak_rss_mb:.0f}",
    ]


def data(results: list[GroupResult]) -> list[dict[str, Any]]:
    return [
        {
            **asdict(r),
            "lost": r.lost,
            "throttled_share": r.throttled_share,
            "window_shares": [w.share for w in r.windows],
        }
        for r in results
    ]
