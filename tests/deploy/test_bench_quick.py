"""``python -m bench --quick`` end to end: it runs every scenario and writes well-formed tables.

Speed is not asserted (CI machines differ); the table's shape and the numbers' consistency are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("klaviyo_api", reason="the bench extra (pip install -e .[bench]) is needed")
pytest.importorskip("psutil", reason="the bench extra (pip install -e .[bench]) is needed")


@pytest.mark.kafka
@pytest.mark.slow
def test_quick_suite_writes_a_well_formed_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table = (tmp_path / "quick.md").read_text()
    tables = _tables(table)
    columns = [cell.strip() for cell in tables[0][0].strip("|").split("|")]
    assert columns[:5] == ["Scenario", "System", "Events", "Klaviyo events", "Events/s"]
    for head, *rows in tables:  # every table's rows as wide as its header
        assert all(_width(row) == _width(head) for row in rows), head

    data = json.loads((tmp_path / "quick.json").read_text())
    runs = {(r["scenario"], r["system"]) for r in data["rows"]}
    assert runs >= {
        ("1", "relay realtime"),
        ("1", "relay batch"),
        ("1", "baseline (klaviyo-api)"),
        ("2", "relay realtime"),
        ("2", "relay batch"),
        ("2", "baseline (klaviyo-api)"),
        ("3", "relay batch"),
    }
    for row in data["rows"]:
        assert row["klaviyo_events"] > 0, row
        assert row["events_per_s"] > 0, row
        assert row["cpu_s"] > 0 and row["peak_rss_mb"] > 0, row
        assert row["p50_s"] is not None and row["p50_s"] <= row["p99_s"], row
        if row["scenario"] != "2":  # a backlog is drained completely, every event once
            assert row["klaviyo_events"] >= row["events"], row
        else:
            assert 0 < row["steady_share"] <= 1.0, row
    relay_quota = [
        r for r in data["rows"] if r["scenario"] == "2" and r["system"].startswith("relay")
    ]
    # The relay paces itself: the sandbox never had to refuse it.
    assert all(r["throttled"] == 0 for r in relay_quota)
    assert data["machine"]["cores"] >= 1

    # Scenario 4 (outage recovery) and 5 (a group scaled 1 → 3 → 1), one mode each in --quick.
    (recovery,) = data["outage"]
    assert recovery["mode"] == "realtime" and recovery["available"], recovery
    assert recovery["outage_answers"] > 0, recovery  # the sandbox was down
    assert recovery["backlog"] > recovery["normal_lag"], recovery  # and a backlog built up
    assert recovery["catchup_s"] is not None and recovery["catchup_s"] > 0, recovery
    assert recovery["lost"] == 0, recovery
    (group,) = data["group"]
    assert group["mode"] == "realtime" and group["available"], group
    labels = {window["relays"] for window in group["windows"]}
    assert {"1", "3"} <= labels, group  # full windows with one and with three relays
    assert all(0 < share <= 1.0 for share in group["window_shares"]), group
    assert group["lost"] == 0, group
    assert "## 4. Outage recovery" in table and "## 5. Group" in table

    # The floors of the same run, and the relay's cost against them (bench/floors.py).
    assert data["floors"]["codec_us_per_event"] > 0, data["floors"]
    assert data["floors"]["http_requests_per_s"] > 0, data["floors"]
    assert "× codec floor" in table and "× HTTP floor" in table
    # RSS and events/s over time for the backlog drains (bench/chart.py).
    assert (tmp_path / "quick-3.svg").read_text().startswith("<svg")


def _tables(markdown: str) -> list[list[str]]:
    """Each Markdown table's header and rows (its separator line left out)."""
    tables: list[list[str]] = []
    inside = False
    for line in markdown.splitlines():
        if line.startswith("| "):
            if not inside:
                tables.append([])
            tables[-1].append(line)
        inside = line.startswith("|")
    return tables


def _width(row: str) -> int:
    return len(row.strip("|").split("|"))
