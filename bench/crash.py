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

Not in the default ``--only``: run it with ``python -m bench --only 6``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from dataclasses import asdict, dataclass
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
REPLAY_METRICS = ("klaviyo_relay_replay_skipped_total", "klaviyo_relay_replay_resent_total")


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


def run(bench: Bench, only: set[str]) -> list[Section]:
    if SCENARIO not in only:
        return []
    config = bench.config
    sandbox = InstrumentedSandbox(
        limits=config.limits, latency_ms=config.latency_ms, log=bench.workdir / "sandbox-6.log"
    )
    rows = []
    try:
        for mode in MODES:
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
    replay = dict.fromkeys(REPLAY_METRICS, 0.0)
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
    return lines


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
    totals = dict.fromkeys(REPLAY_METRICS, 0.0)
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
