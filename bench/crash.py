"""Scenario 6: kill -9 during a run: how much Klaviyo quota goes to events it already has.

A backlog of 3,000 events, the sandbox with Klaviyo's published limits answering 3 % of the
requests 5xx and 2 % 429 (before it looks at them, as an overloaded Klaviyo would). The relay is
SIGKILLed when a quarter, half and three quarters of the run's Klaviyo events were accepted (and
at least 5 % since it got its partitions) and started again at once, in the same consumer group;
the group gives the new relay the partitions once the killed member's session timed out.
Measured by the sandbox:

- *resends*: requests it accepted for a (metric, profile, unique_id) it already had, that is
  quota spent on what Klaviyo deduplicates, against the run's Klaviyo events;
- *lost*: the run's Klaviyo events it never got (must be 0).

And by the relays, each scraped just before it is killed (its counters die with it): the replay
counters ``klaviyo_relay_replay_skipped_total`` (replayed offsets the commit's completed map let
it skip) and ``klaviyo_relay_replay_resent_total`` (replayed events that had been started, maybe
accepted, before the crash: sent again).

Each resend is put down to a cause (:func:`resend_causes`), from the sandbox's trace of every
event it took and the kill times (both kept in the log folder, ``6-<mode>.trace.json``): its
event was cut part-way by the kill (some of its Klaviyo events accepted only after it), it was
in flight at the kill (accepted just after it: sent by the killed relay), or its event had
finished before the kill, by how long, and on which endpoint (finished, yet not in the killed
relay's last commit).

Not in the default ``--only``: run it with ``python -m bench --only 6`` (``--crash-modes auto``:
one mode).
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import produce
from bench.report import Section
from bench.scenarios import DLQ_TOPIC, Bench, InstrumentedSandbox
from dev import harness
from dev.harness import RelayProcess, rate_limits_json, wait_until

SCENARIO = "6"
EVENTS = 3000
QUICK_EVENTS = 300
KILL_AT = (0.25, 0.50, 0.75)  # shares of the run's Klaviyo events accepted
OWN_SHARE = 0.05  # and accepted since the relay got its partitions
FAULTS = {"error_rates": {"500": 0.01, "502": 0.01, "503": 0.01, "429": 0.02}}
MODES = ("auto", "realtime")
# Fixed one-minute windows: the relay may wait most of a minute for the next one.
STALL_SECONDS = 150.0
# A relay takes seconds to start: what the sandbox accepted this soon after a kill was sent
# by the killed one.
IN_FLIGHT_SECONDS = 1.0
REPLAY_METRICS = ("klaviyo_relay_replay_skipped_total", "klaviyo_relay_replay_resent_total")
# How long the relays' commits took (a crash resends what finished within a commit's lag).
COMMIT_METRICS = (
    "klaviyo_relay_commit_duration_seconds_sum",
    "klaviyo_relay_commit_duration_seconds_count",
)


@dataclass
class CrashRow:
    mode: str
    events: int  # domain events produced
    klaviyo_events: int  # the run's Klaviyo events (what the relay owes the sandbox)
    accepted: int  # distinct events the sandbox recorded
    resends: int  # requests accepted for an event the sandbox already had
    resend_share: float  # resends / klaviyo_events
    lost: int
    kills: int
    replay_skipped: int
    replay_resent: int
    seconds: float  # relay start to the last acceptance
    causes: dict[str, int] = field(default_factory=dict)  # resends by cause (resend_causes)
    # The quota the resends took: Create Event requests, and bulk requests that carried any.
    resent_requests: int = 0
    resent_jobs: int = 0
    commits: int = 0  # the relays' offset commits
    commit_ms: float = 0.0  # their mean duration (store and commit, on the source thread)


def run(bench: Bench, only: set[str], modes: tuple[str, ...] = MODES) -> list[Section]:
    if SCENARIO not in only:
        return []
    config = bench.config
    sandbox = InstrumentedSandbox(
        limits=config.limits,
        latency_ms=config.latency_ms,
        log=bench.workdir / "sandbox-6.log",
        trace=True,
    )
    rows = []
    try:
        for mode in modes:
            count = QUICK_EVENTS if config.quick else EVENTS
            print(f"[{time.strftime('%H:%M:%S')}] 6: relay {mode}, {count} events, kill -9 ×3")
            rows.append(crash_run(bench, sandbox, mode, count))
    finally:
        sandbox.stop(30)
    limits = "--quick's small limits" if config.quick else "published limits"
    return [Section(key="crash", lines=markdown(rows, limits), data=[asdict(r) for r in rows])]


def crash_run(bench: Bench, sandbox: InstrumentedSandbox, mode: str, count: int) -> CrashRow:
    assert sandbox.limits is not None
    sandbox.reset()
    _post_json(sandbox.base_url + "/_sandbox/faults", FAULTS)
    start = bench.end_offsets()
    expected = produce(bench.gen, bench.bootstrap, count).klaviyo_events
    group = bench.new_group(f"crash-{mode}", start)
    env = harness.relay_env(
        bench.bootstrap,
        sandbox.base_url,
        group=group,
        dlq_topic=DLQ_TOPIC,
        RATE_LIMITS=rate_limits_json(sandbox.limits),
        SEND_MODE=mode,
    )
    replay = dict.fromkeys(REPLAY_METRICS + COMMIT_METRICS, 0.0)
    kills: list[float] = []
    began = time.time()
    relay = RelayProcess(env, bench.workdir / f"6-{mode}-0.relay.log")
    try:
        for kill, share in enumerate(KILL_AT, start=1):
            # A killed member holds its partitions until its session times out; bulk jobs it
            # left keep landing meanwhile. Each kill cuts a relay that did some work itself.
            _wait_assigned(relay)
            own = sandbox.progress()["accepted"] + OWN_SHARE * expected
            _wait_accepted(sandbox, min(expected, max(share * expected, own)), relay)
            _add(replay, _scrape(relay))
            kills.append(time.time())
            os.kill(relay.pid, signal.SIGKILL)
            relay.stop()
            relay = RelayProcess(env, bench.workdir / f"6-{mode}-{kill}.relay.log")
        try:
            _wait_accepted(sandbox, expected, relay)
        except TimeoutError as stalled:
            print(f"  {stalled}", flush=True)  # reported as lost below
        _add(replay, _scrape(relay))
    finally:
        relay.stop(30)
    summary = sandbox.summary()
    accepted, resends = summary["accepted"], summary["duplicates"]
    trace = sandbox.trace()
    with (bench.workdir / f"6-{mode}.trace.json").open("w") as out:
        json.dump({"kills": kills, "trace": trace}, out)
    row = CrashRow(
        mode=mode,
        events=count,
        klaviyo_events=expected,
        accepted=accepted,
        resends=resends,
        resend_share=round(resends / expected, 4),
        lost=max(0, expected - accepted),
        kills=len(KILL_AT),
        replay_skipped=round(replay[REPLAY_METRICS[0]]),
        replay_resent=round(replay[REPLAY_METRICS[1]]),
        seconds=round(summary["last"] - began, 1),
        causes=resend_causes(trace, kills),
        resent_requests=sum(1 for e in trace if e[1] == "duplicate" and not e[5]),
        resent_jobs=len({e[5] for e in trace if e[1] == "duplicate" and e[5]}),
        commits=round(replay[COMMIT_METRICS[1]]),
        commit_ms=round(1000 * replay[COMMIT_METRICS[0]] / max(1.0, replay[COMMIT_METRICS[1]]), 1),
    )
    print(f"  {row}", flush=True)
    return row


def markdown(rows: list[CrashRow], limits: str) -> list[str]:
    lines = [
        f"### 6. kill -9 ×{len(KILL_AT)} during a run ({limits}, 3 % 5xx, 2 % 429)",
        "",
        "| Mode | Events | Klaviyo events | Resends | Resend share | Lost "
        "| Replay skipped | Replay resent | Seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.mode} | {r.events:,} | {r.klaviyo_events:,} | {r.resends:,} "
        f"| {r.resend_share * 100:.1f} % | {r.lost} | {r.replay_skipped:,} "
        f"| {r.replay_resent:,} | {r.seconds:.0f} |"
        for r in rows
    ]
    lines += ["", "Resends by cause (see bench/crash.py):", ""]
    lines += [
        f"- {r.mode}: "
        + ("; ".join(f"{name}: {n:,}" for name, n in r.causes.items()) or "none")
        + f"; quota taken: {r.resent_requests:,} Create Event requests, {r.resent_jobs} bulk"
        f" requests ({r.commits:,} commits, {r.commit_ms:.1f} ms each on average)"
        for r in rows
    ]
    return lines


def resend_causes(trace: list[list[Any]], kills: list[float]) -> dict[str, int]:
    """Why each resend in ``trace`` (the sandbox's ``[clock, fate, endpoint, metric,
    unique_id, job]``, see ``bench.sandbox_proc``) happened, given the ``kills`` (clock, ascending).

    A resend is put down to the first kill after its event's first acceptance: an acceptance
    within :data:`IN_FLIGHT_SECONDS` after a kill was a request of the killed relay still in
    flight (no relay starts that fast); else the event was cut part-way when one of its Klaviyo
    events was first accepted after that kill, and finished before it otherwise."""
    first: dict[tuple[str, str], tuple[float, str]] = {}  # (metric, unique_id) → when, endpoint
    done: dict[str, float] = {}  # domain event → when its last Klaviyo event was first accepted
    for clock, fate, endpoint, metric, unique_id, _job in trace:
        if fate == "recorded":
            first[(metric, unique_id)] = (clock, endpoint)
            event = unique_id.split(":", 1)[0]  # Ordered Product adds ":<n>"
            done[event] = max(done.get(event, clock), clock)
    causes: Counter[str] = Counter()
    for _clock, fate, _endpoint, metric, unique_id, _job in trace:
        if fate != "duplicate":
            continue
        accepted, endpoint = first[(metric, unique_id)]
        at = bisect.bisect_left(kills, accepted)
        if at and accepted - kills[at - 1] < IN_FLIGHT_SECONDS:
            causes["in flight at the kill"] += 1
        elif at == len(kills):
            causes["no kill after it (a retry)"] += 1
        elif done[unique_id.split(":", 1)[0]] > kills[at]:
            causes["event cut part-way by the kill"] += 1
        else:
            lag = kills[at] - done[unique_id.split(":", 1)[0]]
            causes[f"finished {_lag_bucket(lag)} before the kill ({endpoint})"] += 1
    return dict(causes.most_common())


def _lag_bucket(seconds: float) -> str:
    for bound, name in ((0.1, "< 0.1 s"), (0.5, "0.1-0.5 s"), (2.0, "0.5-2 s")):
        if seconds < bound:
            return name
    return ">= 2 s"


def _wait_accepted(sandbox: InstrumentedSandbox, target: float, relay: RelayProcess) -> None:
    """Until the sandbox accepted ``target`` distinct events; TimeoutError when it stalls."""
    seen, since = -1, time.monotonic()
    while (accepted := sandbox.progress()["accepted"]) < target:
        if relay.process.poll() is not None:
            raise RuntimeError(f"{relay.log_path.name}: exited ({relay.process.returncode})")
        if accepted != seen:
            seen, since = accepted, time.monotonic()
        elif time.monotonic() - since > STALL_SECONDS:
            raise TimeoutError(f"stalled at {accepted} of {target:.0f} accepted events")
        time.sleep(0.1)


def _wait_assigned(relay: RelayProcess) -> None:
    wait_until(lambda: relay.logged("partitions assigned"), 120, f"{relay.log_path.name} assigned")


def _scrape(relay: RelayProcess) -> dict[str, float]:
    """The relay's replay counters, summed over their labels."""
    wait_until(lambda: relay.metrics_port() is not None, 60, "the relay's metrics port")
    url = f"http://127.0.0.1:{relay.metrics_port()}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    totals = dict.fromkeys(REPLAY_METRICS + COMMIT_METRICS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def _add(into: dict[str, float], more: dict[str, float]) -> None:
    for name, value in more.items():
        into[name] += value


def _post_json(url: str, body: Any) -> None:
    request = urllib.request.Request(
        url,
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60):
        pass
