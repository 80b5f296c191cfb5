"""The chart's alert rules, evaluated by a real Prometheus scraping a running relay.

The rules are rendered by helm with their ``for:`` durations and rate windows shortened through
the chart's values (metrics.prometheusRule.for, .rateWindow), so an incident takes seconds:

- the sandbox answers 503 to every request until KlaviyoRelayKlaviyoErrors and
  KlaviyoRelayNoDeliveries fire, then recovers until both resolve;
- it answers 429 until KlaviyoRelayThrottled fires, then recovers until that resolves.

Needs helm and prometheus (dev/install-tools.sh builds both into ~/.cache/klaviyo-relay/bin).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from dev.harness import free_port
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.helm import FULLNAME, HELM, NAMESPACE, find_tool, one, render
from tests.fixtures.relay_harness import (
    EventFactory,
    RelayProcess,
    metrics_port,
    produce_events,
    relay_env,
    set_faults,
    wait_committed_to_end,
    wait_for,
)

PROMETHEUS = find_tool("prometheus")
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(
        HELM is None or PROMETHEUS is None,
        reason="helm or prometheus not found on PATH or in ~/.cache/klaviyo-relay/bin: "
        "run dev/install-tools.sh",
    ),
]

HOLD = "5s"  # every alert's `for:`
WINDOW = "20s"  # the rate windows
FAILING = ("KlaviyoRelayKlaviyoErrors", "KlaviyoRelayNoDeliveries")
THROTTLED = "KlaviyoRelayThrottled"
TOPIC = "shop.order.placed"
BATCH = 5  # events produced at each step
WAIT = 240.0  # hold + window + scrapes, on two busy cores


def rules_file(tmp_path: Path) -> Path:
    holds = ("halted", "down", "lagGrowing", "noDeliveries", "deadLetters", "throttled")
    values = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "for": dict.fromkeys((*holds, "klaviyoErrors"), HOLD),
                "rateWindow": WINDOW,
            }
        }
    }
    rule = one(render(values=values, tmp=tmp_path), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    """``start(metrics_port) -> base URL``: Prometheus scraping the relay every second, as the
    chart's ServiceMonitor would label it (job, namespace, pod)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        assert PROMETHEUS is not None
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_file(tmp_path))],
            "scrape_configs": [
                {
                    "job_name": f"{FULLNAME}-metrics",
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{target_port}"],
                            "labels": {"namespace": NAMESPACE, "pod": "relay-0"},
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("wb")
        started.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(60)


async def _get_json(url: str) -> Any:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url) as response,
        ):
            return await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def alert_states(prometheus: str) -> dict[str, str]:
    """Active alerts by name → "pending" or "firing" (a resolved alert is absent)."""
    body = await _get_json(f"{prometheus}/api/v1/alerts")
    assert body is not None, "Prometheus did not answer /api/v1/alerts"
    return {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}


async def until_firing(prometheus: str, *names: str) -> None:
    async def firing() -> bool:
        states = await alert_states(prometheus)
        return all(states.get(name) == "firing" for name in names)

    await wait_for(firing, within=WAIT, what=f"{', '.join(names)} firing", interval=1.0)


async def until_resolved(prometheus: str, *names: str) -> None:
    async def resolved() -> bool:
        return not set(names) & set(await alert_states(prometheus))

    await wait_for(resolved, within=WAIT, what=f"{', '.join(names)} resolved", interval=1.0)


async def test_alerts_fire_on_a_live_outage_and_resolve_after_it(
    kafka_broker: KafkaBroker,
    topic_factory: TopicFactory,
    prometheus_for: Any,
    tmp_path: Path,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory("alerts")
    factory = EventFactory()
    batches = iter(range(1_000))
    group = f"relay-alerts-{uuid.uuid4().hex[:8]}"

    def produce_batch() -> None:
        batch = next(batches)
        produce_events(
            bootstrap,
            [factory.event(topic, TOPIC, f"alert-{batch}-{i}", i) for i in range(BATCH)],
        )

    async with running_sandbox(SandboxOptions(api_keys=("pk_sandbox",), rate_limits=None)) as sb:
        env = relay_env(
            bootstrap,
            sb.base_url,
            {topic: TOPIC},
            group,
            topic_factory("dlq"),
            # Lag comes from librdkafka's statistics: every second, not every 5.
            KAFKA_EXTRA_CONFIG='{"statistics.interval.ms": "1000"}',
        )
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(lambda: metrics_port(relay) is not None, what="relay started")
            port = metrics_port(relay)
            assert port is not None
            prometheus = prometheus_for(port)

            async def scraping() -> bool:
                body = await _get_json(f"{prometheus}/api/v1/query?query=up")
                return bool(body and [r for r in body["data"]["result"] if r["value"][1] == "1"])

            await wait_for(scraping, what="Prometheus scraping the relay", interval=0.5)
            # A healthy start: the group has committed offsets, so lag is measured from them.
            produce_batch()
            await wait_committed_to_end(bootstrap, group, [topic], produced=BATCH)

            # Klaviyo down: every request 503, events held, nothing delivered.
            await set_faults(sb.base_url, {"error_rates": {"503": 1.0}})
            produce_batch()
            await until_firing(prometheus, *FAILING)
            await set_faults(sb.base_url, {"error_rates": {}})
            produce_batch()
            await until_resolved(prometheus, *FAILING)

            # Klaviyo throttling: every request 429.
            await set_faults(sb.base_url, {"error_rates": {"429": 1.0}})
            produce_batch()
            await until_firing(prometheus, THROTTLED)
            await set_faults(sb.base_url, {"error_rates": {}})
            produce_batch()
            await until_resolved(prometheus, THROTTLED, *FAILING)

            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()
