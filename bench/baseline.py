"""The naive baseline: the loop a shop would write first.

Poll one message, build the payload, call Klaviyo's official Python SDK (``klaviyo-api``)
synchronously, commit synchronously, repeat. To compare like with like the payload is built by
the relay's own decoder and handlers (the same bodies reach the sandbox), and every step of the
plan is sent through the SDK's matching call; the SDK's own retry (429/5xx) is left on.

``python -m bench.baseline --bootstrap B --group G --base-url URL [--count N] [--seconds S]``
prints one JSON line: ``{"processed": n, "failed": n, "seconds": s}``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import Consumer
from klaviyo_api import KlaviyoAPI

from consumer.codec import Decoder
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.client import profile_id_from_lookup
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.pipeline.sending import resolve
from consumer.settings import load_settings
from consumer.topics import CONTRACT_TOPICS


class Baseline:
    def __init__(self, base_url: str) -> None:
        settings = load_settings(klaviyo_api_key="pk_sandbox")
        self.decoder = Decoder.from_settings(settings)
        self.registry = HandlerRegistry.from_settings(settings)
        self.klaviyo = KlaviyoAPI("pk_sandbox", max_delay=60, max_retries=3, test_host=base_url)
        self.events = self.klaviyo.Events
        self.profiles = self.klaviyo.Profiles

    def handle(self, topic: str, value: bytes) -> None:
        plan = self.registry.plan(topic, self.decoder.decode(value), datetime.now(UTC))
        bindings: dict[str, str] = {}
        for step in plan.requests:
            request = resolve(step, bindings)
            answer = self.send(request)
            if request.binds:
                found = profile_id_from_lookup(answer)
                if found is not None:
                    bindings[request.binds] = found

    def send(self, request: KlaviyoRequest) -> Any:
        body = request.body
        if request.endpoint is Endpoint.CREATE_EVENT:
            return self.events.create_event(body)
        if request.endpoint is Endpoint.PROFILE_IMPORT:
            return self.profiles.create_or_update_profile(body)
        if request.endpoint is Endpoint.UPDATE_PROFILE:
            assert body is not None
            return self.profiles.update_profile(body["data"]["id"], body)
        if request.endpoint is Endpoint.GET_PROFILES:
            query = dict(request.query)
            answer = self.profiles.get_profiles(filter=query["filter"])
            return answer.to_dict() if hasattr(answer, "to_dict") else answer
        raise ValueError(f"the baseline does not send {request.endpoint}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (0: no limit)")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after S seconds")
    args = parser.parse_args(argv)
    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    baseline = Baseline(args.base_url)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(list(CONTRACT_TOPICS))
    processed = failed = 0
    began = time.monotonic()
    while not stopping:
        if args.count and processed + failed >= args.count:
            break
        if args.seconds and time.monotonic() - began >= args.seconds:
            break
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        topic, value = message.topic(), message.value()
        try:
            assert topic is not None and value is not None
            baseline.handle(topic, value)
            processed += 1
        except Exception:  # a naive loop logs and moves on
            failed += 1
        consumer.commit(message=message, asynchronous=False)
    consumer.close()
    seconds = time.monotonic() - began
    print(orjson.dumps({"processed": processed, "failed": failed, "seconds": seconds}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
