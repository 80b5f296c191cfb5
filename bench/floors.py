"""The floors the relay is measured against, in the same run, on the same machine.

Absolute numbers on a shared two-core machine move by tens of percent from run to run; a ratio
to a floor measured minutes apart on the same machine does not. Two floors:

- **codec floor** (:func:`codec_floor`, in the bench's own process): the least any relay must
  spend per domain event: fastavro decodes the same events the relay reads (the same value
  bytes, the writer schema already parsed) and orjson encodes each datum. Reported as CPU µs
  per event; the relay's CPU µs per event (all threads, from ``measure.py``) is divided by it.
- **HTTP floor** (``python -m bench.floors http``, its own process, like the relay): a bare
  aiohttp client posting Create Event bodies, each with a fresh ``unique_id``, to the same
  sandbox with ``--concurrency`` requests in flight. Nothing else: no decode, no handlers, no
  limiter, no retries. Reported as requests/s and CPU µs per request; the relay's Klaviyo
  requests/s in realtime mode is divided by it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from fastavro import schemaless_reader

from bench.loadgen import LoadGenerator
from consumer.codec import SINGLE_OBJECT_MAGIC
from consumer.schemas import default_schemas_dir, load_store

# One Create Event body as the relay sends it (shape only; ids change per request).
_BODY: dict[str, Any] = {
    "data": {
        "type": "event",
        "attributes": {
            "properties": {"OrderId": "o-1", "ItemNames": ["Mug", "Tea"], "ItemCount": 2},
            "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
            "profile": {
                "data": {
                    "type": "profile",
                    "attributes": {
                        "email": "bench-000001@shopmail.io",
                        "phone_number": "+16172000001",
                        "external_id": "bench-000001",
                    },
                }
            },
            "time": "2026-12-01T10:00:00.000Z",
            "value": 42.5,
            "value_currency": "EUR",
            "unique_id": "",
        },
    }
}
_HEADERS = {
    "Authorization": "Klaviyo-API-Key pk_sandbox",
    "revision": "2026-07-15",
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}


@dataclass(frozen=True)
class CodecFloor:
    events: int
    cpu_us_per_event: float


def _orjson_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError


def codec_floor(gen: LoadGenerator, count: int) -> CodecFloor:
    """fastavro decode + orjson encode of ``count`` events from ``gen``, CPU µs per event."""
    store = load_store(default_schemas_dir())
    header = len(SINGLE_OBJECT_MAGIC) + 8
    values = [event.value for event in gen.events(count)]
    writers = {}
    for value in values:
        fingerprint = value[len(SINGLE_OBJECT_MAGIC) : header]
        if fingerprint not in writers:
            schema = store.by_fingerprint(fingerprint)
            assert schema is not None
            writers[fingerprint] = schema.parsed
    began = time.process_time()
    for value in values:
        body = value[header:]
        datum = schemaless_reader(io.BytesIO(body), writers[value[2:header]], None)
        orjson.dumps(datum, default=_orjson_default)
    cpu = time.process_time() - began
    return CodecFloor(count, round(cpu / count * 1e6, 2))


async def _post_loop(
    session: aiohttp.ClientSession, url: str, deadline: float, prefix: str, counts: list[int]
) -> None:
    body = _BODY
    attributes = body["data"]["attributes"]
    while time.monotonic() < deadline:
        attributes["unique_id"] = f"{prefix}-{counts[0]}"
        counts[0] += 1
        async with session.post(url, data=orjson.dumps(body), headers=_HEADERS) as response:
            await response.read()
            if response.status != 202:
                counts[1] += 1


async def http_floor(base_url: str, seconds: float, concurrency: int) -> dict[str, float]:
    url = base_url.rstrip("/") + "/api/events"
    counts = [0, 0]  # requests sent, refused
    prefix = f"floor-{time.time_ns()}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began, cpu = time.monotonic(), _cpu()
        deadline = began + seconds
        loops = [_post_loop(session, url, deadline, prefix, counts) for _ in range(concurrency)]
        await asyncio.gather(*loops)
        took, cpu = time.monotonic() - began, _cpu() - cpu
    requests = counts[0]
    return {
        "requests": requests,
        "refused": counts[1],
        "seconds": round(took, 2),
        "requests_per_s": round(requests / took, 1),
        "cpu_us_per_request": round(cpu / max(requests, 1) * 1e6, 1),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Floors:
    codec_us_per_event: float
    http_requests_per_s: float
    http_us_per_request: float
    http_concurrency: int


def measure_floors(
    gen: LoadGenerator, base_url: str, *, events: int, seconds: float, concurrency: int = 64
) -> Floors:
    """Both floors now: the codec floor here, the HTTP floor in a process of its own (like the
    relay's, so neither shares a GIL with the bench's sampling threads)."""
    codec = codec_floor(gen, events)
    command = [sys.executable, "-m", "bench.floors", "http", "--base-url", base_url]
    command += ["--seconds", str(seconds), "--concurrency", str(concurrency)]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=seconds + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"the HTTP floor failed: {done.stderr[-2000:]}")
    http = orjson.loads(done.stdout.strip().splitlines()[-1])
    if http["refused"]:
        raise RuntimeError(f"the sandbox refused {http['refused']} floor requests")
    return Floors(
        codec.cpu_us_per_event, http["requests_per_s"], http["cpu_us_per_request"], concurrency
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floors")
    sub = parser.add_subparsers(dest="floor", required=True)
    http = sub.add_parser("http", help="bare aiohttp client against the sandbox")
    http.add_argument("--base-url", required=True)
    http.add_argument("--seconds", type=float, default=10.0)
    http.add_argument("--concurrency", type=int, default=64)
    codec = sub.add_parser("codec", help="fastavro decode + orjson encode")
    codec.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    if args.floor == "http":
        result = asyncio.run(http_floor(args.base_url, args.seconds, args.concurrency))
    else:
        floor = codec_floor(LoadGenerator(), args.events)
        result = {"events": floor.events, "cpu_us_per_event": floor.cpu_us_per_event}
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
