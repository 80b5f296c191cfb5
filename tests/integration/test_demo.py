"""The README's first command (``make demo`` → ``python -m dev.demo``), end to end, twice; and
the demo's own judgement of a run (``verify``), which decides its exit status."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer.pipeline.deadletter import build_dead_letter
from consumer.pipeline.failure import Failure
from consumer.pipeline.records import SourceRecord
from consumer.tools.deadletters import ParkedRecord
from consumer.topics import CONTRACT_TOPICS
from dev.demo import Findings, Progress, relay_counters, relay_env, verify
from dev.sample_events import OVERSIZED_ORDER_ITEMS, Planted, sample

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 7, 20, 12, 0, tzinfo=UTC)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


# --- the sample --------------------------------------------------------------------------------


def test_sample_covers_every_topic_with_several_customers() -> None:
    records = sample(NOW, per_topic=4)
    for topic in CONTRACT_TOPICS:
        good = [r for r in records if r.topic == topic and r.planted is None]
        assert len(good) == 4
        assert len({r.key for r in good}) >= 3, f"{topic}: too few customers"
    assert sorted(r.planted for r in records if r.planted) == sorted(Planted)
    oversized = next(r for r in records if r.planted is Planted.LIMIT_EXCEEDED)
    assert oversized.event is not None
    assert len(oversized.event["order"]["items"]) == OVERSIZED_ORDER_ITEMS
    # Klaviyo silently drops @example.com and @test.com: the sample must not use them.
    assert not re.search(r"@(example|test)\.com", str([r.event for r in records]))


def test_sample_is_reproducible_but_relative_to_now() -> None:
    first, again = sample(NOW), sample(NOW)
    assert [r.event for r in first] == [r.event for r in again]
    expired = next(r for r in first if r.planted is Planted.EXPIRED)
    assert expired.event is not None
    assert datetime.fromisoformat(expired.event["expires_at"]) < NOW
    for record in first:
        if record.topic.endswith("password-reset-requested") and record.planted is None:
            expires = record.event["expires_at"] if record.event else None
            assert expires is None or datetime.fromisoformat(expires) > NOW


# --- the demo's judgement ----------------------------------------------------------------------


def dead_letter(topic: str, reason: str, stage: str = "handle") -> ParkedRecord:
    source = SourceRecord(topic, 0, 0, b"k", b"v", None)
    failure = Failure(stage, reason, "x.Error", reason, NOW)
    written = build_dead_letter(source, failure)
    return ParkedRecord(0, 0, written.key, written.value, None, written.headers)


def good_findings() -> Findings:
    planted = [r for r in sample(NOW) if r.planted is not None]
    phone = next(r for r in planted if r.planted is Planted.PHONE_UNPARSEABLE)
    delivered = {(topic, "Some Metric"): 2 for topic in CONTRACT_TOPICS}
    events: list[dict[str, Any]] = [{"profile": {"external_id": "cust-1"}}] * (
        sum(delivered.values()) - 1
    )
    events.append({"profile": {"external_id": phone.key, "email": "k@x.io"}})
    return Findings(
        published={t: 4 for t in CONTRACT_TOPICS},
        planted=planted,
        delivered=delivered,
        warnings={(phone.topic, "phone_unparseable"): 1},
        sandbox_events=events,
        dead_letters=[
            dead_letter("shop.order.placed", "bad_magic", "decode"),
            dead_letter("shop.order.invoice-created", "limit_exceeded"),
            dead_letter("shop.account.password-reset-requested", "expired"),
        ],
        commits={t: [(0, 3, 3)] for t in CONTRACT_TOPICS},
    )


def test_a_good_run_has_no_problems() -> None:
    assert verify(good_findings()) == []


def test_verify_names_what_went_wrong() -> None:
    findings = good_findings()
    del findings.delivered[("shop.lead.assigned", "Some Metric")]
    findings.dead_letters[2] = dead_letter("shop.account.password-reset-requested", "invalid_event")
    findings.sandbox_events[-1]["profile"]["phone_number"] = "+15550000000"
    findings.commits["shop.order.placed"] = [(0, 1, 3)]
    problems = verify(findings)
    assert "nothing from shop.lead.assigned reached Klaviyo" in problems
    assert any("planted expired record" in p for p in problems)
    assert any("unexpected dead letter" in p and "invalid_event" in p for p in problems)
    assert any("delivered with a phone number" in p for p in problems)
    assert any("shop.order.placed: partitions [0] not committed" in p for p in problems)
    assert any("the sandbox holds" in p for p in problems)  # 2 accepted no longer counted


def test_relay_counters_read_the_metrics_text() -> None:
    text = """\
# HELP klaviyo_relay_events_delivered_total Klaviyo events accepted (2xx), by Klaviyo metric name.
# TYPE klaviyo_relay_events_delivered_total counter
klaviyo_relay_events_delivered_total{metric="Placed Order",topic="shop.order.placed"} 4.0
klaviyo_relay_events_delivered_created{metric="Placed Order",topic="shop.order.placed"} 1.7e9
# TYPE klaviyo_relay_plan_warnings_total counter
klaviyo_relay_plan_warnings_total{code="phone_unparseable",topic="shop.account.created"} 1.0
"""
    delivered, warnings = relay_counters(text)
    assert delivered == {("shop.order.placed", "Placed Order"): 4}
    assert warnings == {("shop.account.created", "phone_unparseable"): 1}


def test_relay_env_never_passes_the_callers_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_real_production_key")
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://registry:8081")
    monkeypatch.setenv("RATE_LIMITS__CREATE_EVENT__BURST__REQUESTS", "1")
    env = relay_env("127.0.0.1:1", "http://127.0.0.1:2", 3)
    assert env["KLAVIYO_API_KEY"] != "pk_real_production_key"
    assert "SCHEMA_REGISTRY_URL" not in env
    assert "RATE_LIMITS__CREATE_EVENT__BURST__REQUESTS" not in env
    assert env["KLAVIYO_BASE_URL"] == "http://127.0.0.1:2"


def test_progress_off_a_terminal_prints_whole_lines() -> None:
    stream = io.StringIO()
    progress = Progress(stream, interval=3600)
    progress.update("relaying… 1/10")
    progress.update("relaying… 2/10")  # within the interval: not repeated
    progress.done("relayed: 10/10")
    assert stream.getvalue() == "relaying… 1/10\nrelayed: 10/10\n"


# --- the real thing ----------------------------------------------------------------------------


def run_demo(tmp: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = tmp / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "dev.demo", "--output", str(tmp), "--json-summary", str(summary)],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "KLAVIYO_API_KEY"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result, orjson.loads(summary.read_bytes())


def port_closed(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, int(port))) != 0


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_delivers_every_topic_and_dead_letters_the_planted_records(tmp_path: Path) -> None:
    for run in ("first", "again"):
        result, summary = run_demo(tmp_path / run)
        assert summary["ok"] is True, summary["problems"]
        assert {d["topic"] for d in summary["delivered"]} == set(CONTRACT_TOPICS)
        reasons = sorted((d["source"].split("/")[0], d["reason"]) for d in summary["dead_letters"])
        assert reasons == [
            ("shop.account.password-reset-requested", "expired"),
            ("shop.order.invoice-created", "limit_exceeded"),
            ("shop.order.placed", "bad_magic"),
        ]
        assert summary["warnings"] == [
            {"topic": "shop.account.created", "code": "phone_unparseable", "count": 1}
        ]
        assert summary["sandbox_events"] == sum(d["count"] for d in summary["delivered"])
        for parts in summary["commits"].values():
            assert all(p["committed"] == p["end"] for p in parts)

        out = result.stdout
        assert "Klaviyo accepted" in out and "Commit positions" in out and "Metrics:" in out
        assert "✓ Every contract topic was delivered" in out
        assert not EMAIL.search(out.replace("***@", "")), "unmasked email in the output"
        assert "/reset/" not in out
        assert (tmp_path / run / "metrics.prom").read_text().count("klaviyo_relay_") > 10
        # It stopped everything it started.
        broker = re.search(r"broker started on (\S+)", out)
        sandbox = re.search(r"sandbox listening on http://(\S+)", out)
        relay = re.search(r"metrics on :(\d+)", out)
        assert broker and sandbox and relay
        assert port_closed(broker[1]) and port_closed(sandbox[1])
        assert port_closed(f"127.0.0.1:{relay[1]}")
