"""``make demo``: the whole relay on one machine, from an empty checkout to a summary.

1. start a local Apache Kafka broker (jars fetched once through Maven, then cached) and the
   Klaviyo sandbox (a subprocess, with Klaviyo's published rate limits);
2. create the contract's topics and the dead-letter topic, publish a realistic sample of every
   topic (``dev.sample_events``) including the planted bad records;
3. run the relay (``python -m consumer run``, a subprocess, as in production) until its consumer
   group has committed every record, showing progress;
4. scrape its metrics, stop it with SIGTERM, read what the sandbox accepted and what went to the
   dead-letter topic, print a summary, and stop everything it started.

Every run starts from scratch (fresh broker data directory, fresh sandbox), so re-running just
works. Run as ``.venv/bin/python -m dev.demo [--per-topic N] [--timeout S] [--json-summary F]
[--keep] [--sandbox-port P]``; exits 0 when every contract topic was delivered and every
planted bad record ended where it should, 1 otherwise. The relay's and the sandbox's logs and
a metrics snapshot are kept in ``.cache/demo/``. The sandbox's inbox page (its address is
printed) shows what Klaviyo received; ``--keep`` leaves the sandbox up after the summary until
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson
from confluent_kafka import KafkaError, Producer
from prometheus_client.parser import text_string_to_metric_families

from consumer.codec import Decoder, Encoder
from consumer.errors import DecodeError, Reason
from consumer.plain_json import from_plain_json, to_plain_json
from consumer.settings import load_settings
from consumer.tools.deadletters import ParkedRecord
from consumer.tools.dlq_kafka import DeadLetterTopic
from consumer.tools.masking import mask_email, mask_event
from consumer.tools.render import Original, inspect_line
from consumer.topics import CONTRACT_TOPICS
from dev import harness
from dev.harness import GroupOffsets, RelayProcess, SandboxProcess, free_port, sandbox_stats
from dev.kafka_broker import BrokerError, KafkaBroker, kafka_version
from dev.sample_events import Planted, SampleRecord, sample

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / ".cache" / "demo"
GROUP_ID = "klaviyo-relay-demo"
DLQ_TOPIC = "klaviyo-relay.dlq"
SANDBOX_KEY = "pk_sandbox_demo"
PARTITIONS = 3
# What each planted record must become: its dead-letter reason (None: delivered, not
# dead-lettered) and, for the decode failure, any of the codec's reasons.
EXPECTED_REASONS: dict[Planted, frozenset[str]] = {
    Planted.UNDECODABLE: frozenset(
        {Reason.BAD_MAGIC, Reason.UNKNOWN_SCHEMA, Reason.TRUNCATED, Reason.INVALID_BODY}
    ),
    Planted.LIMIT_EXCEEDED: frozenset({Reason.LIMIT_EXCEEDED}),
    Planted.EXPIRED: frozenset({Reason.EXPIRED}),
}


# librdkafka logs transient broker states (a coordinator still loading, ...) to stderr; the
# demo's own checks report what matters, so these go nowhere.
_KAFKA_LOG = logging.getLogger("dev.demo.kafka")
_KAFKA_LOG.addHandler(logging.NullHandler())
_KAFKA_LOG.propagate = False


class DemoError(RuntimeError):
    """The demo could not run to the end; the message says where."""


# --- what the run found (pure, tested) -------------------------------------------------------


@dataclass
class Findings:
    published: dict[str, int]  # topic → records published
    planted: list[SampleRecord]
    delivered: dict[tuple[str, str], int]  # (topic, metric) → events (relay metric)
    warnings: dict[tuple[str, str], int]  # (topic, code) → count (relay metric)
    sandbox_events: list[dict[str, Any]]
    dead_letters: list[ParkedRecord]
    commits: dict[str, list[tuple[int, int, int]]]  # topic → (partition, committed, end)
    metrics_file: Path | None = None
    relay_log: Path | None = None
    problems: list[str] = field(default_factory=list)


def relay_counters(
    metrics_text: str,
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """``(delivered by (topic, metric), plan warnings by (topic, code))`` from ``/metrics``."""
    delivered: dict[tuple[str, str], int] = {}
    warnings: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample_ in family.samples:
            if not sample_.name.endswith("_total"):
                continue
            if family.name == "klaviyo_relay_events_delivered":
                key = (sample_.labels["topic"], sample_.labels["metric"])
                delivered[key] = delivered.get(key, 0) + int(sample_.value)
            elif family.name == "klaviyo_relay_plan_warnings":
                key = (sample_.labels["topic"], sample_.labels["code"])
                warnings[key] = warnings.get(key, 0) + int(sample_.value)
    return delivered, warnings


def verify(findings: Findings) -> list[str]:
    """What did not go as the contract says; empty when the demo succeeded."""
    problems = []
    delivered_topics = {topic for topic, _ in findings.delivered}
    for topic in CONTRACT_TOPICS:
        if topic not in delivered_topics:
            problems.append(f"nothing from {topic} reached Klaviyo")
    accepted = sum(findings.delivered.values())
    if len(findings.sandbox_events) != accepted:
        problems.append(
            f"the relay counted {accepted} accepted events, the sandbox holds"
            f" {len(findings.sandbox_events)}"
        )
    letters = list(findings.dead_letters)
    for record in findings.planted:
        if record.planted is None:
            continue
        if record.planted is Planted.PHONE_UNPARSEABLE:
            problems.extend(_phone_problems(record, findings))
            continue
        wanted = EXPECTED_REASONS[record.planted]
        match = next(
            (dl for dl in letters if dl.source_topic == record.topic and dl.reason in wanted),
            None,
        )
        if match is None:
            problems.append(
                f"the planted {record.planted} record on {record.topic} was not dead-lettered"
            )
        else:
            letters.remove(match)
    for dl in letters:
        problems.append(f"unexpected dead letter from {dl.source}: {dl.reason}")
    for topic, partitions in findings.commits.items():
        behind = [p for p, committed, end in partitions if committed < end]
        if behind:
            problems.append(f"{topic}: partitions {behind} not committed to the end")
    return problems


def _phone_problems(record: SampleRecord, findings: Findings) -> list[str]:
    problems = []
    if findings.warnings.get((record.topic, "phone_unparseable"), 0) < 1:
        problems.append(f"no phone_unparseable warning counted on {record.topic}")
    profiles = [
        e.get("profile") or {}
        for e in findings.sandbox_events
        if (e.get("profile") or {}).get("external_id") == record.key
    ]
    if not profiles:
        problems.append(f"the customer with the unparseable phone ({record.key}) was not delivered")
    elif any(p.get("phone_number") for p in profiles):
        problems.append(f"{record.key} was delivered with a phone number")
    return problems


def render_summary(findings: Findings, decoder: Decoder | None, now: datetime) -> str:
    """The summary printed at the end of the demo (personal data masked)."""
    out: list[str] = []
    accepted = sum(findings.delivered.values())
    out.append("")
    out.append(
        f"Klaviyo accepted {accepted} events (the sandbox holds {len(findings.sandbox_events)}),"
        " per topic and metric:"
    )
    width = max(len(t) for t in CONTRACT_TOPICS)
    for topic in CONTRACT_TOPICS:
        metrics = sorted((m, n) for (t, m), n in findings.delivered.items() if t == topic)
        shown = ", ".join(f"{m} {n}" for m, n in metrics) or "NOTHING"
        dead = sum(dl.source_topic == topic for dl in findings.dead_letters)
        if dead:
            shown += f"; {dead} dead-lettered"
        out.append(f"  {topic:<{width}}  {findings.published.get(topic, 0):>3} published → {shown}")
    out.append("")
    out.append(f"Dead-letter topic {DLQ_TOPIC}: {len(findings.dead_letters)} record(s)")
    for dl in findings.dead_letters:
        out.append("  " + inspect_line(dl, _original(decoder, dl), now, replayed=False))
    out.append("")
    out.append("Delivered with data dropped (klaviyo_relay_plan_warnings_total):")
    if not findings.warnings:
        out.append("  none")
    for (topic, code), count in sorted(findings.warnings.items()):
        out.append(f"  {topic}: {code} × {count} (sent without the phone number)")
    for record in findings.planted:
        if record.planted is Planted.PHONE_UNPARSEABLE and record.event is not None:
            email = record.event["customer"]["email"]
            out.append(f"    e.g. {record.key} ({mask_email(email)}): phone '**' left out")
    out.append("")
    out.append(f"Commit positions of consumer group {GROUP_ID} (committed / end offset):")
    for topic in CONTRACT_TOPICS:
        parts = "  ".join(f"p{p} {c}/{e}" for p, c, e in findings.commits.get(topic, []))
        out.append(f"  {topic:<{width}}  {parts}")
    out.append("")
    out.append("Metrics:")
    if findings.metrics_file is not None:
        out.append(f"  snapshot of the relay's /metrics: {_shown_path(findings.metrics_file)}")
    out.append(
        "  a running relay serves them on http://<host>:METRICS_PORT/metrics (default 9400);"
        " /healthz and /readyz beside them"
    )
    if findings.relay_log is not None:
        out.append(f"  relay log: {_shown_path(findings.relay_log)}")
    out.append("")
    if findings.problems:
        out.append("✗ The demo found problems:")
        out.extend(f"  - {p}" for p in findings.problems)
    else:
        bad = sum(1 for r in findings.planted if r.planted in EXPECTED_REASONS)
        out.append(
            f"✓ Every contract topic was delivered; the {bad} planted bad records are on the"
            " dead-letter topic with their reasons; the unparseable phone number was dropped"
            " and counted."
        )
    return "\n".join(out)


def _original(decoder: Decoder | None, letter: ParkedRecord) -> Original:
    if decoder is None or letter.value is None:
        return Original(undecodable="not decoded")
    try:
        decoded = decoder.decode(letter.value)
    except DecodeError as exc:
        return Original(undecodable=exc.reason)
    return Original(decoded.record_name, mask_event(to_plain_json(decoded.datum)))


def _shown_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def summary_json(findings: Findings) -> dict[str, Any]:
    """A machine-readable summary (``--json-summary``), for tests and CI."""
    return {
        "ok": not findings.problems,
        "problems": findings.problems,
        "published": findings.published,
        "delivered": [
            {"topic": t, "metric": m, "count": n}
            for (t, m), n in sorted(findings.delivered.items())
        ],
        "warnings": [
            {"topic": t, "code": c, "count": n} for (t, c), n in sorted(findings.warnings.items())
        ],
        "sandbox_events": len(findings.sandbox_events),
        "dead_letters": [
            {"source": dl.source, "stage": dl.stage, "reason": dl.reason, "message": dl.message}
            for dl in findings.dead_letters
        ],
        "commits": {
            t: [{"partition": p, "committed": c, "end": e} for p, c, e in parts]
            for t, parts in findings.commits.items()
        },
    }


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """One line that says what is happening: rewritten in place on a terminal, otherwise
    printed every few seconds (CI logs)."""

    def __init__(self, stream: TextIO, interval: float = 5.0) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = interval
        self._last: float | None = None  # the first update is always shown
        self._width = 0

    def update(self, text: str) -> None:
        if self._tty:
            padding = " " * max(0, self._width - len(text))
            self._stream.write(f"\r{text}{padding}")
            self._width = len(text)
            self._stream.flush()
        elif self._last is None or time.monotonic() - self._last >= self._interval:
            self._last = time.monotonic()
            print(text, file=self._stream, flush=True)

    def done(self, text: str) -> None:
        if self._tty:
            self.update(text)
            self._stream.write("\n")
            self._stream.flush()
        else:
            print(text, file=self._stream, flush=True)


# --- the run ------------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


def relay_env(bootstrap: str, sandbox_url: str, metrics_port: int) -> dict[str, str]:
    """The relay's environment: the harness's (none of the caller's relay settings: a real
    KLAVIYO_API_KEY must never meet the demo), plus the demo's."""
    return harness.relay_env(
        bootstrap,
        sandbox_url,
        group=GROUP_ID,
        dlq_topic=DLQ_TOPIC,
        api_key=SANDBOX_KEY,
        METRICS_PORT=str(metrics_port),
        COMMIT_INTERVAL_SECONDS="0.5",
        PYTHONUNBUFFERED="1",
    )


def publish_sample(bootstrap: str, records: Sequence[SampleRecord]) -> dict[str, int]:
    """Encode and publish the sample, keyed by customer id; returns records per topic."""
    settings = load_settings(kafka_bootstrap_servers=bootstrap)
    encoder = Encoder.from_settings(settings)
    producer = Producer(
        {**settings.kafka_client_config(), "enable.idempotence": True, "linger.ms": 20},
        logger=_KAFKA_LOG,
    )
    errors: list[str] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            errors.append(error.str())

    published: dict[str, int] = {}
    for record in records:
        if record.event is not None:
            value = encoder.encode(record.record, from_plain_json(record.record, record.event))
        else:
            value = record.raw_value or b""
        producer.produce(record.topic, value, record.key.encode(), on_delivery=delivered)
        producer.poll(0)
        published[record.topic] = published.get(record.topic, 0) + 1
    left = producer.flush(60)
    if left or errors:
        raise DemoError(f"publishing the sample failed: {errors[0] if errors else 'timed out'}")
    return published


class Positions:
    """Committed offsets of the relay's group against the end offsets of the source topics."""

    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self._topics = list(topics)
        self._offsets = GroupOffsets(bootstrap, GROUP_ID, logger=_KAFKA_LOG)
        self.ends = self._offsets.ends(self._topics)

    def committed(self) -> dict[tuple[str, int], int]:
        found = self._offsets.committed(self._topics)
        return {key: max(offset, 0) for key, offset in found.items()}

    def by_topic(self) -> dict[str, list[tuple[int, int, int]]]:
        committed = self.committed()
        out: dict[str, list[tuple[int, int, int]]] = {}
        for (topic, partition), end in sorted(self.ends.items()):
            out.setdefault(topic, []).append((partition, committed.get((topic, partition), 0), end))
        return out

    def close(self) -> None:
        self._offsets.close()


async def wait_drained(
    positions: Positions,
    relay: RelayProcess,
    sandbox_url: str,
    progress: Progress,
    drain_seconds: float,
) -> None:
    """Until the group has committed every record (or the relay died, or time ran out)."""
    total = sum(positions.ends.values())
    started = time.monotonic()
    while True:
        committed = await asyncio.to_thread(positions.committed)
        done = sum(min(committed.get(k, 0), end) for k, end in positions.ends.items())
        elapsed = time.monotonic() - started
        progress.update(
            f"  relaying… {done}/{total} records committed · Klaviyo accepted"
            f" {(await sandbox_stats(sandbox_url))['events']} events · {elapsed:.0f}s"
        )
        if done >= total:
            progress.done(f"  relayed: {done}/{total} records committed in {elapsed:.1f}s")
            return
        if relay.process.poll() is not None:
            progress.done("")
            raise DemoError(f"the relay exited early with status {relay.process.returncode}")
        if elapsed > drain_seconds:
            progress.done("")
            raise DemoError(f"the relay did not drain the topics within {drain_seconds:.0f}s")
        with contextlib.suppress(TimeoutError):
            await relay.wait_exit(within=1.0)


def start_sandbox(stack: contextlib.AsyncExitStack, log: Path, port: int) -> SandboxProcess:
    """The sandbox with Klaviyo's published limits, stopped when ``stack`` closes."""
    log.unlink(missing_ok=True)  # every run starts from scratch
    sandbox = SandboxProcess(log, "--api-key", SANDBOX_KEY, port=port, rate_limits="default")
    stack.callback(sandbox.stop, 10.0)
    return sandbox


def start_relay(
    stack: contextlib.AsyncExitStack, bootstrap: str, sandbox_url: str, log: Path
) -> tuple[RelayProcess, int]:
    """The relay, stopped (SIGTERM) when ``stack`` closes; with its metrics port."""
    log.unlink(missing_ok=True)
    metrics_port = free_port()
    relay = RelayProcess(relay_env(bootstrap, sandbox_url, metrics_port), log)
    stack.push_async_callback(stop_relay, relay)
    return relay, metrics_port


async def stop_relay(relay: RelayProcess, grace_seconds: float = 60.0) -> int:
    """SIGTERM (the relay drains and commits), SIGKILL after ``grace_seconds``."""
    return await asyncio.to_thread(relay.stop, grace_seconds)


async def after_summary(
    keep: bool, inbox_url: str, positions: Positions, broker: KafkaBroker
) -> None:
    """``--keep``: stop the broker (the relay is done with it) and leave the sandbox up, so its
    inbox can be looked at, until Ctrl-C or SIGTERM."""
    if not keep:
        say(f"• What Klaviyo received was shown at {inbox_url} (DEMO_ARGS=--keep keeps it up)")
        return
    positions.close()
    await asyncio.to_thread(broker.stop)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    say(f"• Kept up (--keep): the inbox is at {inbox_url} · Ctrl-C stops the sandbox")
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run_demo(
    per_topic: int,
    drain_seconds: float,
    output: Path,
    *,
    keep: bool = False,
    sandbox_port: int = 0,
) -> Findings:
    """The demo; ``output`` (an existing folder) receives the relay log and metrics.

    ``keep``: after the summary, stop the broker but leave the sandbox up until a signal.
    """
    relay_log = output / "relay.log"
    metrics_file = output / "metrics.prom"
    progress = Progress(sys.stdout)
    async with contextlib.AsyncExitStack() as stack:
        say(f"• Starting Apache Kafka {kafka_version()} (the first run fetches it through Maven)…")
        broker = await asyncio.to_thread(KafkaBroker.start, None, 300)
        stack.callback(broker.stop)
        say(f"  {broker.banner}")
        topics = list(CONTRACT_TOPICS)
        await asyncio.to_thread(broker.create_topics, topics, PARTITIONS)
        await asyncio.to_thread(broker.create_topics, [DLQ_TOPIC], 1)
        say(
            f"• Created the {len(topics)} contract topics ({PARTITIONS} partitions each)"
            f" and {DLQ_TOPIC}"
        )

        base_url = await start_sandbox(stack, output / "sandbox.log", sandbox_port).started()
        inbox_url = f"{base_url}/"
        say(f"• Klaviyo sandbox listening on {base_url} (its inbox: {inbox_url})")

        records = sample(datetime.now(UTC), per_topic)
        published = await asyncio.to_thread(publish_sample, broker.bootstrap_servers, records)
        planted = [r for r in records if r.planted is not None]
        say(
            f"• Published {sum(published.values())} events to {len(published)} topics,"
            f" including {len(planted)} planted bad records:"
        )
        for record in planted:
            say(f"    - {record.planted}: {_planted_text(record)} on {record.topic}")

        relay, metrics_port = start_relay(stack, broker.bootstrap_servers, base_url, relay_log)
        say(f"• Relay started: pid {relay.pid}, metrics on :{metrics_port}")

        positions = Positions(broker.bootstrap_servers, topics)
        stack.callback(positions.close)
        try:
            await wait_drained(positions, relay, base_url, progress, drain_seconds)
        except DemoError as exc:
            raise DemoError(f"{exc}\n--- last lines of {relay_log} ---\n{relay.tail(20)}") from None

        async with aiohttp.ClientSession() as http:
            metrics_text = await _get_text(http, f"http://127.0.0.1:{metrics_port}/metrics")
            metrics_file.write_text(metrics_text)
            events = orjson.loads(await _get_text(http, f"{base_url}/_sandbox/events"))
        status = await stop_relay(relay)
        say(f"• Relay stopped with SIGTERM (exit status {status})")

        settings = load_settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_group_id=GROUP_ID,
            dlq_topic=DLQ_TOPIC,
        )
        with DeadLetterTopic(settings) as dlq:
            letters = await asyncio.to_thread(dlq.read)
        delivered, warnings = relay_counters(metrics_text)
        findings = Findings(
            published=published,
            planted=planted,
            delivered=delivered,
            warnings=warnings,
            sandbox_events=events["data"],
            dead_letters=letters,
            commits=await asyncio.to_thread(positions.by_topic),
            metrics_file=metrics_file,
            relay_log=relay_log,
        )
        findings.problems = verify(findings)
        if status != 0:
            findings.problems.append(f"the relay exited with status {status} after SIGTERM")
        say(render_summary(findings, Decoder.from_settings(settings), datetime.now(UTC)))
        await after_summary(keep, inbox_url, positions, broker)
        say("• Stopping the sandbox and the broker…")
    return findings


def _planted_text(record: SampleRecord) -> str:
    texts = {
        Planted.UNDECODABLE: f"{len(record.raw_value or b'')} random bytes instead of Avro",
        Planted.LIMIT_EXCEEDED: "an invoice with more line items than Klaviyo's 4,000 limit",
        Planted.EXPIRED: "a password reset whose link expired an hour ago",
        Planted.PHONE_UNPARSEABLE: "a new account whose phone number is '12'",
    }
    return texts[record.planted] if record.planted is not None else ""


async def _get_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
        response.raise_for_status()
        return await response.text()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dev.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--per-topic", type=int, default=4, help="good events per topic (4)")
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds the relay may take to drain (600)"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT_DIR, help="relay log and metrics")
    parser.add_argument("--json-summary", type=Path, help="also write the summary as JSON here")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the summary, keep the sandbox (and its inbox page) up until Ctrl-C",
    )
    parser.add_argument(
        "--sandbox-port", type=int, default=0, help="the sandbox's port (0: any free port)"
    )
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        findings = asyncio.run(
            run_demo(
                args.per_topic,
                args.timeout,
                args.output,
                keep=args.keep,
                sandbox_port=args.sandbox_port,
            )
        )
    except (DemoError, BrokerError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    if args.json_summary is not None:
        args.json_summary.write_bytes(
            orjson.dumps(summary_json(findings), option=orjson.OPT_INDENT_2)
        )
    return 0 if not findings.problems else 1


if __name__ == "__main__":
    sys.exit(main())
