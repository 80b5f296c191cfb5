"""Talking to Klaviyo: request values, outcomes, the client, rate limiting, retries, bulk jobs.

The client and bulk modules (aiohttp) load on first use, so importing the request value
types (as handlers and the sandbox do) does not pull in the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from consumer.klaviyo.classify import classify_response, parse_retry_after
from consumer.klaviyo.outcomes import (
    Accepted,
    Fatal,
    KlaviyoError,
    Outcome,
    Permanent,
    Retryable,
)
from consumer.klaviyo.ratelimit import EndpointBudget, Permit, RateLimiter
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan, PlanWarning
from consumer.klaviyo.retry import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from consumer.klaviyo.bulk import BulkJob, bad_items, build_bulk_jobs
    from consumer.klaviyo.client import KlaviyoClient, encode_body, profile_id_from_lookup

_LAZY = {
    "KlaviyoClient": "consumer.klaviyo.client",
    "encode_body": "consumer.klaviyo.client",
    "profile_id_from_lookup": "consumer.klaviyo.client",
    "BulkJob": "consumer.klaviyo.bulk",
    "bad_items": "consumer.klaviyo.bulk",
    "build_bulk_jobs": "consumer.klaviyo.bulk",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Accepted",
    "BulkJob",
    "Endpoint",
    "EndpointBudget",
    "Fatal",
    "KlaviyoClient",
    "KlaviyoError",
    "KlaviyoRequest",
    "Outcome",
    "Permanent",
    "Permit",
    "Plan",
    "PlanWarning",
    "RateLimiter",
    "RetryPolicy",
    "Retryable",
    "bad_items",
    "build_bulk_jobs",
    "call_with_retries",
    "classify_response",
    "encode_body",
    "parse_retry_after",
    "profile_id_from_lookup",
]
