"""A running relay, observed from outside: one integration run on the real broker and the
sandbox with a realistic sample of every contract topic (planted bad records included), a
Klaviyo 400 and a burst of 503/429 answers. Then

- its ``/metrics`` (scraped over HTTP) exposes every promised metric with its Prometheus type,
  with the series the run must have produced (dead letters by stage and reason, requests by
  status class, retries, 429s, per-partition lag and committed offset, ...), and its probes
  answer 200; every series the chart's dashboards and alert rules query is among them;
- after SIGTERM, every line it logged (at DEBUG, as JSON) parses, and none holds an email,
  a phone number (as produced or in E.164), a password-reset link or the Klaviyo API key.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import phonenumbers
import pytest

from consumer import __version__
from consumer.topics import CONTRACT_TOPICS
from dev.demo import EXPECTED_REASONS, publish_sample
from dev.kafka_broker import KafkaBroker
from dev.sample_events import Planted, SampleRecord, sample
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.metrics import PROMISED, metric_families
from tests.fixtures.relay_harness import (
    RelayProcess,
    metrics_port,
    readiness,
    relay_env,
    sandbox_stats,
    set_faults,
    wait_committed_to_end,
    wait_for,
)

pytestmark = pytest.mark.kafka

# A key no other test uses, so finding it (or its secret part) in a log line is unambiguous.
API_KEY = f"pk_obs_{uuid.uuid4().hex}"
# Passes the handler (it does not validate emails); the sandbox answers 400 "Invalid email".
MALFORMED_EMAIL = "not an email"
STAGE = {Planted.UNDECODABLE: "decode", Planted.LIMIT_EXCEEDED: "handle", Planted.EXPIRED: "handle"}
# The burst: every request refused (mostly 503, some 429) until this many were injected.
BURST = {"503": 0.75, "429": 0.25}
BURST_503, BURST_429 = 12, 3
CHART = Path(__file__).resolve().parents[2] / "helm" / "klaviyo-relay"
_EMAIL_FIELDS = {"email", "old_email", "new_email"}
_PHONE_FIELDS = {"phone", "phone_number"}


def _fields(value: Any, names: set[str]) -> Iterator[str]:
    """Every non-empty string held, at any depth, under a key in ``names``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in names and isinstance(inner, str) and inner:
                yield inner
            else:
                yield from _fields(inner, names)
    elif isinstance(value, list):
        for inner in value:
            yield from _fields(inner, names)


def _phone_forms(raw: str) -> set[str]:
    """The number as produced, in E.164 and as bare national digits (as the relay's handlers
    read it: US as the default region). A "number" too short to identify anyone (the planted
    unparseable one) is no leak and would match any digits."""
    try:
        parsed = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        return set()
    if not phonenumbers.is_possible_number(parsed):
        return set()
    return {
        raw,
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
        phonenumbers.national_significant_number(parsed),
    }


def sensitive_strings(records: list[SampleRecord]) -> dict[str, str]:
    """Each secret or personal value the produced events hold → what it is."""
    found = {API_KEY: "API key", API_KEY.removeprefix("pk_"): "API key (secret part)"}
    for record in records:
        for email in _fields(record.event, _EMAIL_FIELDS):
            found[email] = "email"
        for phone in _fields(record.event, _PHONE_FIELDS):
            found.update(dict.fromkeys(_phone_forms(phone), "phone"))
        for link in _fields(record.event, {"reset_url"}):
            found[link] = "reset link"
            found[link.rstrip("/").rsplit("/", 1)[1]] = "reset token"
    return found


def with_klaviyo_400(records: list[SampleRecord]) -> tuple[list[SampleRecord], SampleRecord]:
    """The sample plus a copy of one good account creation whose email Klaviyo refuses."""
    good = next(r for r in records if r.topic == "shop.account.created" and r.planted is None)
    assert good.event is not None
    event = copy.deepcopy(good.event)
    event["event_id"] = str(uuid.uuid4())
    event["customer"]["email"] = MALFORMED_EMAIL
    refused = dataclasses.replace(good, event=event)
    return [*records, refused], refused


def samples_of(families: dict[str, Any], name: str, suffix: str = "") -> list[Any]:
    family = families[name]
    wanted = family.name + suffix
    return [s for s in family.samples if s.name == wanted]


def values_by(
    families: dict[str, Any], name: str, *labels: str, suffix: str = ""
) -> dict[tuple[str, ...], float]:
    """Sample values of a family keyed by the given labels (summed over the others)."""
    out: dict[tuple[str, ...], float] = {}
    for s in samples_of(families, name, suffix):
        key = tuple(s.labels.get(label, "") for label in labels)
        out[key] = out.get(key, 0.0) + s.value
    return out


def _gauges_of_partitions(text: str, ends: dict[tuple[str, int], int]) -> bool:
    """librdkafka's statistics have caught up: each partition with records shows its end
    offset committed and no lag."""
    families = metric_families(text)
    committed = values_by(families, "klaviyo_relay_committed_offset", "topic", "partition")
    lag = values_by(families, "klaviyo_relay_consumer_lag_messages", "topic", "partition")
    return all(
        committed.get((topic, str(p))) == end and lag.get((topic, str(p))) == 0
        for (topic, p), end in ends.items()
        if end > 0
    )


async def test_running_relay_exposes_every_metric_and_logs_no_personal_data(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    # This run's topics, one per contract topic (two partitions each), routed to its handler.
    topics = {topic_factory(t.replace(".", "-"), partitions=2): t for t in CONTRACT_TOPICS}
    ours = {contract: topic for topic, contract in topics.items()}
    dlq = topic_factory("dlq")
    group = f"relay-obs-{uuid.uuid4().hex[:8]}"
    records, refused = with_klaviyo_400(sample(datetime.now(UTC)))
    produced = [dataclasses.replace(r, topic=ours[r.topic]) for r in records]
    secrets = sensitive_strings(records)
    secrets[MALFORMED_EMAIL] = "email (malformed)"

    log_path = tmp_path / "relay.log"
    async with running_sandbox(SandboxOptions(api_keys=(API_KEY,), rate_limits=None)) as sandbox:
        env = relay_env(
            bootstrap,
            sandbox.base_url,
            topics,
            group,
            dlq,
            KLAVIYO_API_KEY=API_KEY,
            LOG_LEVEL="DEBUG",
            LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
            # Statistics every second (not the relay's 5 s): the lag gauges catch up quickly.
            # Only properties both clients know: the relay hands these to its dead-letter
            # producer too, which would warn about consumer-only ones.
            KAFKA_EXTRA_CONFIG=json.dumps({"statistics.interval.ms": "1000"}),
            # The sample's producer may take seconds to deliver (its idempotence PID): records
            # that old would be stale, and every request series, Create Event's too, must show.
            AUTO_REALTIME_MAX_WAIT_SECONDS="3600",
        )
        relay = RelayProcess(env, log_path)
        try:
            await wait_for(lambda: metrics_port(relay) is not None, what="relay started")
            port = metrics_port(relay)
            assert port is not None

            # The sample arrives in the middle of an outage: retries, 503s and 429s get logged.
            await set_faults(sandbox.base_url, {"error_rates": BURST})
            await asyncio.to_thread(publish_sample, bootstrap, produced)

            async def burst_seen() -> bool:
                injected = (await sandbox_stats(sandbox.base_url))["injected"]
                return bool(
                    injected.get("503", 0) >= BURST_503 and injected.get("429", 0) >= BURST_429
                )

            await wait_for(burst_seen, what="the relay meeting the 503/429 burst")
            await set_faults(sandbox.base_url, {"error_rates": {}})

            ends = await wait_committed_to_end(bootstrap, group, topics, len(produced))

            async def gauges_current() -> bool:
                return _gauges_of_partitions((await relay.get("/metrics"))[1], ends)

            await wait_for(gauges_current, what="lag and committed-offset gauges up to date")
            status, text = await relay.get("/metrics")
            assert status == 200
            assert (await relay.get("/healthz"))[0] == 200
            assert (await readiness(port))["status"] == 200
            dead_letters = check_metrics(text, records, refused, ours, ends)

            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()

    check_log(log_path.read_text(errors="replace"), secrets, dead_letters)


_SERIES_SUFFIXES = {
    "counter": ("",),  # metric_families keys counters by their "_total" name already
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
}


def named_by_dashboards_and_rules() -> set[str]:
    """Every relay series name a dashboard panel or an alert rule queries."""
    sources = [*sorted((CHART / "dashboards").glob("*.json"))]
    sources.append(CHART / "templates" / "prometheusrule.yaml")
    return {n for path in sources for n in re.findall(r"\bklaviyo_relay_\w+", path.read_text())}


def check_metrics(
    text: str,
    records: list[SampleRecord],
    refused: SampleRecord,
    ours: dict[str, str],
    ends: dict[tuple[str, int], int],
) -> int:
    """Assert the scrape shows what the run did; returns how many records were dead-lettered."""
    families = metric_families(text)
    missing = sorted(set(PROMISED) - set(families))
    assert not missing, f"not exposed: {missing}"
    wrong = {n: families[n].type for n, t in PROMISED.items() if families[n].type != t}
    assert not wrong, f"wrong types: {wrong}"

    # What the dashboards and alerts query, this running relay exports: as a series, or (for a
    # labelled counter of incidents this run did not have: edge answers, duplicates, failed
    # dead-letter writes) as a declared family with that series name.
    exported = {sample.name for family in families.values() for sample in family.samples}
    declared = {
        f"{name}{suffix}"
        for name, family in families.items()
        for suffix in _SERIES_SUFFIXES.get(family.type, ("",))
    }
    unexported = named_by_dashboards_and_rules() - exported - declared
    assert not unexported, f"queried but not exported: {sorted(unexported)}"

    build = samples_of(families, "klaviyo_relay_build_info")
    assert [s.labels.get("version") for s in build] == [__version__]

    published: dict[str, int] = {}
    for record in records:
        published[ours[record.topic]] = published.get(ours[record.topic], 0) + 1
    consumed = values_by(families, "klaviyo_relay_events_consumed_total", "topic", suffix="_total")
    assert consumed == {(topic,): float(n) for topic, n in published.items()}

    delivered = values_by(
        families, "klaviyo_relay_events_delivered_total", "topic", suffix="_total"
    )
    assert {topic for (topic,), n in delivered.items() if n > 0} == set(ours.values())

    # Each planted record (and the refused email) dead-lettered once, at its stage, for its reason.
    dead = values_by(
        families, "klaviyo_relay_events_dead_lettered_total", "topic", "stage", "reason",
        suffix="_total",
    )  # fmt: skip
    expected_dead = [
        (ours[r.topic], STAGE[r.planted], EXPECTED_REASONS[r.planted])
        for r in records
        if r.planted is not None and r.planted in STAGE
    ]
    expected_dead.append((ours[refused.topic], "send", frozenset({"klaviyo_rejected"})))
    for topic, stage, reasons in expected_dead:
        hits = {k: v for k, v in dead.items() if k[:2] == (topic, stage) and k[2] in reasons}
        assert sum(hits.values()) == 1, f"{topic}/{stage}: {dead}"
    assert sum(dead.values()) == len(expected_dead), dead

    warnings = values_by(
        families, "klaviyo_relay_plan_warnings_total", "topic", "code", suffix="_total"
    )
    phone_topic = next(ours[r.topic] for r in records if r.planted is Planted.PHONE_UNPARSEABLE)
    assert warnings.get((phone_topic, "phone_unparseable"), 0) >= 1, warnings

    requests = values_by(
        families, "klaviyo_relay_klaviyo_requests_total", "endpoint", "status_class",
        suffix="_total",
    )  # fmt: skip
    for status_class in ("2xx", "4xx", "5xx"):
        assert requests.get(("create_event", status_class), 0) >= 1, requests
    retries = values_by(
        families, "klaviyo_relay_klaviyo_retries_total", "endpoint", suffix="_total"
    )
    assert retries.get(("create_event",), 0) >= 1, retries
    throttled = values_by(
        families, "klaviyo_relay_klaviyo_throttled_total", "endpoint", suffix="_total"
    )
    assert sum(throttled.values()) >= 1, throttled

    for histogram in (
        "klaviyo_relay_klaviyo_request_duration_seconds",
        "klaviyo_relay_rate_limit_wait_seconds",
    ):
        counts = values_by(families, histogram, "endpoint", suffix="_count")
        assert counts.get(("create_event",), 0) >= 1, f"{histogram}: {counts}"
        assert samples_of(families, histogram, "_bucket"), histogram
    assert values_by(families, "klaviyo_relay_rate_limit_remaining", "endpoint"), "no endpoint"
    e2e = values_by(families, "klaviyo_relay_end_to_end_delay_seconds", "topic", suffix="_count")
    assert {topic for (topic,), n in e2e.items() if n > 0} == set(ours.values())
    commits = samples_of(families, "klaviyo_relay_commit_duration_seconds", "_count")
    assert commits and commits[0].value >= 1

    # Everything finished: nothing in flight; ready, not halted, as /readyz says.
    def gauge(name: str) -> float:
        return float(samples_of(families, name)[0].value)

    assert gauge("klaviyo_relay_events_in_flight") == 0
    assert gauge("klaviyo_relay_partitions_paused") >= 0
    assert gauge("klaviyo_relay_ready") == 1
    assert gauge("klaviyo_relay_halted") == 0
    committed = values_by(families, "klaviyo_relay_committed_offset", "topic", "partition")
    for (topic, partition), end in ends.items():
        if end > 0:
            assert committed[(topic, str(partition))] == end
    return len(expected_dead)


def check_log(log: str, secrets: dict[str, str], dead_letters: int) -> None:
    lines = log.splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line[:200]!r}") from None
        assert isinstance(entry, dict) and "message" in entry, f"line {number}: {line[:200]!r}"
        entries.append(entry)
    messages = [str(e["message"]) for e in entries]
    # Not vacuous: the run's state changes, dead letters and retries were all logged.
    assert "relay started" in messages
    assert messages.count("event dead-lettered") == dead_letters
    assert "klaviyo_retry" in messages
    assert "relay stopped" in messages

    leaks = []
    for number, (line, entry) in enumerate(zip(lines, entries, strict=True), 1):
        # The line as written and as decoded (escapes resolved), case-insensitively.
        haystack = (line + "\n" + json.dumps(entry, ensure_ascii=False)).lower()
        for value, kind in secrets.items():
            if value.lower() in haystack:
                leaks.append(f"line {number} ({entry['message']!r}) holds a {kind}: {value!r}")
    assert not leaks, "personal data or secrets in the log:\n" + "\n".join(leaks)
