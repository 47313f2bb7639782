"""Keeps the benchmark working: a quick run on two stacks (a smoke, not a speed gate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_compare_quick_smoke(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", "--quick", "--seconds", "1",
         "--stacks", "persistent,wsgi_dbpool,wsgi_dbpool_transaction",
         "--scenarios", "throughput,streaming,storm,io",
         "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    ours = results["wsgi_dbpool"]
    assert ours["throughput"]["rps"] > 0 and ours["throughput"]["non_2xx"] == 0
    assert ours["streaming"]["intact"] == ours["streaming"]["requests"]
    assert ours["storm"]["peak"] <= 20 and ours["storm"]["errors"] == 0
    assert ours["storm"]["left_open"] <= 4
    assert "| wsgi_dbpool |" in done.stdout
    per_transaction = results["wsgi_dbpool_transaction"]["io"]
    assert per_transaction["errors"] == 0 and 0 < per_transaction["peak"] <= 20
    assert out.with_suffix(".png").stat().st_size > 10_000
