"""The operations port: probes follow RelayState, /metrics serves the relay's registry."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.observability.health import RelayState, start_http_server
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.fixtures.relay_harness import RelayProcess, metrics_port, readiness, relay_env, wait_for


@pytest.fixture
async def served() -> AsyncIterator[tuple[RelayState, str]]:
    state = RelayState()
    runner = await start_http_server(0, state, host="127.0.0.1")
    try:
        host, port = runner.addresses[0][:2]
        yield state, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as resp,
    ):
        return resp.status, resp.headers["Content-Type"], await resp.text()


def _gauge(text: str, name: str) -> float:
    # klaviyo_relay_halted has one series per account (other tests' relays leave theirs): the
    # relay's own without KLAVIYO_ACCOUNTS is ``default``.
    for family in text_string_to_metric_families(text):
        if family.name == name:
            (sample,) = [
                s for s in family.samples if s.labels.get("account", "default") == "default"
            ]
            return float(sample.value)
    raise AssertionError(f"{name} not exposed")


async def test_healthz_is_alive_whatever_the_state(served: tuple[RelayState, str]) -> None:
    state, base = served
    for halted in (False, True):
        state.halted = halted
        status, _, body = await _get(base + "/healthz")
        assert status == 200
        assert body.strip() == "ok"


@pytest.mark.parametrize(
    ("joined", "partitions", "halted", "stopping", "reachable", "ready"),
    [
        (False, 0, False, False, True, False),  # not yet a member of the group
        (True, 0, False, False, True, True),  # an idle member (more pods than partitions)
        (True, 3, True, False, True, False),  # halted on a revoked key
        (True, 3, False, True, True, False),  # shutting down
        (True, 3, False, False, False, True),  # Klaviyo unreachable: events wait in Kafka
        (True, 3, False, False, True, True),
    ],
)
async def test_readyz_means_a_working_group_member(
    served: tuple[RelayState, str],
    *,
    joined: bool,
    partitions: int,
    halted: bool,
    stopping: bool,
    reachable: bool,
    ready: bool,
) -> None:
    state, base = served
    state.joined, state.partitions, state.halted = joined, partitions, halted
    state.stopping, state.klaviyo_reachable = stopping, reachable
    status, content_type, body = await _get(base + "/readyz")
    assert status == (200 if ready else 503)
    assert content_type.startswith("application/json")
    assert '"halted":' + ("true" if halted else "false") in body
    assert f'"partitions":{partitions}' in body

    # The gauges the alerts watch agree with the probe at every scrape.
    _, _, metrics = await _get(base + "/metrics")
    assert _gauge(metrics, "klaviyo_relay_ready") == float(ready)
    assert _gauge(metrics, "klaviyo_relay_halted") == float(halted)
    assert _gauge(metrics, "klaviyo_relay_assigned_partitions") == float(partitions)


async def test_metrics_in_prometheus_and_openmetrics_formats(
    served: tuple[RelayState, str],
) -> None:
    _, base = served
    status, content_type, text = await _get(base + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# TYPE klaviyo_relay_events_consumed_total counter" in text

    status, content_type, text = await _get(
        base + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert "# TYPE klaviyo_relay_build info" in text
    assert text.rstrip().endswith("# EOF")


async def test_unknown_path_is_404(served: tuple[RelayState, str]) -> None:
    _, base = served
    status, _, _ = await _get(base + "/")
    assert status == 404


async def test_readyz_says_what_is_missing(served: tuple[RelayState, str]) -> None:
    state, base = served
    state.kafka_problem = "127.0.0.1:1: 1/1 brokers are down"
    _, _, body = await _get(base + "/readyz")
    missing = orjson.loads(body)["missing"]
    assert len(missing) == 1
    assert missing[0].startswith("not in the consumer group yet") and "127.0.0.1:1" in missing[0]

    state.halted = state.joined = True
    _, _, body = await _get(base + "/readyz")
    assert orjson.loads(body)["missing"] == [
        "klaviyo refused the API key (401/403): restart with a valid key"
    ]

    state.halted = False
    status, _, body = await _get(base + "/readyz")
    assert (status, orjson.loads(body)["missing"]) == (200, [])


async def test_relay_with_a_refused_key_and_no_kafka(tmp_path: Path) -> None:
    """A relay started with a revoked key and a broker that is not there: /readyz names both,
    Klaviyo counts as reachable (it answered), "relay started" comes before "relay halted", and
    the broker's refusals are summarised instead of logged many times a second."""
    nowhere = "127.0.0.1:1"
    async with running_sandbox(SandboxOptions(fail_auth=True, rate_limits=None)) as sandbox:
        env = relay_env(nowhere, sandbox.base_url, {"src": "shop.account.created"}, "g", "dlq")
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(lambda: metrics_port(relay) is not None, what="relay started")
            port = metrics_port(relay)
            assert port is not None

            async def kafka_named() -> bool:
                missing = (await readiness(port))["missing"]
                return any(nowhere in reason for reason in missing)

            await wait_for(kafka_named, what="/readyz to name the broker")
            # Not a synchronisation: the log is judged over a window of three seconds, in which
            # librdkafka retries about 20 times a second (an unsummarised log: ~100 lines).
            until = time.monotonic() + 3.0
            await wait_for(lambda: time.monotonic() >= until, what="a window of retries")
            body = await readiness(port)
            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()
    assert body["status"] == 503
    assert body["halted"] is True and body["klaviyo_reachable"] is True
    assert body["missing"][0].startswith("klaviyo refused the API key")
    messages = [str(line.get("message")) for line in relay.log_lines()]
    started = messages.index("relay started")
    halted = next(i for i, m in enumerate(messages) if "relay halted" in m)
    assert started < halted
    kafka_lines = [m for m in messages if "kafka client error" in m or "Connect to" in m]
    assert 1 <= len(kafka_lines) <= 4, kafka_lines
