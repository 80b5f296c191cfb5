"""Scenario 8, OAuth soak: a relay on short-lived OAuth tokens for a long time, restarted once.

``python -m bench --only 8 --oauth-soak SECONDS [--oauth-token-lifetime S]``: the sandbox
(scenario 2's latency, no quota) serves the token endpoint with access tokens that expire every
``--oauth-token-lifetime`` seconds (20 by default) and a new refresh token at every refresh (the
old one refused at once, ``invalid_grant``). One relay in ``SEND_MODE=auto`` with the OAuth
settings and a file token store; no private key works. A steady producer sends
:data:`RATE` events/s over all topics. Half-way the relay gets SIGTERM and is started again with
the same environment, so with the *original* refresh token, long rotated away: it must take the
newest from its token store, or it halts on ``invalid_grant``.

Sampled every :data:`SAMPLE_S` seconds (and the results files rewritten each time, so a run
stopped early still has its numbers): the relay's ``klaviyo_relay_oauth_refreshes_total`` by
result (summed over both relay processes), the sandbox's grants, rotations, ``invalid_grant``
answers and 401s to expired tokens, the relay's 4xx answers, the ``klaviyo_relay_halted``
gauge, the Klaviyo events produced (acknowledged by the broker) against the distinct events the
sandbox accepted, the resends its deduplication dropped, and the relay's RSS. After production
stops the relay drains (bounded, as in scenario 7): lost = produced - accepted.

Target: nothing lost, never halted, no ``invalid_grant``, refreshes counted.

Not in the default ``--only``; the results go to ``<out>/oauth-soak.md`` and ``.json``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.accounts import _drain as drain
from bench.report import Section
from bench.scenarios import DLQ_TOPIC, Bench, Child, InstrumentedSandbox
from bench.steady import SteadyProducer, table, unavailable
from dev import harness
from dev.harness import RELAY_COMMAND, UNLIMITED_RATE_LIMITS, rate_limits_json, wait_until

SCENARIO = "8"
MODE = "auto"
RATE = 20.0  # domain events/s over all topics
LIFETIME_S = 20  # the sandbox's access-token lifetime
SAMPLE_S = 30.0
CLIENT_ID, CLIENT_SECRET = "bench-app", "cs_bench_secret"
FIRST_REFRESH_TOKEN = "rt_bench_first"
REFRESHES = "klaviyo_relay_oauth_refreshes_total"
HALTED = "klaviyo_relay_halted"
REQUESTS = "klaviyo_relay_klaviyo_requests_total"


@dataclass
class Sample:
    t_s: float  # since production started
    relay: int  # 1 before the restart, 2 after
    refreshes: dict[str, float]  # the relay's counter by result, both processes summed
    granted: int  # the sandbox's token endpoint
    rotated: int
    invalid_grant: int
    expired_401: int  # the sandbox's 401s to expired access tokens
    relay_4xx: float  # the relay's Klaviyo answers of class 4xx, both processes summed
    halted: float  # the gauge, highest over its accounts
    produced: int  # Klaviyo events of the events the broker acknowledged
    accepted: int  # distinct events the sandbox accepted
    duplicates: int  # resends its deduplication dropped
    rss_mb: float


@dataclass
class SoakResult:
    seconds: float
    lifetime_s: int
    rate: float = RATE
    available: bool = True
    samples: list[Sample] = field(default_factory=list)
    restart_at_s: float | None = None
    first_exit: int | None = None  # the first relay's exit code after SIGTERM
    drained: bool = False
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int | None:
        if not self.drained or not self.samples:
            return None
        last = self.samples[-1]
        return last.produced - last.accepted

    @property
    def met(self) -> bool:
        last = self.samples[-1] if self.samples else None
        return (
            last is not None
            and self.lost == 0
            and max(s.halted for s in self.samples) == 0
            and last.invalid_grant == 0
            and last.refreshes.get("ok", 0) >= 1
        )


def run(bench: Bench, only: set[str], seconds: float, lifetime: int, out: Path) -> list[Section]:
    if SCENARIO not in only:
        return []
    result = SoakResult(seconds, lifetime)
    why = unavailable(MODE) or oauth_unavailable()
    if why is not None:
        result.available = False
        result.notes.append(f"not available: {why}")
    else:
        more = [
            f"--oauth-client={CLIENT_ID}:{CLIENT_SECRET}",
            f"--oauth-refresh-token={FIRST_REFRESH_TOKEN}",
            f"--oauth-token-lifetime={lifetime}",
            "--oauth-rotate",
        ]
        log = bench.workdir / "sandbox-8.log"
        sandbox = InstrumentedSandbox(
            limits=None, latency_ms=bench.config.latency_ms, log=log, more=more
        )
        try:
            print(f"[{time.strftime('%H:%M:%S')}] 8: OAuth soak, {seconds:.0f} s", flush=True)
            soak(bench, sandbox, result, out)
        finally:
            sandbox.stop(30)
    write(result, out)
    return [Section("oauth_soak", markdown(result), [data(result)])]


def oauth_unavailable() -> str | None:
    from consumer.settings import Settings  # noqa: PLC0415  (only to ask what it knows)

    if "klaviyo_oauth_token_store" in Settings.model_fields:
        return None
    return "KLAVIYO_OAUTH_TOKEN_STORE is not known to this relay"


def soak(bench: Bench, sandbox: InstrumentedSandbox, result: SoakResult, out: Path) -> None:
    sandbox.reset()  # a fresh token endpoint: only the first refresh token works
    group = bench.new_group("oauth-soak", bench.end_offsets())
    env = harness.relay_env(
        bench.bootstrap,
        sandbox.base_url,
        group=group,
        dlq_topic=DLQ_TOPIC,
        api_key="",
        SEND_MODE=MODE,
        RATE_LIMITS=rate_limits_json(UNLIMITED_RATE_LIMITS),
        KLAVIYO_OAUTH_CLIENT_ID=CLIENT_ID,
        KLAVIYO_OAUTH_CLIENT_SECRET=CLIENT_SECRET,
        KLAVIYO_OAUTH_REFRESH_TOKEN=FIRST_REFRESH_TOKEN,
        KLAVIYO_OAUTH_TOKEN_URL=f"{sandbox.base_url}/oauth/token",
        KLAVIYO_OAUTH_TOKEN_STORE=str(bench.workdir / "oauth-refresh-token"),
    )
    relays = [_start(bench, env, 1)]
    before: dict[str, float] = {}  # the first relay's last counters, once it stopped
    production = SteadyProducer(bench.gen, bench.bootstrap, RATE)
    began = time.monotonic()
    every = min(SAMPLE_S, result.seconds / 4)  # a short run (the test) still has a few
    next_sample = began + every

    def sample() -> None:
        relay = relays[-1]
        now = _scrape(relay)
        result.samples.append(
            _sample(
                time.monotonic() - began,
                len(relays),
                before=before,
                now=now,
                relay=relay,
                sandbox=sandbox,
                production=production,
            )
        )
        write(result, out)
        print(f"  {result.samples[-1]}", flush=True)

    try:
        while (elapsed := time.monotonic() - began) < result.seconds:
            if relays[-1].process.poll() is not None:
                raise RuntimeError(f"{relays[-1].log_path.name}: exited\n{relays[-1].tail()}")
            if len(relays) == 1 and elapsed >= result.seconds / 2:
                sample()
                before = _scrape(relays[0])
                result.restart_at_s = round(elapsed, 1)
                relays[0].sampler.finish()
                result.first_exit = relays[0].stop(60)  # SIGTERM, then SIGKILL after 60 s
                relays.append(_start(bench, env, 2))
            if time.monotonic() >= next_sample:
                sample()
                next_sample += every
            time.sleep(1.0)
    finally:
        production.stop()
    try:
        # Scenario 7's drain, with one account: bounded by its stall limit.
        result.drained = drain({"oauth": sandbox}, {"oauth": production.klaviyo_events}, relays[-1])
        if not result.drained:
            result.notes.append("not drained within the stall limit: no loss figure")
        sample()
    finally:
        usage = relays[-1].finish()
    result.cpu_s, result.peak_rss_mb = usage.cpu_seconds, usage.peak_rss_mb
    if result.first_exit not in (None, 0):
        result.notes.append(f"the first relay exited {result.first_exit} on SIGTERM")


def _start(bench: Bench, env: dict[str, str], n: int) -> Child:
    child = Child(RELAY_COMMAND, env, bench.workdir / f"8-relay-{n}.relay.log")
    wait_until(lambda: child.logged("partitions assigned"), 120, f"relay {n}'s partitions")
    return child


def _scrape(relay: Child) -> dict[str, float]:
    """The relay's refreshes by result (``refresh:<result>``), 4xx answers and halted gauge."""
    port = next(
        (
            int(line["metrics_port"])
            for line in relay.log_lines()
            if line.get("message") == "relay started"
        ),
        None,
    )
    if port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == REFRESHES:
                key = f"refresh:{s.labels['result']}"
                found[key] = found.get(key, 0.0) + s.value
            elif s.name == REQUESTS and s.labels.get("status_class") == "4xx":
                found["4xx"] = found.get("4xx", 0.0) + s.value
            elif s.name == HALTED:
                found["halted"] = max(found.get("halted", 0.0), s.value)
    return found


def _sample(
    t: float,
    relay_n: int,
    *,
    before: dict[str, float],
    now: dict[str, float],
    relay: Child,
    sandbox: InstrumentedSandbox,
    production: SteadyProducer,
) -> Sample:
    with urllib.request.urlopen(sandbox.base_url + "/_sandbox/oauth", timeout=30) as response:
        counts = json.loads(response.read())["counts"]
    summary = sandbox.summary()
    refreshes = {
        key.split(":", 1)[1]: before.get(key, 0.0) + now.get(key, 0.0)
        for key in sorted(set(before) | set(now))
        if key.startswith("refresh:")
    }
    series = relay.sampler.series
    return Sample(
        t_s=round(t, 1),
        relay=relay_n,
        refreshes=refreshes,
        granted=counts["granted"],
        rotated=counts["rotated"],
        invalid_grant=counts["invalid_grant"],
        expired_401=counts["expired"],
        relay_4xx=before.get("4xx", 0.0) + now.get("4xx", 0.0),
        halted=now.get("halted", 0.0),
        produced=production.klaviyo_events,
        accepted=summary["accepted"],
        duplicates=summary["duplicates"],
        rss_mb=series[-1][1] if series else 0.0,
    )


COLUMNS = (
    "t (s)",
    "Relay",
    "Refreshes ok",
    "Other refresh results",
    "Grants",
    "Rotations",
    "invalid_grant",
    "401s (expired)",
    "Relay 4xx",
    "Halted",
    "Produced",
    "Accepted",
    "In flight",
    "Dedup dropped",
    "RSS MB",
)


def markdown(r: SoakResult) -> list[str]:
    title = (
        f"## 8. OAuth soak ({r.seconds:.0f} s at {r.rate:.0f} events/s, access tokens expiring"
        f" every {r.lifetime_s} s, refresh token rotated at every refresh, restart half-way)"
    )
    if not r.available:
        return [title, "", *[f"- {note}" for note in r.notes]]
    rows = [
        [
            f"{s.t_s:.0f}",
            str(s.relay),
            f"{s.refreshes.get('ok', 0):.0f}",
            ", ".join(f"{k} {v:.0f}" for k, v in s.refreshes.items() if k != "ok") or "–",
            f"{s.granted:,}",
            f"{s.rotated:,}",
            str(s.invalid_grant),
            f"{s.expired_401:,}",
            f"{s.relay_4xx:.0f}",
            f"{s.halted:.0f}",
            f"{s.produced:,}",
            f"{s.accepted:,}",
            f"{s.produced - s.accepted:,}",
            f"{s.duplicates:,}",
            f"{s.rss_mb:.0f}",
        ]
        for s in r.samples
    ]
    lines = table(title, COLUMNS, rows)
    lost = "–" if r.lost is None else f"{r.lost:,}"
    halted = max((s.halted for s in r.samples), default=0.0)
    lines += [
        "",
        f"- 8 / relay {MODE}: restarted (SIGTERM) at {r.restart_at_s} s, first relay exited"
        f" {r.first_exit}; lost {lost}; halted {'yes' if halted else 'never'}; target"
        f" {'met' if r.met else 'NOT met'}; CPU {r.cpu_s:.1f} s, peak RSS"
        f" {r.peak_rss_mb:.0f} MB (last relay)" + "".join(f"; {n}" for n in r.notes),
    ]
    return lines


def data(r: SoakResult) -> dict[str, Any]:
    return {**asdict(r), "lost": r.lost, "met": r.met}


def write(result: SoakResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "oauth-soak.md").write_text(
        "\n".join(["# Benchmark: OAuth soak", "", *markdown(result)]) + "\n"
    )
    (out / "oauth-soak.json").write_text(json.dumps(data(result), indent=1) + "\n")
