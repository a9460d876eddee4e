"""`make demo`'s main job runs to the end and its checks pass (it exits non-zero otherwise)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.processes


def test_the_demo_runs_and_every_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "phoenix_trio", "demo"], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    assert "!!" not in out and out.rstrip().splitlines()[-1].startswith("demo finished")
    for section in ("Point-to-point", "Request-response", "Publish-subscribe", "Pipeline", "Consensus", "Failure detection", "Gossip and broadcast"):
        assert section in out, section
    assert "acknowledged writes present" in out and "elected for term" in out
    assert "reached 12/12 nodes exactly once each" in out and "reached 9/9 nodes exactly once each" in out
