"""``preview``: every contract example becomes schema-valid requests; bad input fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from consumer.cli import cli
from tests.fixtures.contract import TOPICS
from tests.fixtures.klaviyo_schemas import body_errors, operation_for

EXAMPLES = Path(__file__).resolve().parents[4] / "shared" / "contract" / "examples"

# Contract: "Events, topics and what Klaviyo receives" (the examples' single line items).
EXPECTED = {
    "shop.account.created": [("POST", "/api/events", "Created Account")],
    "shop.account.updated": [("POST", "/api/events", "Updated Account")],
    "shop.account.email-changed": [
        ("PATCH", "/api/profiles/01H81WC034AKRMQJQARPEEBHJE", None),
        ("POST", "/api/events", "Updated Account"),
    ],
    "shop.account.password-reset-requested": [("POST", "/api/events", "Reset Password")],
    "shop.order.invoice-created": [("POST", "/api/events", "Created Invoice")],
    "shop.order.placed": [
        ("POST", "/api/events", "Placed Order"),
        ("POST", "/api/events", "Ordered Product"),
    ],
    "shop.order.payment-failed": [("POST", "/api/events", "Failed Payment")],
    "shop.order.shipment-updated": [("POST", "/api/events", "Shipping Update")],
    "shop.lead.captured": [
        ("POST", "/api/events", "Became Lead"),
        ("POST", "/api/events", "New Lead"),
    ],
    "shop.lead.assigned": [("POST", "/api/events", "New Lead")],
}


def example(topic: str) -> Path:
    path = EXAMPLES / f"{topic}.json"
    if not path.is_file():
        pytest.skip(f"contract example {path} not found (../shared absent)")
    return path


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["preview", *args], input=stdin)


def test_expected_table_covers_every_contract_topic() -> None:
    assert sorted(EXPECTED) == sorted(TOPICS.values())


@pytest.mark.parametrize("topic", sorted(EXPECTED))
def test_preview_of_each_contract_example(topic: str) -> None:
    result = run("--topic", topic, "--input", str(example(topic)))

    assert result.exit_code == 0, result.stderr
    requests: list[dict[str, Any]] = json.loads(result.stdout)
    shape = [
        (
            r["method"],
            r["path"],
            r["body"]["data"]["attributes"]["metric"]["data"]["attributes"]["name"]
            if r["path"] == "/api/events"
            else None,
        )
        for r in requests
    ]
    assert shape == EXPECTED[topic]
    for request in requests:
        operation = operation_for(request["method"], request["path"])
        assert operation is not None
        assert body_errors(operation, request["body"]) == []
        if request["path"] == "/api/events":
            assert request["body"]["data"]["attributes"]["time"] == "2023-10-15T00:00:00Z"


def test_preview_reads_stdin_and_prints_the_lookup_plan() -> None:
    event = json.loads(example("shop.account.email-changed").read_text())
    event["klaviyo_profile_id"] = None
    result = run("--topic", "shop.account.email-changed", stdin=json.dumps(event))

    assert result.exit_code == 0, result.stderr
    lookup, patch, _ = json.loads(result.stdout)
    assert lookup == {
        "method": "GET",
        "path": "/api/profiles?filter=equals%28email%2C%22john.smith%40shopmail.io%22%29",
    }
    assert patch["path"] == "/api/profiles/{profile_id}"
    assert patch["fallback"]["path"] == "/api/profile-import"
    assert body_errors("create_or_update_profile", patch["fallback"]["body"]) == []


def test_unparseable_phone_is_dropped_with_a_warning_naming_only_the_field() -> None:
    event = json.loads(example("shop.account.created").read_text())
    event["customer"]["phone_number"] = "ring the bell"
    result = run("--topic", "shop.account.created", stdin=json.dumps(event))

    assert result.exit_code == 0, result.stderr
    (request,) = json.loads(result.stdout)
    assert (
        "phone_number" not in request["body"]["data"]["attributes"]["profile"]["data"]["attributes"]
    )
    assert result.stderr.strip() == "warning: phone_unparseable at customer.phone_number"


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [
        ("{not json", "invalid event"),
        ("[]", "invalid event"),
        ('{"event_id": "x"}', "invalid event"),
    ],
)
def test_invalid_input_fails_with_one_line(stdin: str, reason: str) -> None:
    result = run("--topic", "shop.order.placed", stdin=stdin)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert reason in result.stderr


def test_expired_reset_is_refused() -> None:
    event = json.loads(example("shop.account.password-reset-requested").read_text())
    event["expires_at"] = "2020-01-01T00:00:00Z"
    result = run("--topic", "shop.account.password-reset-requested", stdin=json.dumps(event))
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == "error: event refused (expired): password reset link has expired"
    )


def test_unknown_topic_fails_naming_the_known_ones() -> None:
    result = run("--topic", "shop.nothing", stdin="{}")
    assert result.exit_code == 1
    assert "no handler for topic shop.nothing" in result.stderr
    assert "shop.order.placed" in result.stderr


def test_record_option_previews_another_record_of_a_shared_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOPIC_HANDLERS", '{"legacy.orders": "OrderPlaced,PaymentFailed"}')
    path = str(example("shop.order.payment-failed"))
    result = run("--topic", "legacy.orders", "--record", "PaymentFailed", "--input", path)
    assert result.exit_code == 0, result.stderr
    (request,) = json.loads(result.stdout)
    assert request["body"]["data"]["attributes"]["metric"]["data"]["attributes"]["name"] == (
        "Failed Payment"
    )
