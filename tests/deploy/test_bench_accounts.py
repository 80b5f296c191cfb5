"""``python -m bench --quick --only 7``: two accounts in one relay, each on its own sandbox.

With a relay that knows KLAVIYO_ACCOUNTS, both accounts get their own events (routed by header
and by topic), use their own quota, are never throttled and lose nothing; with one that does not,
the scenario says so instead of failing the suite. Speed is not asserted (quick windows are
5 s): the share of each window is only required to be above zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.accounts import accounts_unavailable

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("psutil", reason="the bench extra (pip install -e .[bench]) is needed")


@pytest.mark.kafka
@pytest.mark.slow
def test_two_accounts_scenario(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--quick", "--only", "7", "--no-floors"]
    result = subprocess.run(
        [*command, "--out", str(tmp_path)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = json.loads((tmp_path / "quick.json").read_text())["accounts"]
    assert "## 7. Two accounts" in (tmp_path / "quick.md").read_text()
    why = accounts_unavailable()
    if why is not None:
        assert not run["available"] and run["notes"] == [f"not available: {why}"], run
        return
    assert run["available"] and run["drained"], run
    by_name = {a["account"]: a for a in run["accounts"]}
    assert {a["routed_by"] for a in by_name.values()} == {"header", "topic map"}
    for account in by_name.values():
        # Every event reached its own account's sandbox, once: none lost, none misrouted.
        assert account["expected"] > 0 and account["lost"] == 0, account
        assert account["throttled"] == 0, account
        assert account["shares"] and all(0 < s <= 1.0 for s in account["shares"]), account
