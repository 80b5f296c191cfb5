"""``check``, run as an operator runs it, against the real broker and the sandbox."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from consumer.settings import Settings
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.cli import run_cli

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
KEY = "pk_test_check"


def check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    names = {name.upper() for name in Settings.model_fields}
    clean = {k: v for k, v in os.environ.items() if k.upper().split("__")[0] not in names}
    return subprocess.run(
        [sys.executable, "-m", "consumer", "check", *args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``name → rest of line`` of the one-line-per-check output."""
    out = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition(": ")
        out[name] = rest
    return out


@pytest.fixture
def env(kafka_broker: KafkaBroker, topic_factory: TopicFactory) -> dict[str, str]:
    topic = topic_factory("check-src")
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "TOPICS": orjson.dumps([topic]).decode(),
        "TOPIC_HANDLERS": orjson.dumps({topic: "shop.account.created"}).decode(),
        "DLQ_TOPIC": topic_factory("check-dlq"),
        "KLAVIYO_API_KEY": KEY,
    }


async def test_all_good(env: dict[str, str]) -> None:
    async with running_sandbox(SandboxOptions(api_keys=(KEY,))) as sandbox:
        result = await asyncio.to_thread(check, {**env, "KLAVIYO_BASE_URL": sandbox.base_url})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_of(result)
    assert list(lines) == ["config", "revision", "kafka", "dlq", "klaviyo", "scopes"]
    assert all(rest.startswith("ok (") for rest in lines.values()), result.stdout
    assert "1 source topics and the dead-letter topic" in lines["kafka"]
    assert (
        f"{env['DLQ_TOPIC']}: 1 partition(s), writable; dead letters up to 1000000"
        in (lines["dlq"])
    )
    assert "profiles:read, events:write, profiles:write" in lines["scopes"]
    assert KEY not in result.stdout + result.stderr
    # The scope probes are refused by validation: nothing was created.
    assert sandbox.state.events == [] and sandbox.state.profiles == {}


async def test_revision_lifecycle(env: dict[str, str]) -> None:
    """A deprecated revision passes with a warning naming the setting; a retired one fails."""
    today = datetime.now(UTC).date()
    deprecated = (today - timedelta(days=400)).isoformat()
    retired = (today - timedelta(days=800)).isoformat()
    async with running_sandbox(SandboxOptions(api_keys=(KEY,))) as sandbox:
        base = {**env, "KLAVIYO_BASE_URL": sandbox.base_url}
        old = await asyncio.to_thread(check, {**base, "KLAVIYO_REVISION": deprecated})
        gone = await asyncio.to_thread(check, {**base, "KLAVIYO_REVISION": retired})
    assert old.returncode == 0, old.stdout + old.stderr
    line = lines_of(old)["revision"]
    assert line.startswith("ok (") and "deprecated" in line
    assert "set KLAVIYO_REVISION to a newer revision" in line
    assert gone.returncode == 1
    assert lines_of(gone)["revision"].startswith("FAIL (")
    assert "retired" in lines_of(gone)["revision"]


async def test_wrong_key_fails_klaviyo(env: dict[str, str]) -> None:
    async with running_sandbox(SandboxOptions(api_keys=("pk_other",))) as sandbox:
        result = await asyncio.to_thread(check, {**env, "KLAVIYO_BASE_URL": sandbox.base_url})
    assert result.returncode == 1
    lines = lines_of(result)
    assert lines["klaviyo"].startswith("FAIL (") and "401" in lines["klaviyo"]
    assert lines["scopes"].startswith("FAIL (not checked")
    assert lines["kafka"].startswith("ok (")


async def test_missing_scopes_are_named(env: dict[str, str]) -> None:
    options = SandboxOptions(api_keys=(KEY,), error_rates={403: 1.0})
    async with running_sandbox(options) as sandbox:
        result = await asyncio.to_thread(check, {**env, "KLAVIYO_BASE_URL": sandbox.base_url})
    assert result.returncode == 1
    scopes = lines_of(result)["scopes"]
    assert scopes == "FAIL (missing profiles:read, events:write, profiles:write)"


def test_missing_topic_and_missing_key(env: dict[str, str]) -> None:
    result = check(
        {**env, "DLQ_TOPIC": "no-such-topic-here", "KLAVIYO_API_KEY": ""}, "--timeout", "5"
    )
    assert result.returncode == 1
    lines = lines_of(result)
    assert lines["config"].startswith("ok (")
    assert (
        lines["kafka"].startswith("FAIL (")
        and "missing topics: no-such-topic-here" in lines["kafka"]
    )
    assert lines["dlq"] == (
        "FAIL (DLQ_TOPIC=no-such-topic-here: the topic does not exist; create it (retention and"
        " ACLs as in docs/operations.md) or set DLQ_TOPIC to an existing topic)"
    )
    assert "KLAVIYO_API_KEY is not set" in lines["klaviyo"]


def test_unreachable_kafka(env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        result = check({**env, "KAFKA_BOOTSTRAP_SERVERS": closed}, "--timeout", "2")
    assert result.returncode == 1
    assert lines_of(result)["kafka"].startswith(f"FAIL (cannot reach {closed} within 2s")
    assert "%3|" not in result.stderr  # librdkafka's own noise is not shown


def test_bad_topic_routing_fails_config(env: dict[str, str]) -> None:
    result = check({**env, "TOPIC_HANDLERS": "{}"}, "--timeout", "5")
    assert result.returncode == 1
    assert lines_of(result)["config"].startswith("FAIL (") and "TOPICS" in result.stdout


# --- one validation path for check and run: one line naming the setting, never a traceback ---

# Nothing listens on either: these settings must be refused before any connection matters.
OFFLINE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KLAVIYO_BASE_URL": "http://127.0.0.1:9"}


def command(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    timeout = ["--timeout", "2"] if name == "check" else []
    return run_cli(
        *args, name, *timeout, env={"METRICS_PORT": "0", **OFFLINE, "KLAVIYO_API_KEY": KEY, **env}
    )


@pytest.mark.parametrize("name", ["check", "run"])
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TOPICS": "shop.order.placed"}, "TOPICS: not valid JSON"),
        ({"KAFKA_EXTRA_CONFIG": "acks=all"}, "KAFKA_EXTRA_CONFIG: not valid JSON"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"KAFKA_EXTRA_CONFIG": '{"no.such.property": "1"}'}, '"no.such.property"'),
        ({"KLAVIYO_BASE_URL": "a.klaviyo.com"}, "KLAVIYO_BASE_URL: Value error, must be an http"),
        ({"SCHEMA_REGISTRY_URL": "registry:8081"}, "SCHEMA_REGISTRY_URL"),
    ],
)
def test_bad_settings_are_one_line_in_check_and_run(
    name: str, env: dict[str, str], named: str
) -> None:
    result = command(name, env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert named in result.stdout + result.stderr
    if name == "check":
        assert result.returncode == 1 or result.stderr.startswith("error: ")


def test_run_without_key_is_one_line() -> None:
    result = command("run", {"KLAVIYO_API_KEY": ""})
    assert result.returncode == 2
    assert result.stderr == "error: KLAVIYO_API_KEY is not set\n"


def test_run_with_metrics_port_in_use_is_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = command("run", {"METRICS_PORT": str(port)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr
    assert f"error: METRICS_PORT: cannot listen on 0.0.0.0:{port}" in result.stderr


def test_config_file_unknown_keys_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('max_inflight = 500\nsend_mode = "batch"\n[kafka]\nbootstrap = "x:9092"\n')
    for name in ("check", "run"):
        result = command(name, {}, "--config", str(config))
        assert result.returncode == 2
        assert "unknown key 'max_inflight' (did you mean 'max_in_flight'?)" in result.stderr
        assert "unknown key 'kafka'" in result.stderr
        assert "Traceback" not in result.stderr


def test_config_file_of_known_keys_is_used(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('max_in_flight = 500\nSEND_MODE = "batch"\n')
    result = command("check", {}, "--config", str(config))
    assert lines_of(result)["config"].startswith("ok (") and "mode batch" in result.stdout


def test_readme_config_file_example_loads(tmp_path: Path) -> None:
    """The TOML example in the README is a file the relay accepts."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "relay.toml"
    config.write_text(block)
    result = command("check", {}, "--config", str(config))
    assert lines_of(result)["config"].startswith("ok (") and "mode batch" in result.stdout


async def test_a_block_per_account(env: dict[str, str]) -> None:
    """With KLAVIYO_ACCOUNTS each account is checked with its own key at its own URL: one
    refused key fails its own block only."""
    async with (
        running_sandbox(SandboxOptions(api_keys=("pk_a",))) as sandbox_a,
        running_sandbox(SandboxOptions(api_keys=("pk_b",))) as sandbox_b,
    ):
        accounts = {
            "KLAVIYO_API_KEY": "",
            "KLAVIYO_ACCOUNTS": '["a", "b"]',
            "KLAVIYO_ACCOUNT_A_API_KEY": "pk_a",
            "KLAVIYO_ACCOUNT_A_BASE_URL": sandbox_a.base_url,
            "KLAVIYO_ACCOUNT_A_RATE_LIMIT_SHARE": "0.5",
            "KLAVIYO_ACCOUNT_B_API_KEY": "pk_wrong",
            "KLAVIYO_ACCOUNT_B_BASE_URL": sandbox_b.base_url,
        }
        result = await asyncio.to_thread(check, {**env, **accounts})
    assert result.returncode == 1, result.stdout + result.stderr
    lines = lines_of(result)
    assert list(lines)[4:] == [
        "klaviyo[a]",
        "scopes[a]",
        "quota[a]",
        "klaviyo[b]",
        "scopes[b]",
        "quota[b]",
    ]
    assert lines["config"].startswith("ok (")
    assert lines["klaviyo[a]"].startswith(f"ok ({sandbox_a.base_url}")
    assert lines["scopes[a]"].startswith("ok (")
    assert "create_event 3500/60s, bulk_create_events 150/60s, share 0.5" in lines["quota[a]"]
    assert lines["klaviyo[b]"].startswith("FAIL (") and "refused (401)" in lines["klaviyo[b]"]
    assert "pk_a" not in result.stdout + result.stderr
