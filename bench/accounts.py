"""Scenario 7, two accounts: one relay serving two Klaviyo accounts, each with its own quota.

Two sandbox processes with the published limits (the quick ones in ``--quick``) and scenario 2's
latency, each one account: ``north`` and ``south`` (``KLAVIYO_ACCOUNT_<NAME>_BASE_URL`` points at
its sandbox). One relay, ``KLAVIYO_ACCOUNTS`` naming both. Events are produced steadily at 110 %
of *each* account's Create Event steady limit, 220 % of one account's: a relay that shared one
quota between the two could fill at most half of each. They are routed half by header, half by
topic:

- every other event carries the header ``klaviyo-account: south``;
- the others carry none, and ``KLAVIYO_ACCOUNT_TOPICS`` maps every topic to ``north``;
- ``KLAVIYO_DEFAULT_ACCOUNT`` is ``south``, so an event the topic map failed to route would land
  at south and one whose header was ignored at north: either mistake shows as one account above
  its expected count and the other below.

Measured per account at its own sandbox: for every full steady window of Create Event while
production ran (window index = clock // window length, as Klaviyo counts), requests admitted over
the limit, and 429s. After production stops the relay drains (bounded): distinct accepted events
against the Klaviyo events of the acknowledged produces routed to that account (lost, or
misrouted), and resends the sandbox deduplicated.

Target: each account's full windows ≥ 95 % of its steady limit, no 429, nothing lost.

Not in the default ``--only``: ``python -m bench --only 7``. A relay that does not know
``KLAVIYO_ACCOUNTS`` (before issue 16) is reported as not available.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen import LoadGenerator
from bench.report import Section
from bench.scenarios import DLQ_TOPIC, OVERSUBSCRIBE, Bench, Child, Config, InstrumentedSandbox
from bench.steady import SteadyProducer, count, table, unavailable
from consumer.settings import Settings
from dev import harness
from dev.harness import RELAY_COMMAND, rate_limits_json, wait_until

SCENARIO = "7"
MODES = "auto"
HEADER = "klaviyo-account"
TOPIC_ACCOUNT = "north"  # every topic's account in KLAVIYO_ACCOUNT_TOPICS
HEADER_ACCOUNT = "south"  # named by the header of every other event; also the default
ACCOUNTS = (TOPIC_ACCOUNT, HEADER_ACCOUNT)
ENDPOINT = "create_event"
TARGET = 0.95
STALL_S = 60.0


def accounts_unavailable() -> str | None:
    """Why this relay cannot serve several accounts (None when it can)."""
    if "klaviyo_accounts" in Settings.model_fields:
        return None
    return "KLAVIYO_ACCOUNTS is not known to this relay (one account per relay)"


@dataclass
class AccountRun:
    account: str
    routed_by: str
    limit: int = 0  # Create Event requests per steady window
    window_s: float = 0.0
    admitted: list[int] = field(default_factory=list)  # per full window
    refused: list[int] = field(default_factory=list)  # 429s per full window
    throttled: int = 0  # every 429 of the run
    requests: int = 0  # every API request of the run
    expected: int = 0  # Klaviyo events of the acknowledged produces routed here
    accepted: int | None = None  # distinct events its sandbox accepted
    duplicates: int | None = None

    @property
    def shares(self) -> list[float]:
        return [a / self.limit for a in self.admitted] if self.limit else []


@dataclass
class AccountsResult:
    mode: str
    available: bool = True
    rate: float = 0.0  # domain events/s, both accounts together
    accounts: list[AccountRun] = field(default_factory=list)
    drained: bool = True
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lost(self, run: AccountRun) -> int | None:
        if run.accepted is None or not self.drained:
            return None
        return run.expected - run.accepted

    @property
    def met(self) -> bool:
        """Every full window of each account at the target, no 429, nothing lost."""
        return bool(self.accounts) and all(
            r.shares and min(r.shares) >= TARGET and r.throttled == 0 and self.lost(r) == 0
            for r in self.accounts
        )


class RoutedProducer(SteadyProducer):
    """:class:`SteadyProducer` whose every other event names ``south`` in the account header;
    it counts the acknowledged Klaviyo events per account they are routed to."""

    def __init__(self, gen: LoadGenerator, bootstrap: str, rate: float) -> None:
        self.by_account = dict.fromkeys(ACCOUNTS, 0)
        self._sent = 0
        super().__init__(gen, bootstrap, rate)

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        klaviyo_events: int,
        *,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        acked: Callable[[], None] | None = None,
    ) -> None:
        self._sent += 1
        by_header = self._sent % 2 == 0
        account = HEADER_ACCOUNT if by_header else TOPIC_ACCOUNT

        def count_account() -> None:
            self.by_account[account] += klaviyo_events

        super()._produce(
            topic,
            key,
            value,
            klaviyo_events,
            headers=[(HEADER, account.encode())] if by_header else None,
            acked=count_account,
        )


def run(bench: Bench, only: set[str], modes: list[str]) -> list[Section]:
    if SCENARIO not in only:
        return []
    config = bench.config
    sandboxes = {
        name: InstrumentedSandbox(
            limits=config.limits,
            latency_ms=config.latency_ms,
            log=bench.workdir / f"sandbox-7-{name}.log",
        )
        for name in ACCOUNTS
    }
    try:
        results = []
        for mode in modes:
            print(f"[{time.strftime('%H:%M:%S')}] 7: one relay {mode}, two accounts", flush=True)
            results.append(two_accounts(bench, sandboxes, mode))
    finally:
        for sandbox in sandboxes.values():
            sandbox.stop(30)
    limits = "--quick's small limits" if config.quick else "published limits"
    return [Section("accounts", markdown(results, limits), data(results))]


def two_accounts(
    bench: Bench, sandboxes: dict[str, InstrumentedSandbox], mode: str
) -> AccountsResult:
    result = AccountsResult(mode)
    why = unavailable(mode) or accounts_unavailable()
    if why is not None:
        result.available = False
        result.notes.append(f"not available: {why}")
        return result
    limits = sandboxes[TOPIC_ACCOUNT].limits
    assert limits is not None
    steady = limits[ENDPOINT].steady
    result.rate = len(ACCOUNTS) * OVERSUBSCRIBE * steady.requests / steady.seconds / bench.per_event
    for sandbox in sandboxes.values():
        sandbox.reset()
    group = bench.new_group(f"accounts-{mode}", bench.end_offsets())
    env = relay_env(bench, sandboxes, group, mode, rate_limits_json(limits))
    child = Child(RELAY_COMMAND, env, bench.workdir / f"7-relay-{mode}.relay.log")
    try:
        wait_until(lambda: child.logged("partitions assigned"), 120, "the relay's partitions")
        production = RoutedProducer(bench.gen, bench.bootstrap, result.rate)
        try:
            stopped = _produce_for_windows(sandboxes, child, steady.seconds, bench.config)
        finally:
            production.stop()
        expected = dict(production.by_account)
        result.drained = _drain(sandboxes, expected, child)
        if not result.drained:
            result.notes.append("not drained within the stall limit: no loss figure")
    finally:
        usage = child.finish()
    result.cpu_s, result.peak_rss_mb = usage.cpu_seconds, usage.peak_rss_mb
    for name, sandbox in sandboxes.items():
        routed_by = "header" if name == HEADER_ACCOUNT else "topic map"
        result.accounts.append(_summarise(name, routed_by, sandbox, expected[name], stopped))
    print(f"  {result}", flush=True)
    return result


def relay_env(
    bench: Bench,
    sandboxes: dict[str, InstrumentedSandbox],
    group: str,
    mode: str,
    limits: str,
) -> dict[str, str]:
    """One relay, two accounts: each its key and its sandbox; the limits (RATE_LIMITS) are
    each account's, inherited from the top level."""
    env = harness.relay_env(
        bench.bootstrap,
        sandboxes[TOPIC_ACCOUNT].base_url,
        group=group,
        dlq_topic=DLQ_TOPIC,
        RATE_LIMITS=limits,
        SEND_MODE=mode,
        KLAVIYO_ACCOUNTS=json.dumps(list(ACCOUNTS)),
        KLAVIYO_ACCOUNT_TOPICS=json.dumps(dict.fromkeys(bench.topics, TOPIC_ACCOUNT)),
        KLAVIYO_DEFAULT_ACCOUNT=HEADER_ACCOUNT,
        KLAVIYO_ACCOUNT_HEADER=HEADER,
    )
    del env["KLAVIYO_API_KEY"]  # no top-level account: only the two named ones
    for name, sandbox in sandboxes.items():
        prefix = f"KLAVIYO_ACCOUNT_{name.upper()}_"
        env[prefix + "API_KEY"] = "pk_sandbox"
        env[prefix + "BASE_URL"] = sandbox.base_url
    return env


def _produce_for_windows(
    sandboxes: dict[str, InstrumentedSandbox], child: Child, window_s: float, config: Config
) -> float:
    """Until ``config.quota_windows`` steady windows have passed entirely after both accounts'
    first admission; the time production stops."""
    wait_until(
        lambda: all(s.progress()["first"] > 0 for s in sandboxes.values()),
        120,
        "the first accepted event of both accounts",
    )
    first = max(s.progress()["first"] for s in sandboxes.values())
    end = (int(first // window_s) + config.quota_windows + 1) * window_s + 0.5
    while time.time() < end:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.log_path.name}: exited early\n{child.tail()}")
        time.sleep(min(1.0, max(0.0, end - time.time())))
    return time.time()


def _drain(
    sandboxes: dict[str, InstrumentedSandbox], expected: dict[str, int], child: Child
) -> bool:
    """Wait until each account's sandbox accepted its expected events; False when progress
    stalls (no account gains an event for STALL_S seconds)."""
    seen: dict[str, int] = {}
    since = time.monotonic()
    while True:
        accepted = {name: s.progress()["accepted"] for name, s in sandboxes.items()}
        if all(accepted[name] >= expected[name] for name in sandboxes):
            return True
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.log_path.name}: exited early\n{child.tail()}")
        if accepted != seen:
            seen, since = accepted, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            return False
        time.sleep(0.25)


def _summarise(
    name: str, routed_by: str, sandbox: InstrumentedSandbox, expected: int, stopped: float
) -> AccountRun:
    s = sandbox.summary()
    quota = s["quotas"][ENDPOINT]
    length, limit = quota["steady_seconds"], quota["steady_limit"]
    admitted = {int(k): v for k, v in quota["admitted"].items()}
    refused = {int(k): v for k, v in quota["refused_by_window"].items()}
    # Full windows: after the one of this account's first admission, before the one
    # production stopped in.
    windows = range(int(s["first"] // length) + 1, int(stopped // length))
    return AccountRun(
        account=name,
        routed_by=routed_by,
        limit=limit,
        window_s=length,
        admitted=[admitted.get(w, 0) for w in windows],
        refused=[refused.get(w, 0) for w in windows],
        throttled=s["throttled"],
        requests=sum(n for counts in s["requests"].values() for n in counts.values()),
        expected=expected,
        accepted=s["accepted"],
        duplicates=s["duplicates"],
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


COLUMNS = (
    "Send mode",
    "Account",
    "Routed by",
    "Full windows",
    "Least window used",
    "Mean window used",
    "429s",
    "Klaviyo events",
    "Accepted",
    "Lost",
    "Deduplicated resends",
)


def markdown(results: list[AccountsResult], limits: str) -> list[str]:
    rows: list[list[str]] = []
    for r in results:
        if not r.available:
            rows.append([f"relay {r.mode}", "north, south", "not available"])
            continue
        for a in r.accounts:
            shares = a.shares
            rows.append(
                [
                    f"relay {r.mode}",
                    a.account,
                    a.routed_by,
                    str(len(shares)),
                    _pct(min(shares, default=None)),
                    _pct(sum(shares) / len(shares) if shares else None),
                    f"{a.throttled:,}",
                    f"{a.expected:,}",
                    count(a.accepted),
                    count(r.lost(a)),
                    count(a.duplicates),
                ]
            )
    lines = table(
        f"## 7. Two accounts (one relay, {limits} per account, 110 % of each account's"
        " Create Event steady limit)",
        COLUMNS,
        rows,
    )
    lines += ["", f"Create Event steady windows per account (target ≥ {TARGET:.0%} each):", ""]
    for r in results:
        if not r.available:
            lines.append(f"- 7 / relay {r.mode}: " + "; ".join(r.notes))
            continue
        for a in r.accounts:
            windows = ", ".join(
                f"{share * 100:.1f} % ({refused} × 429)"
                for share, refused in zip(a.shares, a.refused, strict=True)
            )
            lines.append(f"- 7 / relay {r.mode} / {a.account}: {windows or '–'}")
        lines.append(
            f"- 7 / relay {r.mode}: {r.rate:.0f} events/s produced; target "
            f"{'met' if r.met else 'NOT met'}; CPU {r.cpu_s:.1f} s, peak RSS"
            f" {r.peak_rss_mb:.0f} MB" + "".join(f"; {note}" for note in r.notes)
        )
    return lines


def data(results: list[AccountsResult]) -> list[dict[str, Any]]:
    return [
        {
            **asdict(r),
            "met": r.met,
            "accounts": [{**asdict(a), "shares": a.shares, "lost": r.lost(a)} for a in r.accounts],
        }
        for r in results
    ]
