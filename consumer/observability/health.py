"""The operations port: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for Kubernetes.

Liveness only says the event loop answers: restarting a relay that is halted on a revoked key
or waiting for the group would not help, so those show up in readiness (and in the
``klaviyo_relay_ready`` / ``klaviyo_relay_halted`` gauges the alerts watch) instead.

Ready means "a working member of the consumer group": it has joined the group (its first
assignment arrived, even an empty one), it is not halted on a refused API key, and it is not
shutting down. An idle member with no partitions is ready: it is the standby that takes
partitions over when another member leaves, and a rollout with more pods than partitions must
not stall on it. Klaviyo being unreachable does not make a pod unready (every pod would go
unready together and block rollouts and node drains while events wait safely in Kafka); it is
in the body and in alerts instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from consumer.observability.metrics import (
    ASSIGNED_PARTITIONS,
    REGISTRY,
    RELAY_HALTED,
    RELAY_READY,
)


@dataclass
class RelayState:
    """What the pipeline knows about itself; it sets the fields, the probes read them."""

    joined: bool = False
    partitions: int = 0
    halted: bool = False
    # Why, in words an operator can act on (set with ``halted``).
    halt_reason: str = "klaviyo refused the API key (401/403): restart with a valid key"
    stopping: bool = False
    klaviyo_reachable: bool = False
    # The last Kafka client error while no partition is assigned (e.g. every broker down).
    kafka_problem: str | None = None

    @property
    def ready(self) -> bool:
        return self.joined and not self.halted and not self.stopping

    def not_ready_because(self) -> list[str]:
        """What keeps the pod from being ready, in words an operator can act on (the body of a
        503). Klaviyo's reachability is not among them (see above): it has its own field."""
        reasons = []
        if self.halted:
            reasons.append(self.halt_reason)
        if self.stopping:
            reasons.append("shutting down")
        if not self.joined:
            kafka = f": {self.kafka_problem}" if self.kafka_problem else ""
            reasons.append(
                "not in the consumer group yet: kafka not reachable, topics missing,"
                f" or the group is rebalancing{kafka}"
            )
        return reasons


class OperationsPortError(Exception):
    """The operations port (METRICS_PORT) cannot be bound; the message names it."""


_STATE_KEY = web.AppKey("relay_state", RelayState)


async def _metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[_STATE_KEY]
    body = {
        "ready": state.ready,
        "joined": state.joined,
        "partitions": state.partitions,
        "halted": state.halted,
        "stopping": state.stopping,
        "klaviyo_reachable": state.klaviyo_reachable,
        "missing": state.not_ready_because(),
    }
    return web.Response(
        body=orjson.dumps(body),
        status=200 if state.ready else 503,
        content_type="application/json",
    )


def _as_float(flag: Callable[[], bool]) -> Callable[[], float]:
    return lambda: float(flag())


def create_app(state: RelayState) -> web.Application:
    app = web.Application()
    app[_STATE_KEY] = state
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def start_http_server(
    port: int,
    state: RelayState,
    *,
    host: str = "0.0.0.0",
    halted: Mapping[str, Callable[[], bool]] | None = None,
) -> web.AppRunner:
    """Serve the operations endpoints until ``await runner.cleanup()``.

    The ready/halted gauges read ``state`` at scrape time, so they can never disagree with
    ``/readyz``. ``port=0`` picks a free port (tests); find it in ``runner.addresses``.
    """
    RELAY_READY.set_function(lambda: float(state.ready))
    # One account (``default``) halts the relay; of several, each halts alone (consumer.accounts).
    for account, is_halted in (halted or {"default": lambda: state.halted}).items():
        RELAY_HALTED.labels(account).set_function(_as_float(is_halted))
    ASSIGNED_PARTITIONS.set_function(lambda: float(state.partitions))
    runner = web.AppRunner(create_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OperationsPortError(
            f"METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    return runner
