"""The container image, built by ``dev/image.sh`` (what ``make image`` runs) and run for real:
non-root on a read-only root filesystem, ``--version``/``--help``, ``check`` failing cleanly,
the probes through a published port, and a real run on the host network against the test
broker and the sandbox that delivers the sample and stops on SIGTERM with exit 0.

Skipped, saying why, where no container engine can run (no podman, no Docker daemon)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from consumer import __version__
from consumer.topics import CONTRACT_TOPICS
from dev.demo import publish_sample, relay_counters
from dev.harness import free_port
from dev.kafka_broker import KafkaBroker
from dev.sample_events import sample
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import relay_env, sandbox_stats, wait_committed_to_end, wait_for

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/klaviyo-relay:test"
UID = "10001"
DRAIN_SECONDS = 15
NO_ENGINE = 3  # dev/image.sh's exit status when no engine can run a container


@dataclasses.dataclass(frozen=True)
class Engine:
    command: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.command, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def container(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``run --rm --read-only`` of the image (``args``: options, then ``--``-less argv)."""
        return self.run("run", "--rm", "--read-only", *args, timeout=timeout)


@pytest.fixture(scope="module")
def engine() -> Engine:
    script = ["bash", str(ROOT / "dev" / "image.sh")]
    found = subprocess.run(
        [*script, "env"], capture_output=True, text=True, timeout=60, check=False
    )
    if found.returncode == NO_ENGINE:
        pytest.skip(f"no container engine can run here: {found.stderr.strip()}")
    assert found.returncode == 0, found.stderr
    settings = dict(line.split("=", 1) for line in found.stdout.splitlines() if "=" in line)
    env = dict(os.environ)
    if settings.get("CONTAINERS_CONF"):
        env["CONTAINERS_CONF"] = settings["CONTAINERS_CONF"]
    # First build on a fresh machine: the base image (debootstrap) and PyPI; cached afterwards.
    built = subprocess.run(
        [*script, "build", TAG], capture_output=True, text=True, timeout=1800, check=False
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return Engine(settings["ENGINE"], env)


def test_runs_as_non_root_on_a_read_only_root(engine: Engine) -> None:
    probe = "id -u; touch /opt/venv/probe 2>/dev/null && echo writable || echo read-only"
    result = engine.container("--entrypoint", "sh", TAG, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [UID, "read-only"]
    configured = engine.run("image", "inspect", "--format", "{{.Config.User}}", TAG)
    assert configured.stdout.strip().split(":")[0] == UID


def test_version_and_help(engine: Engine) -> None:
    version = engine.container(TAG, "--version")
    assert version.returncode == 0, version.stderr
    assert __version__ in version.stdout
    help_ = engine.container(TAG, "--help")
    assert help_.returncode == 0, help_.stderr
    for command in ("run", "check", "dlq"):
        assert command in help_.stdout


def test_the_image_carries_no_sandbox(engine: Engine) -> None:
    # The Klaviyo sandbox is a development tool (its own distribution): not in the image.
    probe = "find /opt/venv -name 'klaviyo_sandbox*' -o -name inbox_static"
    found = engine.container("--entrypoint", "sh", TAG, "-c", probe)
    assert found.returncode == 0, found.stderr
    assert found.stdout == ""
    command = engine.container(TAG, "sandbox")
    assert command.returncode == 1, command.stdout + command.stderr
    assert "sandbox is not installed" in command.stderr


def test_check_against_nothing_fails_cleanly(engine: Engine) -> None:
    # No API key, no broker (no network at all): a clear report, not a traceback.
    result = engine.container("--network=none", TAG, "check", timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert "KLAVIYO_API_KEY" in output, output


def _rm(engine: Engine, name: str) -> None:
    engine.run("rm", "--force", "--time", "0", name)


@pytest.fixture
def container_name(engine: Engine) -> Iterator[str]:
    name = f"relay-test-{uuid.uuid4().hex[:8]}"
    yield name
    _rm(engine, name)


async def _get(url: str) -> tuple[int, str]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url) as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def test_probes_through_a_published_port(engine: Engine, container_name: str) -> None:
    # A relay whose broker does not answer is alive (/healthz) and exports its metrics.
    started = engine.run(
        "run", "--detach", "--read-only", "--name", container_name,
        "--publish", "127.0.0.1::9400",
        "--env", "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1",
        "--env", "KLAVIYO_API_KEY=pk_image_probe",
        TAG,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    mapped = engine.run("port", container_name, "9400/tcp")
    assert mapped.returncode == 0, mapped.stderr
    port = int(mapped.stdout.strip().splitlines()[0].rsplit(":", 1)[1])

    async def healthy() -> bool:
        return (await _get(f"http://127.0.0.1:{port}/healthz"))[0] == 200

    await wait_for(healthy, what="/healthz through the published port", interval=0.5)
    status, text = await _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert f'klaviyo_relay_build_info{{version="{__version__}"}}' in text


def _exit_code(engine: Engine, name: str) -> int | None:
    state = engine.run("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name)
    running, code = state.stdout.split()
    return None if running == "true" else int(code)


@pytest.mark.kafka
async def test_real_run_delivers_the_sample_and_stops_on_sigterm(
    engine: Engine, container_name: str, kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = {topic_factory(t.replace(".", "-")): t for t in CONTRACT_TOPICS}
    ours = {contract: topic for topic, contract in topics.items()}
    group = f"relay-image-{uuid.uuid4().hex[:8]}"
    records = [dataclasses.replace(r, topic=ours[r.topic]) for r in sample(datetime.now(UTC))]
    metrics = free_port()
    options = SandboxOptions(api_keys=("pk_sandbox",), rate_limits=None)
    async with running_sandbox(options) as sandbox:
        env = relay_env(
            bootstrap,
            sandbox.base_url,
            topics,
            group,
            topic_factory("dlq"),
            DRAIN_TIMEOUT_SECONDS=str(DRAIN_SECONDS),
            METRICS_PORT=str(metrics),
        )
        # Only what the relay is configured with, not this process's whole environment.
        settings = {k: v for k, v in env.items() if os.environ.get(k) != v}
        env_options = [f"--env={k}={v}" for k, v in sorted(settings.items())]
        started = engine.run(
            "run", "--detach", "--read-only", "--network=host", "--name", container_name,
            *env_options, TAG,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        await asyncio.to_thread(publish_sample, bootstrap, records)
        await wait_committed_to_end(bootstrap, group, topics, len(records))
        # As the demo checks it: every topic reached Klaviyo, and the sandbox holds what the
        # relay counted as accepted.
        status, text = await _get(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200
        delivered, _ = relay_counters(text)
        assert {topic for topic, _ in delivered} == set(topics)
        stats = await sandbox_stats(sandbox.base_url)
        assert stats["events"] == sum(delivered.values()), (stats, delivered)

        assert engine.run("kill", "--signal", "TERM", container_name).returncode == 0
        deadline = time.monotonic() + DRAIN_SECONDS + 30
        while (code := _exit_code(engine, container_name)) is None:
            assert time.monotonic() < deadline, "no exit within the drain deadline"
            await asyncio.sleep(0.2)
        logs = engine.run("logs", container_name).stdout
        assert code == 0, logs[-3000:]
        assert "Traceback" not in logs
