"""The capacity planner: its arithmetic, its warning, its command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wsgi_dbpool.plan import plan

ROOT = Path(__file__).resolve().parent.parent


def test_fleet_that_fits():
    result = plan(max_connections=151, hosts=3, workers=4)
    assert result.processes == 12
    assert result.available == 151 - 16  # a 10 % reserve, rounded up
    assert result.max_outstanding == 135 // 12 == 11
    assert result.size == 4
    assert result.worker_connections == 1000  # 11 × 5 s ÷ 50 ms = 1100, capped
    assert 12 * result.max_outstanding <= 151 - 16
    assert result.fits


def test_slow_requests_lower_worker_connections():
    result = plan(max_connections=100, hosts=1, workers=2, hold_ms=500, timeout=2)
    assert result.max_outstanding == 45 and result.worker_connections == 180


def test_fleet_that_does_not_fit():
    result = plan(max_connections=50, hosts=10, workers=8)
    assert not result.fits


@pytest.mark.parametrize("bad", [{"hosts": 0}, {"workers": -1}, {"max_connections": 0}])
def test_bad_input(bad):
    kwargs = {"max_connections": 100, "hosts": 1, "workers": 1, **bad}
    with pytest.raises(ValueError, match="must be at least 1"):
        plan(**kwargs)


def test_command_line():
    ok = subprocess.run([sys.executable, "-m", "wsgi_dbpool", "plan", "--max-connections", "151",
                         "--hosts", "3", "--workers", "4"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0
    assert "PoolingMiddleware(app, size=4, max_outstanding=11, timeout=5)" in ok.stdout
    assert "processes          = hosts × workers = 3 × 4 = 12" in ok.stdout
    full = subprocess.run([sys.executable, "-m", "wsgi_dbpool", "plan", "--max-connections", "50",
                           "--hosts", "10", "--workers", "8"], cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 1 and "does not fit" in full.stdout and "PgBouncer" in full.stdout
