"""The sandbox for benchmarks, in its own process, with an instrument on the side.

``python -m bench.sandbox_proc --rate-limits default|none --window-scale S --latency-ms A-B``
serves :mod:`klaviyo_sandbox` (``keep_events=False``: memory stays flat over a million events)
and prints one JSON line ``{"base_url": ..., "control_url": ...}`` once it listens.

The control port (never the API port, so the hot path is untouched) serves
``GET /summary``, ``GET /progress`` (cheap: counts only), ``GET /tracked`` (see below) and
``POST /reset``. The summary comes from two hooks on the sandbox objects:

- every event the store records: its end-to-end delay, the sandbox's clock minus the event's
  ``time`` (the domain event's ``occurred_at``), kept in a compact float array, so percentiles
  are exact over every accepted event (no sampling, no histogram buckets);
- every quota admission: counted per steady window (window index = clock // window length), so
  the share of the steady limit used is measured window by window, exactly as Klaviyo counts
  (refusals too, per window).

``/tracked`` lists ``[occurred_at, delay, bulk, after]`` of every accepted event of
:data:`TRACKED_METRIC` (password resets: a few per cent of the load; ``bulk`` 1 when it came in a
Bulk Create Events job; ``after`` seconds since its profile's previous one arrived, -1 for the
first), so a scenario can take the delay percentiles of the ones produced in a
span of its choosing (the outage scenario's catch-up) and see which path the slow ones took.
``/realtime`` lists ``[arrival, delay]`` of every event accepted on Create Event: how much of
that endpoint's quota went to events that were already late (an outage's backlog).

With ``--trace``, ``/trace`` lists every event the store took, accepted or deduplicated:
``[clock, fate, endpoint, metric, unique_id, job]`` (``job``: the bulk request's number, from 1;
0 for a Create Event), which the kill -9 scenario attributes each resend to its cause with (off
by default: it grows with the run).

uvloop runs this process's event loop when it is installed (``--no-uvloop`` to compare): the
sandbox shares the two cores with the relay, so every microsecond it saves goes to the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from array import array
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.app import Sandbox
from klaviyo_sandbox.cli import parse_latency, parse_rate_limits
from klaviyo_sandbox.facts import Limit
from klaviyo_sandbox.fixed_windows import FixedWindowQuota
from klaviyo_sandbox.oauth import OAuthOptions
from klaviyo_sandbox.store import EventFate

# The Klaviyo SDK (klaviyo-api 25) sends this revision; the relay sends an older one, which a
# sandbox on this revision accepts as well.
SDK_REVISION = "2026-10-15"
TRACKED_METRIC = "Reset Password"


class CountingQuota(FixedWindowQuota):
    """An endpoint's quota that also counts admissions and refusals per steady window."""

    def __init__(self, limit: Limit) -> None:
        super().__init__(limit)
        self.admitted: dict[int, int] = {}
        self.refused = 0
        self.refused_by_window: dict[int, int] = {}

    def take(self, now: float) -> int | None:
        retry_after = super().take(now)
        window = int(now // self.steady.seconds)
        if retry_after is None:
            self.admitted[window] = self.admitted.get(window, 0) + 1
        else:
            self.refused += 1
            self.refused_by_window[window] = self.refused_by_window.get(window, 0) + 1
        return retry_after


class Recorder:
    def __init__(self, sandbox: Sandbox, *, trace: bool = False) -> None:
        self.sandbox = sandbox
        self.tracing = trace
        self.reset()

    def reset(self) -> None:
        self.sandbox.reset()
        self.delays = array("d")
        self.first = 0.0
        self.last = 0.0
        self.duplicates = 0
        self.tracked = array("d")  # occurred_at, delay, bulk (0/1), after, occurred_at, ...
        # The arrival of each profile's last tracked event: ``after`` is how long a tracked
        # event arrived after its profile's previous one (-1: the first), to tell a reset that
        # waited behind its key's earlier ones from one that waited on its own.
        self._last_tracked: dict[str, float] = {}
        self.realtime = array("d")  # arrival, delay, arrival, delay, ... (Create Event only)
        self.trace: list[tuple[float, str, str, str, str, int]] = []
        self.jobs = 0  # bulk requests the store took events from
        if self.tracing:
            bulk = type(self.sandbox)._bulk_create_events
            sandbox = self.sandbox

            def bulk_create_events(request: Any, body: Any, headers: Any) -> web.Response:
                self.jobs += 1
                return bulk(sandbox, request, body, headers)

            sandbox._bulk_create_events = bulk_create_events  # type: ignore[method-assign]
        limits = self.sandbox.options.rate_limits or {}
        self.sandbox.quotas = {name: CountingQuota(limit) for name, limit in limits.items()}
        state = self.sandbox.state
        record = type(state).record_event

        def record_event(
            endpoint: str, event: Any, profile_data: Any, backfill: bool = False
        ) -> EventFate:
            fate = record(state, endpoint, event, profile_data, backfill)
            now = time.time()
            if fate is EventFate.RECORDED:
                occurred = datetime.fromisoformat(event["time"]).timestamp()
                self.delays.append(now - occurred)
                if event["metric"]["data"]["attributes"]["name"] == TRACKED_METRIC:
                    bulk = float(endpoint == "bulk_create_events")
                    who = str((profile_data.get("attributes") or {}).get("email"))
                    after = now - self._last_tracked.get(who, now + 1)
                    self._last_tracked[who] = now
                    self.tracked.extend((occurred, now - occurred, bulk, after))
                if endpoint == "create_event":
                    self.realtime.extend((now, now - occurred))
                if not self.first:
                    self.first = now
                self.last = now
            elif fate is EventFate.DUPLICATE:
                self.duplicates += 1
            if self.tracing:
                metric = event["metric"]["data"]["attributes"]["name"]
                unique_id = str(event.get("unique_id"))
                job = self.jobs if endpoint == "bulk_create_events" else 0
                self.trace.append((now, fate.value, endpoint, metric, unique_id, job))
            return fate

        state.record_event = record_event  # type: ignore[method-assign]

    def progress(self) -> dict[str, Any]:
        return {
            "accepted": len(self.delays),
            "first": self.first,
            "last": self.last,
            "throttled": sum(self.sandbox.throttled.values()),
        }

    def summary(self) -> dict[str, Any]:
        delays = sorted(self.delays)
        sandbox = self.sandbox
        quotas = {
            name: {
                "steady_limit": q.steady.limit,
                "steady_seconds": q.steady.seconds,
                "admitted": {str(k): v for k, v in sorted(q.admitted.items())},
                "refused": q.refused,
                "refused_by_window": {str(k): v for k, v in sorted(q.refused_by_window.items())},
            }
            for name, q in sandbox.quotas.items()
            if isinstance(q, CountingQuota)
        }
        return {
            "accepted": len(delays),
            "duplicates": self.duplicates,
            "first": self.first,
            "last": self.last,
            "p50": _quantile(delays, 0.50),
            "p99": _quantile(delays, 0.99),
            "max": delays[-1] if delays else None,
            "requests": {e: {str(s): n for s, n in c.items()} for e, c in sandbox.counts.items()},
            "throttled": sum(sandbox.throttled.values()),
            "quotas": quotas,
        }

    def tracked_rows(self) -> list[list[float]]:
        t = self.tracked
        return [[t[i], t[i + 1], t[i + 2], t[i + 3]] for i in range(0, len(t), 4)]

    def realtime_pairs(self) -> list[list[float]]:
        r = self.realtime
        return [[r[i], r[i + 1]] for i in range(0, len(r), 2)]


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def serve(args: argparse.Namespace) -> None:
    options = SandboxOptions(
        revision=SDK_REVISION,
        rate_limits=parse_rate_limits(args.rate_limits, args.window_scale),
        latency_ms=parse_latency(args.latency_ms),
        keep_events=False,
        seed=1,
        oauth=_oauth(args),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_sandbox(options, 0) as sb:
        recorder = Recorder(sb.sandbox, trace=args.trace)

        async def summary(_: web.Request) -> web.Response:
            return web.Response(
                body=orjson.dumps(recorder.summary()), content_type="application/json"
            )

        async def progress(_: web.Request) -> web.Response:
            return web.Response(
                body=orjson.dumps(recorder.progress()), content_type="application/json"
            )

        async def reset(_: web.Request) -> web.Response:
            recorder.reset()
            return web.Response(status=204)

        async def tracked(_: web.Request) -> web.Response:
            return web.Response(
                body=orjson.dumps(recorder.tracked_rows()), content_type="application/json"
            )

        async def realtime(_: web.Request) -> web.Response:
            return web.Response(
                body=orjson.dumps(recorder.realtime_pairs()), content_type="application/json"
            )

        control = web.Application()
        control.router.add_get("/summary", summary)
        control.router.add_get("/progress", progress)
        control.router.add_post("/reset", reset)
        control.router.add_get("/tracked", tracked)
        control.router.add_get("/realtime", realtime)

        async def trace(_: web.Request) -> web.Response:
            return web.Response(body=orjson.dumps(recorder.trace), content_type="application/json")

        control.router.add_get("/trace", trace)
        runner = web.AppRunner(control, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        print(
            orjson.dumps(
                {"base_url": sb.base_url, "control_url": f"http://127.0.0.1:{port}"}
            ).decode(),
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def _oauth(args: argparse.Namespace) -> OAuthOptions | None:
    """The token endpoint (scenario 8) when ``--oauth-client ID:SECRET`` is given."""
    if not args.oauth_client:
        return None
    client_id, _, secret = args.oauth_client.partition(":")
    return OAuthOptions(
        clients={client_id: secret},
        refresh_tokens=(args.oauth_refresh_token,),
        token_lifetime=args.oauth_token_lifetime,
        rotate=args.oauth_rotate,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_proc")
    parser.add_argument("--rate-limits", default="none")
    parser.add_argument("--window-scale", type=float, default=1.0)
    parser.add_argument("--latency-ms", default=None)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--trace", action="store_true", help="keep every event's fate (/trace)")
    parser.add_argument("--oauth-client", help="ID:SECRET: serve /oauth/token (scenario 8)")
    parser.add_argument("--oauth-refresh-token", default="rt_sandbox")
    parser.add_argument("--oauth-token-lifetime", type=int, default=3600)
    parser.add_argument("--oauth-rotate", action="store_true")
    args = parser.parse_args(argv)
    if not args.no_uvloop:
        try:
            import uvloop  # noqa: PLC0415  (optional: the bench extra)
        except ImportError:
            pass
        else:
            uvloop.run(serve(args))
            return 0
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
