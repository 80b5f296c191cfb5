"""The fault suite's framework: one scenario, one verdict.

A scenario produces contract events across keys (and planted poison records) to a fresh topic,
runs the Klaviyo sandbox and the relay as child processes, lets the test inject its fault, and
ends with :meth:`Scenario.verdict`, the same promises for every fault:

- every expected event reached Klaviyo, stored once per (metric, ``unique_id``), and was sent
  once unless the scenario allows resends (a replay after a crash, deduplicated by Klaviyo);
- per key, Klaviyo saw the events in the order they were produced;
- each poison record is parked on the dead-letter topic exactly once, and nothing else is;
- the group's committed offsets reach the end offsets;
- no relay exited on its own while the fault lasted (a pod would crash-loop on it);
- SIGTERM stops each relay with exit code 0.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import (
    WAIT,
    Event,
    EventFactory,
    RelayProcess,
    SandboxProcess,
    committed_offsets,
    end_offsets,
    headers_dict,
    produce,
    read_all,
    relay_env,
    sandbox_events,
    wait_for,
)

# One topic carries several record types (several handlers), as a shop's topics may.
RECORD_TYPES = (
    "shop.order.placed",
    "shop.account.created",
    "shop.order.shipment-updated",
    "shop.account.password-reset-requested",
)
BAD_MAGIC = b"garbage, not Avro"
SANDBOX_SEED = "11"  # reproducible fault draws


@dataclass(frozen=True)
class Poison:
    """A record the relay must park on the dead-letter topic, keyed like a customer's events."""

    key: str
    value: bytes = BAD_MAGIC


def base_id(unique_id: str) -> str:
    """The domain event id behind a Klaviyo ``unique_id`` (Ordered Product adds ``:<n>``)."""
    return unique_id.split(":", 1)[0]


class Scenario:
    """One fault scenario's topic, dead-letter topic, group, sandbox and relays.

    Use as a context manager: leaving it kills whatever child is still running."""

    def __init__(
        self,
        broker: KafkaBroker,
        tmp_path: Path,
        *,
        partitions: int = 3,
        record_types: Sequence[str] = RECORD_TYPES,
        create_dlq: bool = True,
    ) -> None:
        self.bootstrap = broker.bootstrap_servers
        self.tmp_path = tmp_path
        tag = uuid.uuid4().hex[:10]
        self.topic = f"faults-{tag}"
        self.dlq = f"faults-dlq-{tag}"
        self.group = f"relay-{tag}"
        self.record_types = tuple(record_types)
        broker.create_topics([self.topic], partitions=partitions)
        if create_dlq:
            broker.create_topics([self.dlq])
        self.factory = EventFactory()
        self.expected: list[Event] = []
        self.poison: list[tuple[str, int, int]] = []
        self.relays: list[RelayProcess] = []  # running; they leave through stop_relay or exited
        self.sandbox: SandboxProcess | None = None
        self._seq = 0
        self._templates: dict[tuple[str, str], dict[str, Any]] = {}
        self._started = 0

    # --- input -----------------------------------------------------------------------------

    def events(self, count: int, keys: int = 20, first_names: Sequence[str] = ()) -> list[Event]:
        """``count`` fresh events, round robin over ``keys`` keys and the record types;
        ``first_names``: a key's customer changes name from one event to the next (its
        profile changes, and changes back)."""
        out = []
        for _ in range(count):
            seq = self._seq
            self._seq += 1
            turn = seq // keys
            record_type = self.record_types[turn % len(self.record_types)]
            key = f"key-{seq % keys}"
            template = self._templates.get((record_type, key))
            if template is None:
                template = self._templates[(record_type, key)] = self.factory.datum(
                    record_type, key, seq
                )
            # A fresh id on the key's template: encoding alone is fast enough for 20,000.
            datum = {**template, "event_id": str(uuid.uuid4())}
            if first_names:
                name = first_names[turn % len(first_names)]
                datum["customer"] = {**template["customer"], "first_name": name}
            value = self.factory.encode(record_type, datum)
            out.append(Event(self.topic, record_type, key, datum["event_id"], value))
        return out

    def produce(
        self,
        items: Sequence[Event | Poison],
        headers: list[tuple[str, bytes]] | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        """Produce events and poison in the given order (``headers`` on each record, ``config``
        for the producer); remember what each must become."""
        records = [(self.topic, item.key.encode(), item.value) for item in items]
        placed = produce(self.bootstrap, records, headers, config)
        for item, (partition, offset) in zip(items, placed, strict=True):
            if isinstance(item, Poison):
                self.poison.append((self.topic, partition, offset))
            else:
                self.expected.append(item)

    def end_offsets(self) -> dict[tuple[str, int], int]:
        return end_offsets(self.bootstrap, [self.topic])

    def committed(self) -> dict[tuple[str, int], int]:
        return committed_offsets(self.bootstrap, self.group, [self.topic])

    # --- children --------------------------------------------------------------------------

    async def start_sandbox(self, *args: str) -> str:
        """The sandbox (extra CLI ``args``, e.g. ``--latency-ms 5-20``); its base URL."""
        self.sandbox = SandboxProcess(self.tmp_path / "sandbox.log", "--seed", SANDBOX_SEED, *args)
        return await self.sandbox.started()

    @property
    def base_url(self) -> str:
        assert self.sandbox is not None, "start_sandbox first"
        return self.sandbox.base_url

    def relay_env(self, **overrides: str) -> dict[str, str]:
        handlers = {self.topic: ",".join(self.record_types)}
        return relay_env(self.bootstrap, self.base_url, handlers, self.group, self.dlq, **overrides)

    def start_relay(self, command: list[str] | None = None, /, **overrides: str) -> RelayProcess:
        """A relay in the scenario's group (``overrides``: environment settings)."""
        self._started += 1
        log_path = self.tmp_path / f"relay-{self._started}.log"
        relay = RelayProcess(self.relay_env(**overrides), log_path, command)
        self.relays.append(relay)
        return relay

    def assert_running(self) -> None:
        """No relay has exited on its own (in a pod, that exit would repeat: a crash loop)."""
        for relay in self.relays:
            code = relay.process.poll()
            assert code is None, f"{relay.log_path.name} exited with {code}:\n{relay.tail()}"

    async def stop_relay(self, relay: RelayProcess) -> None:
        """SIGTERM: the relay drains, commits and exits 0."""
        self.assert_running()
        relay.terminate()
        code = await relay.wait_exit()
        assert code == 0, f"{relay.log_path.name} exited with {code} on SIGTERM:\n{relay.tail()}"
        self.relays.remove(relay)

    async def exited(self, relay: RelayProcess) -> int:
        """Wait for a relay that is meant to stop on its own; its exit code."""
        code = await relay.wait_exit()
        self.relays.remove(relay)
        return code

    async def wait(self, condition: Any, what: str, within: float = WAIT) -> None:
        """:func:`wait_for`, failing at once when a relay dies meanwhile."""

        def check() -> Any:
            self.assert_running()
            return condition()

        await wait_for(check, within, what, interval=0.2)

    async def settled(self, within: float = WAIT) -> None:
        ends = self.end_offsets()

        async def at_ends() -> bool:
            # Off the loop: a stand-in the test serves on it (a registry) keeps answering.
            return await asyncio.to_thread(self.committed) == ends

        await self.wait(at_ends, "offsets at the end offsets", within)

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()
        if self.sandbox is not None:
            self.sandbox.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the verdict -----------------------------------------------------------------------

    async def verdict(self, *, resends: bool = False) -> list[dict[str, Any]]:
        """Every promise (module docstring) at the end of the scenario; stops the relays.
        ``resends``: events may have been sent again (Klaviyo keeps them once). Returns what
        the sandbox stored, for the scenario's own checks."""
        assert self.relays, "no relay running"
        await self.settled()
        delivered = await sandbox_events(self.base_url)
        check_delivered(self.expected, delivered, resends=resends)
        check_parked(read_all(self.bootstrap, self.dlq, len(self.poison)), self.poison)
        ends = self.end_offsets()
        for relay in list(self.relays):
            await self.stop_relay(relay)
        assert self.committed() == ends
        return delivered


def check_delivered(
    expected: Sequence[Event], delivered: Sequence[dict[str, Any]], *, resends: bool
) -> None:
    identities = Counter((e["metric"], e["unique_id"]) for e in delivered)
    stored_twice = [identity for identity, n in identities.items() if n > 1]
    assert stored_twice == [], f"stored more than once: {stored_twice[:5]}"
    if not resends:
        sent_twice = [e["unique_id"] for e in delivered if e["duplicate_count"]]
        assert sent_twice == [], f"{len(sent_twice)} sent more than once: {sent_twice[:5]}"
    first_seen: dict[str, int] = {}
    for index, stored in enumerate(delivered):
        first_seen.setdefault(base_id(str(stored["unique_id"])), index)
    wanted = {e.event_id for e in expected}
    missing, unexpected = wanted - first_seen.keys(), first_seen.keys() - wanted
    assert not missing, f"{len(missing)} of {len(wanted)} events never reached Klaviyo"
    assert not unexpected, f"{len(unexpected)} events reached Klaviyo unexpectedly"
    # Per key, in the order produced; a record produced twice counts where it came first.
    produced: dict[str, Event] = {}
    for event in expected:
        produced.setdefault(event.event_id, event)
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for event_id, event in produced.items():
        by_key[(event.topic, event.key)].append(first_seen[event_id])
    out_of_order = sorted(key for key, seen in by_key.items() if seen != sorted(seen))
    assert out_of_order == [], f"keys whose events Klaviyo saw out of order: {out_of_order}"


def check_parked(letters: Sequence[Any], poison: Sequence[tuple[str, int, int]]) -> None:
    origins = []
    for letter in letters:
        headers = headers_dict(letter)
        origins.append(
            (
                headers["__connect.errors.topic"],
                int(headers["__connect.errors.partition"]),
                int(headers["__connect.errors.offset"]),
            )
        )
    parked, planted = Counter(origins), Counter(poison)
    assert parked == planted, f"parked {sorted(parked.items())}, planted {sorted(planted)}"


# --- looking at a relay from outside ---------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The process's resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
