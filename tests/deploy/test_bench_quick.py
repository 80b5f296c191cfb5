"""``python -m bench --quick`` end to end: it runs every scenario and writes a well-formed table.

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

    report = (tmp_path / "quick.md").read_text()
    table = report.split("\n\n")[2]  # the results table; the floors' table follows it
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns[:5] == ["Scenario", "System", "Events", "Klaviyo events", "Events/s"]
    assert all(len(row.strip("|").split("|")) == len(columns) for row in body)

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
    # The floors of the same run, and the relay's cost against them (bench/floors.py).
    assert data["floors"]["codec_us_per_event"] > 0, data["floors"]
    assert data["floors"]["http_requests_per_s"] > 0, data["floors"]
    assert "× codec floor" in report and "× HTTP floor" in report
    # RSS and events/s over time for the backlog drains (bench/chart.py).
    assert (tmp_path / "quick-3.svg").read_text().startswith("<svg")
