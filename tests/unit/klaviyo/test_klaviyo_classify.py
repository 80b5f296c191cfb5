"""Classification of Klaviyo's answers (and its edge's): every status, JSON:API vs HTML auth
errors, Retry-After, and the partial-failure header reduced to bounded field names."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from consumer.klaviyo.classify import classify_response, partial_failure_fields
from consumer.klaviyo.outcomes import Accepted, Fatal, KlaviyoError, Permanent, Retryable

JSON_API = {"Content-Type": "application/vnd.api+json"}
CHALLENGE_HEADERS = {"Content-Type": "text/html; charset=UTF-8", "cf-mitigated": "challenge"}
CHALLENGE_BODY = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>"


def errors(status: int, code: str) -> bytes:
    return orjson.dumps({"errors": [{"status": status, "code": code, "title": "No."}]})


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_accepted(status: int) -> None:
    assert classify_response(status, {}, b"") == Accepted(status)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 524])
def test_temporary_statuses_are_retryable_with_retry_after(status: int) -> None:
    outcome = classify_response(status, {"Retry-After": "7"}, b"")
    assert outcome == Retryable(status, f"http_{status}", retry_after=7.0)


@pytest.mark.parametrize("status", [408, 425])
def test_proxy_statuses_without_retry_after_back_off_on_their_own(status: int) -> None:
    assert classify_response(status, {}, b"<html>timeout</html>") == Retryable(
        status, f"http_{status}"
    )


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 413, 415, 422, 418])
def test_other_4xx_are_permanent(status: int) -> None:
    outcome = classify_response(status, JSON_API, errors(status, "invalid"))
    assert outcome == Permanent(status, (KlaviyoError(status, "invalid", "No."),))


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "authentication_failed"),
        (401, "not_authenticated"),
        (403, "permission_denied"),
        (403, "not_authenticated"),
    ],
)
@pytest.mark.parametrize("content_type", ["application/vnd.api+json", "application/json"])
def test_klaviyo_json_api_auth_errors_are_fatal(status: int, code: str, content_type: str) -> None:
    outcome = classify_response(status, {"content-type": content_type}, errors(status, code))
    assert isinstance(outcome, Fatal)
    assert outcome.status == status and outcome.errors[0].code == code


@pytest.mark.parametrize("status", [401, 403])
def test_cloudflare_challenge_is_retryable_not_fatal(status: int) -> None:
    outcome = classify_response(status, CIMultiDict(CHALLENGE_HEADERS), CHALLENGE_BODY)
    assert outcome == Retryable(status, "edge_challenge", edge_kind="challenge")


@pytest.mark.parametrize(
    ("headers", "body", "kind"),
    [
        ({"Content-Type": "text/html"}, b"<html>Forbidden</html>", "html"),
        ({"CF-Mitigated": "Challenge", "Content-Type": "text/html"}, CHALLENGE_BODY, "challenge"),
        ({}, b"", "other"),
        ({"Content-Type": "text/plain"}, b"Forbidden", "other"),
        # JSON, but not a JSON:API error document.
        ({"Content-Type": "application/json"}, b'{"message": "Forbidden"}', "other"),
        # A JSON:API error document without an auth code: not Klaviyo saying the key is bad.
        (JSON_API, errors(403, "blocked"), "other"),
        # Klaviyo's auth code, but under an HTML content type: an edge page quoting it.
        ({"Content-Type": "text/html"}, errors(403, "permission_denied"), "html"),
    ],
)
def test_edge_answers_are_retryable_by_kind(
    headers: dict[str, str], body: bytes, kind: str
) -> None:
    outcome = classify_response(403, headers, body)
    assert outcome == Retryable(403, f"edge_{kind}", edge_kind=kind)


def test_edge_answers_honour_retry_after() -> None:
    outcome = classify_response(403, {**CHALLENGE_HEADERS, "Retry-After": "30"}, CHALLENGE_BODY)
    assert isinstance(outcome, Retryable) and outcome.retry_after == 30.0


def test_partial_failure_header_on_an_accepted_answer() -> None:
    outcome = classify_response(202, {"x-klaviyo-partial-failure": "phone_number"}, b"")
    assert outcome == Accepted(202, dropped_fields=("phone_number",))


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        (None, ()),
        ("phone_number", ("phone_number",)),
        ("Phone_Number", ("phone_number",)),
        ("/data/attributes/profile/data/attributes/phone_number", ("phone_number",)),
        ("location.city, email", ("city", "email")),
        ("phone_number;phone_number", ("phone_number",)),
        ("", ("other",)),
        # Values never become labels, whatever the header carries.
        ("someone@example.com", ("other",)),
        ("+15555550123 reset-link", ("other",)),
        ("x" * 10_000, ("other",)),
    ],
)
def test_partial_failure_fields_are_bounded_names(
    value: str | None, fields: tuple[str, ...]
) -> None:
    assert partial_failure_fields(value) == fields


def test_no_header_no_dropped_fields() -> None:
    outcome: Any = classify_response(202, JSON_API, b'{"data": null}')
    assert outcome == Accepted(202, {"data": None})
