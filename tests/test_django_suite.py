"""Django's own test suite through the pool: what passes plainly must pass pooled.

Django's ``tests/runtests.py`` (from the source distribution of the installed Django,
downloaded once into ``.cache/django/``) runs a few apps against the session's MariaDB:
once plainly, then once per ``hold`` mode with every unit of work going through a
``PoolingMiddleware`` (see ``tests/django_suite/runner.py``). A test that passes plainly
and fails pooled fails this test, unless it is listed in ``KNOWN`` with its reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from testbed.servers import ROOT, child_env

pytestmark = [pytest.mark.slow, pytest.mark.mariadb, pytest.mark.timeout(900)]

# Django's apps run; each run creates their tables (and contrib's) once.
APPS = ["transactions", "transaction_hooks", "select_for_update", "backends", "queries"]
MODES = ["request", "lazy", "transaction"]
CACHE = ROOT / ".cache" / "django"

# Tests that pass plainly and fail pooled: {test id: reason}, for every mode or one.
_DETACHED = (
    "hold='transaction': connection.connection is None between statements (the connection "
    "is given back after each)"
)
EVERY_MODE: dict[str, str] = {}
KNOWN: dict[str, dict[str, str]] = {
    "request": {},
    "lazy": {},
    "transaction": {
        **{
            f"backends.base.test_base.ConnectionHealthChecksTests.{name}": _DETACHED
            for name in ("test_health_checks_enabled", "test_set_autocommit_health_checks_enabled")
        },
        "backends.tests.BackendTestCase.test_is_usable_after_database_disconnects": _DETACHED,
        "backends.tests.ThreadTests.test_default_connection_thread_local": _DETACHED,
        "backends.tests.ConnectionCreatedSignalTest.test_signal": (
            "hold='transaction': cursor() alone opens nothing, so connection_created comes at "
            "the first statement, sent by the carrier"
        ),
    },
}
for _known in KNOWN.values():
    _known.update(EVERY_MODE)


def _django_tests() -> Path:
    """The ``tests/`` folder of the installed Django's source distribution."""
    import django

    version = django.__version__
    folder = CACHE / f"django-{version}" / "tests"
    if folder.is_dir():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"django-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"Django=={version}", "-d", str(CACHE)],
            check=True, timeout=300,
        )
    with tarfile.open(sdist) as archive:
        archive.extractall(CACHE, filter="data")
    return folder


def _run(tests_dir: Path, port: int, hold: str | None, results: Path) -> tuple[dict[str, str], float]:
    env = child_env(
        WSGI_DBPOOL_SUITE_PORT=str(port), WSGI_DBPOOL_SUITE_RESULTS=str(results),
        WSGI_DBPOOL_HOLD=hold or "",
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gevent.monkey", "runtests.py", "--settings",
         "tests.django_suite.settings", "--parallel", "1", "--noinput", "-v", "0", *APPS],
        cwd=tests_dir, env=env, capture_output=True, text=True, timeout=600,
    )
    seconds = time.monotonic() - started
    if not results.exists():
        pytest.fail(f"runtests.py ({hold or 'plain'}) recorded nothing:\n{done.stderr[-3000:]}")
    return json.loads(results.read_text()), seconds


def test_django_suite_passes_pooled_as_it_does_plainly(mariadb, tmp_path, capsys):
    tests_dir = _django_tests()
    plain, seconds = _run(tests_dir, mariadb.port, None, tmp_path / "plain.json")
    timings = {"plain": seconds}
    passing = {test for test, outcome in plain.items() if outcome == "pass"}
    assert len(passing) > 500, "the plain run passed too few tests to compare with"
    regressions: dict[str, list[str]] = {}
    pooled_outcomes: dict[str, dict[str, str]] = {}
    for hold in MODES:
        pooled, timings[hold] = _run(tests_dir, mariadb.port, hold, tmp_path / f"{hold}.json")
        pooled_outcomes[hold] = pooled
        failing = sorted(
            test for test in passing
            if pooled.get(test) != "pass" and test not in KNOWN[hold]
        )
        if failing:
            regressions[hold] = failing
    # A listed test that passes pooled now: take it off the list.
    stale = sorted(
        test for hold in MODES for test in KNOWN[hold]
        if test in passing and pooled_outcomes[hold].get(test) == "pass"
    )
    with capsys.disabled():
        print(f"\nDjango's suite ({len(plain)} tests of {', '.join(APPS)}): "
              + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    report = ROOT / ".cache" / "django-suite-regressions.json"
    report.write_text(json.dumps(regressions, indent=1))
    assert regressions == {}, f"passes plainly, fails pooled (also in {report})"
    assert stale == [], "listed in KNOWN but passes pooled now"
