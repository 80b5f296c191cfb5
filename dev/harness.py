"""The relay and the Klaviyo sandbox as child processes, and the broker's offsets seen from
outside: one harness for the tests, the demo (``dev.demo``) and the benchmarks (``bench``).

- the commands: :data:`RELAY_COMMAND` and :func:`sandbox_command` (the one place that says how
  the sandbox is started);
- the environment: :func:`relay_env` starts from this process's environment minus every relay
  setting the caller may have exported (a real ``KLAVIYO_API_KEY`` must never meet a sandbox);
  :data:`UNLIMITED_RATE_LIMITS` for runs where the relay must not throttle itself;
- the processes: :class:`ChildProcess` (log in a file, log tail, exit, stop: SIGTERM then
  SIGKILL), :class:`RelayProcess` (ready once it logs its metrics port; its metrics scraped:
  :meth:`RelayProcess.metric`, parsed by :func:`metric_sum`) and :class:`SandboxProcess` (ready
  once it prints its listening line);
- waiting on a condition with a deadline, never a bare sleep: :func:`wait_for` (async) and
  :func:`wait_until` (sync, for the bench's threads);
- offsets: :class:`GroupOffsets` (end offsets, a group's committed offsets and their metadata,
  committing a start).

The broker itself is :class:`dev.kafka_broker.KafkaBroker` (``start``, ``external``, ``stop``).
Nothing here depends on pytest: a timeout raises :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from consumer.coordinator import committed
from consumer.settings import DEFAULT_RATE_LIMITS, EndpointLimit, Settings, WindowLimit

REPO = Path(__file__).resolve().parents[1]
WAIT = 120.0  # generous: the machine's few cores are shared with whatever else runs

RELAY_COMMAND = (sys.executable, "-m", "consumer", "run")


def sandbox_command(*args: str) -> list[str]:
    """The command line that serves the Klaviyo sandbox with the CLI ``args``."""
    return [sys.executable, "-m", "klaviyo_sandbox", *args]


# Far above any rate the machine reaches: the relay paces itself to these and never waits.
UNLIMITED_RATE_LIMITS: dict[str, EndpointLimit] = {
    name: EndpointLimit(
        burst=WindowLimit(requests=1_000_000, seconds=1),
        steady=WindowLimit(requests=60_000_000, seconds=60),
    )
    for name in DEFAULT_RATE_LIMITS
}


def rate_limits_json(limits: Mapping[str, EndpointLimit]) -> str:
    """``limits`` as the relay's ``RATE_LIMITS`` and the sandbox's ``--rate-limits`` read them."""
    return json.dumps({name: limit.model_dump() for name, limit in limits.items()})


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- environment ---------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without any relay setting (nor a config file) in it."""
    names = {name.upper() for name in Settings.model_fields}
    return {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in names
        and k.upper().split("__")[0] not in names
        and not k.startswith(("KAFKA_", "KLAVIYO_"))
        and k != "RELAY_CONFIG_FILE"
    }


def relay_env(
    bootstrap: str,
    base_url: str,
    *,
    group: str,
    dlq_topic: str,
    api_key: str = "pk_sandbox",
    **settings: str,
) -> dict[str, str]:
    """Environment for :data:`RELAY_COMMAND` against ``bootstrap`` and the sandbox at
    ``base_url``; ``settings``: more relay settings by their variable names (they win)."""
    env = clean_env()
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_GROUP_ID=group,
        DLQ_TOPIC=dlq_topic,
        KLAVIYO_BASE_URL=base_url,
        KLAVIYO_API_KEY=api_key,
        METRICS_PORT="0",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    env.update(settings)
    return env


# --- child processes -----------------------------------------------------------------------


class ChildExited(RuntimeError):
    """The child exited before it was ready; the message ends with its log's tail."""


class ChildProcess:
    """A command run from the repository's root, its stdout and stderr appended to a file."""

    def __init__(
        self, command: Iterable[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            list(command),
            env=None if env is None else dict(env),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The log's lines, JSON ones parsed, others as ``{"message": line}``."""
        lines = []
        for raw in self.log_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"message": raw})
        return lines

    def logged(self, message: str) -> bool:
        """Whether a log line's message is ``message``."""
        return any(line.get("message") == message for line in self.log_lines())

    def tail(self, lines: int = 30) -> str:
        """The log's last lines, for failure messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def line_with(self, needle: str) -> str | None:
        """The first log line containing ``needle``; :class:`ChildExited` if there is none and
        the child is gone (it never will be)."""
        exited = self.process.poll() is not None
        for line in self.log_text().splitlines():
            if needle in line:
                return line
        if exited:
            raise ChildExited(
                f"{self.log_path.name}: exited with {self.process.returncode}:\n{self.tail()}"
            )
        return None

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(WAIT)

    async def wait_exit(self, within: float = WAIT) -> int:
        """The exit status, polled off the event loop's back (the child may need the loop)."""
        await wait_for(
            lambda: self.process.poll() is not None, within, f"{self.log_path.name} to exit", 0.05
        )
        return self.process.returncode

    def stop(self, grace: float = 0.0) -> int:
        """Make sure the child is gone and close its log; its exit status. ``grace`` > 0:
        SIGTERM first (the relay drains and commits) and SIGKILL after that many seconds;
        0: SIGKILL at once (cleanup after a test that already stopped what it meant to)."""
        if self.process.poll() is None:
            if grace > 0:
                self.terminate()
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    self.kill()
            else:
                self.kill()
        self._log.close()
        return self.process.returncode


class RelayProcess(ChildProcess):
    """:data:`RELAY_COMMAND` (or ``command``, a wrapper that still runs it) in ``env``."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, command: Iterable[str] | None = None
    ) -> None:
        super().__init__(command or RELAY_COMMAND, log_path, env)

    def metrics_port(self) -> int | None:
        """The port it serves /metrics on, once it logged that it started (``LOG_FORMAT=json``)."""
        for line in self.log_lines():
            if line.get("message") == "relay started":
                return int(line["metrics_port"])
        return None

    async def get(self, path: str = "/metrics") -> tuple[int, str]:
        """``path`` (``/metrics``, ``/healthz``, ``/readyz``) from its metrics port: the status
        and the body. :class:`RelayNotServing` before it logged the port, and once the port is
        closed (a stopping relay closes it last, after it left the group)."""
        port = self.metrics_port()
        if port is None:
            raise RelayNotServing(f"{self.log_path.name}: no metrics port logged yet")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.get(f"http://127.0.0.1:{port}{path}") as response,
            ):
                return response.status, await response.text()
        except aiohttp.ClientConnectionError as error:
            raise RelayNotServing(f"{self.log_path.name}: {error!r}") from error

    async def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """:func:`metric_sum` of its /metrics now; 0 before it logged its port (it counted
        nothing yet). :class:`RelayNotServing` once the port no longer answers: a relay that is
        gone reads as an error, never as a zero that an upper bound would pass."""
        text = await self._metrics_text()
        return 0.0 if text is None else metric_sum(text, name, labels)

    async def metric_by(
        self, name: str, label: str, labels: Mapping[str, str] | None = None
    ) -> dict[str, float]:
        """:func:`metric_sums_by` of its /metrics now; empty before it logged its port."""
        text = await self._metrics_text()
        return {} if text is None else metric_sums_by(text, name, label, labels)

    async def _metrics_text(self) -> str | None:
        if self.metrics_port() is None:
            return None
        status, text = await self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"{self.log_path.name}: GET /metrics answered {status}: {text}")
        return text


class RelayNotServing(ConnectionError):
    """The relay has no metrics port to ask: not logged yet, or no longer listening."""


# The sample names a family of each type holds, as suffixes of its name: the parser names a
# counter ``x`` for its samples ``x_total`` (and ``x_created``), and ``x`` itself is no sample.
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def _samples(text: str, name: str, labels: Mapping[str, str] | None) -> list[Sample]:
    """The samples named ``name`` (``x_total`` for a counter, ``x_count`` of a histogram...)
    whose labels include ``labels``. A name no family declares is a test's mistake (a typo, a
    renamed metric): LookupError, not the zero a labelled counter shows before it counted."""
    wanted = (labels or {}).items()
    declared = False
    found = []
    for family in text_string_to_metric_families(text):
        if name not in {family.name + s for s in _SAMPLE_SUFFIXES.get(family.type, ("",))}:
            continue
        declared = True
        found += [s for s in family.samples if s.name == name and wanted <= s.labels.items()]
    if not declared:
        raise LookupError(f"no metric family declares {name!r}")
    return found


def metric_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples of the exposition ``text`` named ``name`` whose labels include
    ``labels`` (all of them by default); 0 when none has yet."""
    return sum(sample.value for sample in _samples(text, name, labels))


def metric_sums_by(
    text: str, name: str, label: str, labels: Mapping[str, str] | None = None
) -> dict[str, float]:
    """:func:`metric_sum` per value of ``label`` ("" for samples without it)."""
    sums: dict[str, float] = {}
    for sample in _samples(text, name, labels):
        key = sample.labels.get(label, "")
        sums[key] = sums.get(key, 0.0) + sample.value
    return sums


class SandboxProcess(ChildProcess):
    """The Klaviyo sandbox on ``port`` (0: any free one) with ``rate_limits`` (``none``,
    ``default`` or JSON) and more CLI ``args``. A process of its own, so that its caller's
    blocking calls (Kafka admin, offsets) never stall Klaviyo's stand-in."""

    def __init__(
        self, log_path: Path, *args: str, port: int = 0, rate_limits: str = "none"
    ) -> None:
        super().__init__(
            sandbox_command("--port", str(port), "--rate-limits", rate_limits, *args), log_path
        )
        self.base_url = ""

    async def started(self, within: float = WAIT) -> str:
        """Wait for the listening line; the sandbox's base URL."""
        await wait_for(
            lambda: self.line_with("listening on ") is not None, within, "the sandbox to listen"
        )
        line = self.line_with("listening on ") or ""
        self.base_url = line.rsplit("listening on ", 1)[1].strip()
        return self.base_url


async def _sandbox_get(base_url: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(f"{base_url}{path}") as response,
    ):
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {await response.text()}")
        return await response.json()


async def sandbox_stats(base_url: str) -> dict[str, Any]:
    """The sandbox's counters (``/_sandbox/stats``): requests per endpoint and status, events..."""
    stats: dict[str, Any] = await _sandbox_get(base_url, "/_sandbox/stats")
    return stats


async def sandbox_events(base_url: str) -> list[dict[str, Any]]:
    """Every event the sandbox accepted, in the order it received them."""
    events: list[dict[str, Any]] = (await _sandbox_get(base_url, "/_sandbox/events"))["data"]
    return events


# --- waiting -------------------------------------------------------------------------------


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    within: float = WAIT,
    what: str = "condition",
    interval: float = 0.1,
) -> None:
    """Poll ``condition`` until true; :class:`TimeoutError` naming ``what`` after ``within``
    seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(
    condition: Callable[[], bool], within: float = WAIT, what: str = "condition"
) -> None:
    """:func:`wait_for` for a caller without an event loop (it sleeps its thread)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(0.2)


# --- offsets -------------------------------------------------------------------------------


def inspector(bootstrap: str, group: str | None = None, logger: Any = None) -> Consumer:
    """A consumer that only looks (never commits by itself) in ``group`` (a throwaway one by
    default); ``logger`` takes librdkafka's log lines instead of stderr."""
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group or f"inspect-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    return Consumer(config) if logger is None else Consumer(config, logger=logger)


class GroupOffsets:
    """The topics' end offsets and ``group``'s committed offsets, through one consumer kept
    open (for polling them) until :meth:`close`. Keys are ``(topic, partition)``."""

    def __init__(
        self, bootstrap: str, group: str | None = None, logger: logging.Logger | None = None
    ) -> None:
        self._consumer = inspector(bootstrap, group, logger)

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        out = []
        for topic in topics:
            meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
            out += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        return out

    def ends(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        return {
            (tp.topic, tp.partition): self._consumer.get_watermark_offsets(tp, timeout=30)[1]
            for tp in self.partitions(topics)
        }

    def committed(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """The group's position per partition of ``topics`` (-1001 when nothing is committed);
        the relay's map of finished offsets in the commit's metadata does not change it."""
        return {key: offset for key, (offset, _metadata) in self.commits(topics).items()}

    def commits(self, topics: Iterable[str]) -> dict[tuple[str, int], tuple[int, str]]:
        """The group's position and commit metadata per partition of ``topics``. A group
        coordinator that is still loading or moving (a fresh or restarted broker answers
        NOT_COORDINATOR for a moment) is asked again, for up to 30 s."""
        partitions = self.partitions(topics)
        found = committed(self._consumer, partitions, 30)
        return {(tp.topic, tp.partition): (tp.offset, tp.metadata or "") for tp in found}

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Set the group's positions (where a fresh group starts reading); without metadata,
        so no map of finished offsets survives it."""
        positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self._consumer.commit(offsets=positions, asynchronous=False)

    def close(self) -> None:
        self._consumer.close()


def partitions_of(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    with closing(GroupOffsets(bootstrap)) as offsets:
        return offsets.partitions(topics)


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    with closing(GroupOffsets(bootstrap)) as offsets:
        return offsets.ends(topics)


def committed_offsets(
    bootstrap: str, group: str, topics: Iterable[str]
) -> dict[tuple[str, int], int]:
    """The group's committed position per partition (-1001 when nothing is committed)."""
    with closing(GroupOffsets(bootstrap, group)) as offsets:
        return offsets.committed(topics)
