"""``python -m bench --quick --only 8``: the OAuth soak, short, on tokens that expire every 2 s.

The relay refreshes through rotated refresh tokens and a SIGTERM restart half-way (started again
with the original refresh token, so it must take the newest from its token store): nothing is
lost, it never halts, no refresh is refused, and every sample is in the results file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.oauthsoak import oauth_unavailable

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("psutil", reason="the bench extra (pip install -e .[bench]) is needed")


@pytest.mark.kafka
@pytest.mark.slow
def test_oauth_soak_scenario(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--quick", "--only", "8", "--no-floors"]
    command += ["--oauth-soak", "30", "--oauth-token-lifetime", "2", "--out", str(tmp_path)]
    result = subprocess.run(
        command, check=False, cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = json.loads((tmp_path / "oauth-soak.json").read_text())
    assert "## 8. OAuth soak" in (tmp_path / "oauth-soak.md").read_text()
    assert "## 8. OAuth soak" in (tmp_path / "quick.md").read_text()
    why = oauth_unavailable()
    if why is not None:
        assert not run["available"] and run["notes"] == [f"not available: {why}"], run
        return
    assert run["drained"] and run["lost"] == 0, run
    assert run["first_exit"] == 0 and run["restart_at_s"] is not None, run
    samples = run["samples"]
    assert {s["relay"] for s in samples} == {1, 2}, samples
    assert all(s["halted"] == 0 for s in samples), samples
    last = samples[-1]
    assert last["produced"] > 0 and last["accepted"] == last["produced"], last
    # Refreshed, through rotations, the restarted relay with the token from its store.
    assert last["refreshes"].get("ok", 0) >= 1 and last["rotated"] >= 1, last
    assert last["invalid_grant"] == 0 and "invalid_grant" not in last["refreshes"], last
    before_restart = [s for s in samples if s["relay"] == 1][-1]
    assert last["refreshes"]["ok"] > before_restart["refreshes"].get("ok", 0), samples
