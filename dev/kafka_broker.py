"""A real Apache Kafka broker (KRaft, one node) for tests, CI and the demo.

The broker's jars come from Maven Central through ``dev/kafka/pom.xml`` and are cached outside
the work tree (``$KAFKA_CACHE_DIR``, default ``~/.cache/klaviyo-relay/kafka-<version>``). Each
broker gets a fresh data directory, free 127.0.0.1 ports and a static single-voter controller
quorum, and counts as started only once it has accepted a produce.

Library use::

    with KafkaBroker.start() as broker:
        broker.create_topics(["orders"])
        ...  # broker.bootstrap_servers == "127.0.0.1:PORT"

Command line (for the demo; ``start`` leaves the broker running and records it in a state file)::

    python -m dev.kafka_broker fetch|start|stop|status
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
HOST = "127.0.0.1"
DEFAULT_PORT = 9092  # what every command (and KAFKA_BOOTSTRAP_SERVERS's default) expects
PROBE_TOPIC = "relay-broker-probe"
_MAVEN_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_LOG_TAIL_LINES = 40
_BIND_FAILURE = re.compile(r"failed to bind to (\S+?):? Address already in use")
# A bind race (another process took a port between our probe and the broker's bind) is retried
# with fresh ports; anything else fails at once.
_PORT_ATTEMPTS = 3

# librdkafka logs every refused connection; route it into logging (shown by pytest on failure).
_CLIENT_LOG = logging.getLogger("dev.kafka_broker.client")

_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says why."""


class _PortInUseError(BrokerError):
    pass


def kafka_version() -> str:
    """The Kafka version the pom resolves (its ``kafka.version`` property: one source of truth)."""
    version = ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=_MAVEN_NS)
    if not version:
        raise BrokerError(f"{POM} has no <kafka.version> property")
    return version.strip()


def cache_dir() -> Path:
    configured = os.environ.get("KAFKA_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "klaviyo-relay" / f"kafka-{kafka_version()}"


def state_file() -> Path:
    return cache_dir() / "broker-state.json"


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _java_failure(output: str) -> str:
    """The exception a JVM died of (skipping the config dump before it), else the output's tail."""
    lines = output.rstrip().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Exception in thread") or line.startswith("Error: "):
            return "\n".join(lines[index : index + 12])
    return _tail(output)


def fetch_jars() -> Path:
    """Return the directory of broker jars, resolving them with Maven first when not cached.

    The jars are copied into a scratch directory and renamed into place, under a file lock, so
    parallel test sessions neither download twice nor see a half-filled directory. A stamp holds
    the pom's hash: editing the pom refreshes the cache.
    """
    cache = cache_dir()
    lib = cache / "lib"
    stamp = cache / "lib.pom-sha256"
    wanted = hashlib.sha256(POM.read_bytes()).hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_dir() and stamp.is_file() and stamp.read_text().strip() == wanted:
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven (mvn) is not on PATH: it is needed once to fetch the Kafka broker jars "
                f"into {cache} (install it, e.g. apt-get install maven)"
            )
        scratch = Path(tempfile.mkdtemp(prefix="lib-", dir=cache))
        command = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={scratch}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
            shutil.rmtree(scratch, ignore_errors=True)
            output = _tail(result.stdout + result.stderr)
            raise BrokerError(
                f"mvn failed (exit {result.returncode}) fetching Kafka {kafka_version()} jars:\n"
                f"  {' '.join(command)}\n{output}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        scratch.rename(lib)
        stamp.write_text(wanted + "\n")
        return lib


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if not java.is_file():
            raise BrokerError(
                f"JAVA_HOME={java_home} has no bin/java: Kafka needs Java 17 or newer"
            )
        return str(java)
    found = shutil.which("java")
    if found is None:
        raise BrokerError("java is not on PATH (and JAVA_HOME is unset): Kafka needs Java 17+")
    return found


def _free_port(preferred: int = 0) -> int:
    """``preferred`` if it can be bound now (0 or taken: any free port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, preferred))
        except OSError:
            sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _cluster_id() -> str:
    # Kafka's Uuid text form: URL-safe base64 of 16 bytes without padding. Kafka never hands out
    # ids that start with "-" (they read as command-line options), so neither do we.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _server_properties(
    data_dir: Path, broker_port: int, controller_port: int, extra: Mapping[str, str]
) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        # One node: every internal topic must make do with one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Tests join groups often; the default 3 s delay before the first rebalance is dead time.
        "group.initial.rebalance.delay.ms": "0",
        # Topics exist only when created (create_topics), as on a production cluster.
        "auto.create.topics.enable": "false",
    }
    props.update(extra)
    return "".join(f"{key}={value}\n" for key, value in props.items())


def _orphan_guard(detached: bool) -> list[str]:
    """A command prefix that makes the broker die with this process (unless ``detached``).

    A test session killed hard must not leave a broker behind. PR_SET_PDEATHSIG follows the
    forking *thread*, so it is only set from the main thread; setpriv (util-linux) sets it before
    exec'ing java, which avoids a preexec_fn in a process that has librdkafka threads.
    """
    setpriv = shutil.which("setpriv")
    if detached or setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def _admin(bootstrap_servers: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers}, logger=_CLIENT_LOG)


def _is_kafka_process(pid: int) -> bool:
    """True if ``pid`` is alive and is a Kafka broker (a recycled pid must never be killed)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` (not necessarily our child) to exit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # A pidfd turns readable when the process exits.
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


def terminate_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM a broker, then SIGKILL it if it has not exited within ``timeout`` seconds."""
    if not _is_kafka_process(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_pid_gone(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_pid_gone(pid, 10):
        raise BrokerError(f"Kafka broker pid {pid} survived SIGKILL")


class KafkaBroker:
    """A running single-node KRaft broker (or an external one, see :meth:`external`)."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        process: subprocess.Popen[bytes] | None = None,
        workdir: Path | None = None,
        owns_workdir: bool = False,
        startup_seconds: float | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.process = process
        self.workdir = workdir
        self.startup_seconds = startup_seconds
        self._owns_workdir = owns_workdir

    @classmethod
    def external(cls, bootstrap_servers: str) -> KafkaBroker:
        """A broker someone else runs: :meth:`stop` leaves it alone."""
        return cls(bootstrap_servers)

    @classmethod
    def start(
        cls,
        workdir: Path | None = None,
        timeout: float = 120,
        *,
        detached: bool = False,
        extra_config: Mapping[str, str] | None = None,
        preferred_port: int = 0,
    ) -> KafkaBroker:
        """Start a broker and return once it has accepted a produce.

        ``workdir`` holds the data, config and ``broker.log``; when None a temporary directory is
        made and removed by :meth:`stop` (a given one is kept, for inspection). ``detached`` lets
        the broker outlive this process (the CLI); otherwise it dies with it. ``preferred_port``
        is used when free (the CLI asks for 9092, every command's default); otherwise, and for
        a retry after a bind race, any free port. The ``timeout`` covers fetching the jars too.
        Raises :class:`BrokerError` saying why it did not start.
        """
        began = time.monotonic()
        deadline = began + timeout
        java = _java()
        lib = fetch_jars()
        owns = workdir is None
        root = Path(tempfile.mkdtemp(prefix="kafka-broker-")) if workdir is None else workdir
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                try:
                    process, port = _launch(
                        java,
                        lib,
                        root,
                        deadline=deadline,
                        detached=detached,
                        extra=extra_config or {},
                        preferred_port=preferred_port if attempt == 1 else 0,
                    )
                    break
                except _PortInUseError:
                    if attempt == _PORT_ATTEMPTS:
                        raise
        except BaseException:
            if owns:
                shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(
            f"{HOST}:{port}",
            process=process,
            workdir=root,
            owns_workdir=owns,
            startup_seconds=time.monotonic() - began,
        )

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def banner(self) -> str:
        if self.process is None:
            return f"Using external Kafka broker at {self.bootstrap_servers}"
        took = "" if self.startup_seconds is None else f" in {self.startup_seconds:.1f}s"
        where = f"started on {self.bootstrap_servers} (KRaft){took}"
        return f"Apache Kafka {kafka_version()} broker {where}"

    def create_topics(self, names: Iterable[str], partitions: int = 1, timeout: float = 60) -> None:
        """Create the topics (one replica each) and return once every partition has a leader."""
        wanted = list(names)
        if not wanted:
            return
        admin = _admin(self.bootstrap_servers)
        new = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in wanted]
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"creating topic {name!r} failed: {exc}") from exc
        _wait_topics_ready(admin, wanted, time.monotonic() + timeout)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the broker, SIGKILL it after ``timeout`` s, and remove a temporary workdir."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._owns_workdir = False

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (no controlled shutdown); see :meth:`restart`."""
        if self.process is None:
            raise BrokerError("an external broker cannot be killed from here")
        self.process.kill()
        self.process.wait(timeout=30)

    def restart(self, timeout: float = 120) -> None:
        """Start a stopped or killed broker again on the same ports and the same data, and
        return once it accepts a produce (its logs recovered)."""
        if self.process is None or self.workdir is None:
            raise BrokerError("an external broker cannot be restarted from here")
        if self.process.poll() is None:
            raise BrokerError("the broker is still running")
        jvm = _jvm(_java(), fetch_jars(), self.workdir / "log4j2.properties")
        deadline = time.monotonic() + timeout
        self.process = _run(
            jvm, self.workdir, self.bootstrap_servers, deadline=deadline, detached=False
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _launch(
    java: str,
    lib: Path,
    root: Path,
    *,
    deadline: float,
    detached: bool,
    extra: Mapping[str, str],
    preferred_port: int = 0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Format fresh storage, start the broker and wait until it accepts a produce."""
    data_dir = root / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    broker_port = _free_port(preferred_port) if preferred_port else _free_port()
    controller_port = _free_port()
    config = root / "server.properties"
    config.write_text(_server_properties(data_dir, broker_port, controller_port, extra))
    log4j = root / "log4j2.properties"
    log4j.write_text(_LOG4J2_PROPERTIES)
    jvm = _jvm(java, lib, log4j)

    try:
        fmt = subprocess.run(
            # A short-lived JVM: C1 alone starts it in about half the time.
            [
                *jvm,
                "-XX:TieredStopAtLevel=1",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _cluster_id(),
                "-c",
                str(config),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=max(deadline - time.monotonic(), 1),
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError("formatting KRaft storage did not finish before the deadline") from exc
    if fmt.returncode != 0:
        raise BrokerError(
            f"formatting KRaft storage failed (exit {fmt.returncode}):\n"
            f"{_java_failure(fmt.stdout + fmt.stderr)}"
        )

    bootstrap = f"{HOST}:{broker_port}"
    return _run(jvm, root, bootstrap, deadline=deadline, detached=detached), broker_port


def _jvm(java: str, lib: Path, log4j: Path) -> list[str]:
    return [
        java,
        "-Xms128m",
        "-Xmx512m",
        "-XX:+UseSerialGC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{lib}/*",
    ]


def _run(
    jvm: list[str], root: Path, bootstrap: str, *, deadline: float, detached: bool
) -> subprocess.Popen[bytes]:
    """Run the broker on ``root``'s formatted storage and config until it accepts a produce."""
    log_path = root / "broker.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*_orphan_guard(detached), *jvm, "kafka.Kafka", str(root / "server.properties")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )
    try:
        _wait_ready(process, bootstrap, log_path, deadline)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        raise
    return process


def _log_excerpt(log_path: Path) -> str:
    """The log's first ERROR lines (the cause; the tail is mostly shutdown) and its last lines."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {log_path})"
    errors = [line for line in lines if "] ERROR " in line or line.startswith("Caused by:")]
    parts = []
    if errors:
        parts.append("first errors:\n" + "\n".join(errors[:8]))
    parts.append(f"last lines of {log_path}:\n" + "\n".join(lines[-20:]))
    return "\n".join(parts)


def _exited_error(process: subprocess.Popen[bytes], log_path: Path) -> BrokerError:
    bind = _BIND_FAILURE.search(log_path.read_text(errors="replace"))
    if bind is not None:
        return _PortInUseError(
            f"port {bind.group(1)} is in use: the Kafka broker could not bind it"
        )
    return BrokerError(
        f"Kafka broker exited early (exit {process.returncode})\n{_log_excerpt(log_path)}"
    )


def _step(deadline: float) -> float:
    # Bounded waits, so that a broker which died (or a stranger on its port) is noticed quickly.
    return min(max(deadline - time.monotonic(), 0.1), 5.0)


def _wait_ready(
    process: subprocess.Popen[bytes], bootstrap: str, log_path: Path, deadline: float
) -> None:
    """Wait until the broker listens, then until a produce to the probe topic is acknowledged."""
    host, port = bootstrap.rsplit(":", 1)
    last_error = "the broker port never accepted a connection"

    def alive_or_raise(pause: float) -> None:
        # Waiting on the process doubles as the pause between checks and notices an early exit.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=pause)
        if process.returncode is not None:
            raise _exited_error(process, log_path)
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka broker not ready before the deadline ({last_error})\n"
                f"{_log_excerpt(log_path)}"
            )

    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                break
        except OSError:
            alive_or_raise(0.2)

    admin = _admin(bootstrap)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 10_000},
        logger=_CLIENT_LOG,
    )
    delivered: list[KafkaError | None] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        delivered.append(err)

    while True:
        try:
            future = admin.create_topics([NewTopic(PROBE_TOPIC, 1, 1)])[PROBE_TOPIC]
            future.result(timeout=_step(deadline))
        except TimeoutError:
            last_error = "creating the probe topic timed out"
            alive_or_raise(0)
            continue
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                last_error = f"creating the probe topic: {exc}"
                alive_or_raise(0.5)
                continue
        delivered.clear()
        producer.produce(PROBE_TOPIC, b"probe", on_delivery=on_delivery)
        producer.flush(timeout=_step(deadline))
        if delivered and delivered[0] is None:
            return
        last_error = f"probe produce: {delivered[0] if delivered else 'no delivery report'}"
        alive_or_raise(0.5)


def _wait_topics_ready(admin: AdminClient, names: list[str], deadline: float) -> None:
    pending = set(names)
    while pending:
        metadata = admin.list_topics(timeout=max(deadline - time.monotonic(), 1))
        for name in list(pending):
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None or not topic.partitions:
                continue
            if all(p.leader >= 0 and p.error is None for p in topic.partitions.values()):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(f"topics not ready before the deadline: {sorted(pending)}")
        # Metadata propagates from the controller within milliseconds; ask again shortly.
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Command line: a broker that outlives the command, for the demo and for manual runs.


@dataclass(frozen=True)
class _State:
    pid: int
    bootstrap_servers: str
    workdir: str
    version: str


def _read_state() -> _State | None:
    path = state_file()
    try:
        state = _State(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    if not _is_kafka_process(state.pid):
        path.unlink(missing_ok=True)
        shutil.rmtree(state.workdir, ignore_errors=True)
        return None
    return state


def _cmd_fetch() -> int:
    lib = fetch_jars()
    print(f"Apache Kafka {kafka_version()} broker jars ready in {lib}")
    return 0


def _cmd_start(timeout: float) -> int:
    running = _read_state()
    if running is not None:
        print(f"Kafka broker already running on {running.bootstrap_servers} (pid {running.pid})")
        _print_export(running.bootstrap_servers)
        return 0
    broker = KafkaBroker.start(timeout=timeout, detached=True, preferred_port=DEFAULT_PORT)
    assert broker.pid is not None and broker.workdir is not None
    state = _State(broker.pid, broker.bootstrap_servers, str(broker.workdir), kafka_version())
    state_file().write_text(json.dumps(asdict(state)) + "\n")
    print(broker.banner)
    print(f"pid {broker.pid}; log {broker.workdir / 'broker.log'}")
    _print_export(broker.bootstrap_servers)
    print("stop it with: make broker-stop (python -m dev.kafka_broker stop)")
    return 0


def _print_export(bootstrap_servers: str) -> None:
    """Every command defaults to 127.0.0.1:9092; say so, or what to set when 9092 was taken."""
    if bootstrap_servers == f"{HOST}:{DEFAULT_PORT}":
        print("on the default address, where every command looks for it:")
    else:
        print(f"port {DEFAULT_PORT} was taken; point every command at this broker with:")
    print(f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap_servers}")


def _cmd_stop() -> int:
    state = _read_state()
    if state is None:
        print("Kafka broker not running")
        return 0
    terminate_pid(state.pid)
    shutil.rmtree(state.workdir, ignore_errors=True)
    state_file().unlink(missing_ok=True)
    print(f"Kafka broker on {state.bootstrap_servers} stopped")
    return 0


def _cmd_status() -> int:
    state = _read_state()
    if state is None:
        print("Kafka broker not running")
        return 3
    print(
        f"Apache Kafka {state.version} broker running on {state.bootstrap_servers} "
        f"(pid {state.pid}, workdir {state.workdir})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dev.kafka_broker", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="resolve the broker jars into the cache (Maven)")
    start = sub.add_parser("start", help="start a broker in the background and record it")
    start.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    sub.add_parser("stop", help="stop the recorded broker")
    sub.add_parser("status", help="say whether the recorded broker runs (exit 3 if not)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            return _cmd_fetch()
        if args.command == "start":
            return _cmd_start(args.timeout)
        if args.command == "stop":
            return _cmd_stop()
        return _cmd_status()
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
