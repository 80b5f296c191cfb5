"""``python -m klaviyo_sandbox`` (and ``klaviyo-relay sandbox``, which runs the same command):
options, start-up line, serving, and stopping on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import click
import orjson
import pytest
from click.testing import CliRunner

from consumer.cli import cli
from consumer.cli import sandbox as relay_sandbox_cli
from klaviyo_sandbox.cli import parse_latency, parse_rate_limits
from klaviyo_sandbox.cli import sandbox as sandbox_command
from klaviyo_sandbox.facts import PUBLISHED_LIMITS
from tests.fixtures.sandbox import HEADERS, event_body


def test_rate_limits_default_none_and_json_scaled() -> None:
    assert parse_rate_limits("none", 0.01) is None
    scaled = parse_rate_limits("default", 0.01)
    assert scaled is not None
    for name, limit in PUBLISHED_LIMITS.items():
        assert scaled[name].burst.requests == limit.burst.requests
        assert scaled[name].burst.seconds == pytest.approx(limit.burst.seconds * 0.01)
        assert scaled[name].steady.seconds == pytest.approx(limit.steady.seconds * 0.01)
    given = {
        "create_event": {
            "burst": {"requests": 5, "seconds": 2},
            "steady": {"requests": 9, "seconds": 10},
        }
    }
    custom = parse_rate_limits(orjson.dumps(given).decode(), 1.0)
    assert custom is not None
    assert (custom["create_event"].burst.requests, custom["create_event"].steady.seconds) == (5, 10)
    assert custom["get_profiles"] == PUBLISHED_LIMITS["get_profiles"]


@pytest.mark.parametrize("raw", ["{", "[]", '{"nope": {}}', '{"create_event": {"burst": 1}}'])
def test_bad_rate_limits_are_refused(raw: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_rate_limits(raw, 1.0)


def test_latency_forms() -> None:
    assert parse_latency(None) == (0.0, 0.0)
    assert parse_latency("50-150") == (50.0, 150.0)
    assert parse_latency("20") == (20.0, 20.0)
    for bad in ("a-b", "150-50", "-5"):
        with pytest.raises(click.BadParameter):
            parse_latency(bad)


@pytest.mark.parametrize(
    "args",
    [
        ["--error-rate", "503"],
        ["--error-rate", "503=2"],
        ["--error-rate", "200=0.1"],
        ["--latency-ms", "x"],
        ["--challenge-rate", "2"],
        ["--partial-failure-rate", "-0.5"],
    ],
)
def test_bad_options_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--port", "0", *args])
    assert result.exit_code == 2, result.output


def test_the_relay_cli_runs_the_sandbox_command_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert relay_sandbox_cli.sandbox is sandbox_command
    # Where the sandbox is not installed (the relay's wheel, its image), the command says so.
    monkeypatch.setitem(sys.modules, "klaviyo_sandbox.cli", None)
    missing = relay_sandbox_cli._load()
    result = CliRunner().invoke(missing, ["--port", "0"])
    assert result.exit_code == 1
    assert "not installed" in result.output
    assert "make venv" in result.output


async def test_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "klaviyo_sandbox",
        "--port",
        "0",
        "--rate-limits",
        "none",
        "--error-rate",
        "503=1.0",
        "--seed",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
        match = re.fullmatch(r"Klaviyo sandbox listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        base_url = match.group(1)
        # Then what a developer needs next: the key it accepts and what to export.
        rest = [(await proc.stdout.readline()).decode().rstrip("\n") for _ in range(5)]
        assert rest == [
            "accepted API key(s): pk_sandbox",
            "point the relay at it with:",
            f"  export KLAVIYO_BASE_URL={base_url}",
            "  export KLAVIYO_API_KEY=pk_sandbox",
            f"what it received: {base_url}/ (inbox page; JSON at /_sandbox/events)",
        ]
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base_url}/api/events", data=orjson.dumps(event_body()), headers=HEADERS
            ) as response:
                assert response.status == 503
                assert "RateLimit-Limit" not in response.headers
            async with session.post(
                f"{base_url}/_sandbox/faults", data=orjson.dumps({"error_rates": {}})
            ) as response:
                assert response.status == 200
            async with session.post(
                f"{base_url}/api/events", data=orjson.dumps(event_body()), headers=HEADERS
            ) as response:
                assert response.status == 202
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
