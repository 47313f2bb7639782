"""The live pool page in a real headless Chromium: it renders the numbers of every gunicorn
worker (each, and summed), refreshes them, and charts the last minute."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from testbed.servers import ROOT, child_env
from tests.helpers import get, wait_until

pytestmark = pytest.mark.demo

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--window-size=1100,760",
]


def ensure_chromium() -> tuple[str, str]:
    """Debian's chromium and its driver, installed when missing (the test command runs as root)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
                       check=True, env=env)
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "install Debian's chromium and chromium-driver"
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_pool_page_renders_and_refreshes(start_demo, browser, tmp_path):
    from selenium.webdriver.common.by import By

    demo = start_demo(POOL_SIZE="4", POOL_MAX_OUTSTANDING="6", WORKERS="2")
    browser.get(f"http://{demo.address}/pool/")

    # Read through JavaScript: the page rebuilds its cards every second, so element
    # handles go stale between calls.
    def field(name: str) -> str:
        return str(browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            f'[data-alias="default"] [data-field="{name}"]',
        ))

    def refreshes() -> int:
        return int(browser.execute_script("return document.getElementById('refreshes').textContent") or 0)

    def workers() -> dict[str, dict[str, int]]:
        return dict(browser.execute_script(
            "const w = {}; for (const r of document.querySelectorAll('#workers tr')) {"
            " w[r.dataset.worker] = Object.fromEntries([...r.querySelectorAll('[data-field]')]"
            ".map(e => [e.dataset.field, Number(e.textContent)])); } return w;"
        ))

    def chart_points() -> int:
        return int(browser.execute_script("return document.getElementById('chart').dataset.points"))

    wait_until(lambda: field("in_use") == "0" and refreshes() >= 1, timeout=20, what="first render")
    assert "hold request · size 4 · max_outstanding 6" in browser.find_element(By.ID, "status").text
    # Both workers show, whichever one served the page (each publishes its numbers).
    wait_until(lambda: len(workers()) == 2, timeout=20, what="both workers on the page")

    # Three slow reports hold three connections: the page must show it on its own.
    holders = [gevent.spawn(get, demo.address, "/slow?seconds=4") for _ in range(3)]
    wait_until(lambda: field("in_use") == "3", timeout=20, what="the page to show 3 in use")
    seen = refreshes()
    wait_until(lambda: refreshes() >= seen + 2, timeout=10, what="two more refreshes")
    per_worker = workers()
    assert len(per_worker) == 2
    assert sum(w["in_use"] for w in per_worker.values()) == 3  # the total is their sum
    assert chart_points() >= 3
    browser.set_window_size(1100, 1180)  # the totals, the chart and the per-worker table
    gevent.sleep(1.2)  # one more refresh at the new size
    # The README's screenshot is refreshed only on request, so a test run leaves the tree clean.
    shot = DOCS / "pool-page.png" if os.environ.get("WSGI_DBPOOL_WRITE_DOCS") else tmp_path / "pool-page.png"
    shot.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    done = gevent.joinall(holders, timeout=20, raise_error=True)
    assert len(done) == 3, f"{3 - len(done)} slow report(s) still running after 20 s"
    wait_until(lambda: field("in_use") == "0" and field("idle") == "3", timeout=20,
               what="the page to show them back idle",
               state=lambda: {"in_use": field("in_use"), "idle": field("idle"), "workers": workers()})
    assert int(field("opened")) == 3
    assert sum(w["opened"] for w in workers().values()) == 3
    assert demo.stop() == 0


def rows(browser) -> list[dict]:
    """The per-worker table as the page shows it: pid, kind, and every numeric field."""
    return list(browser.execute_script(
        "return [...document.querySelectorAll('#workers tr')].map(r => Object.assign("
        " {pid: Number(r.dataset.worker), kind: r.dataset.kind},"
        " Object.fromEntries([...r.querySelectorAll('[data-field]')]"
        ".map(e => [e.dataset.field, Number(e.textContent)]))));"
    ))


@pytest.mark.celery
def test_the_celery_worker_shows_beside_the_gunicorn_workers(start_demo, browser, tmp_path):
    """make demo, then make worker (kept running): one page shows the two gunicorn workers
    and the Celery worker's pool, and sums all three."""
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    demo = start_demo(WORKERS="2", DEMO_POOL_DIR=str(pool_dir))
    env = child_env(DEMO_SQLITE_PATH=str(tmp_path / "demo.sqlite3"), DEMO_POOL_DIR=str(pool_dir))
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "demo.worker", "--keep", "--exports", "40"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    try:
        wait_until(lambda: "worker running" in log.read_text() or worker.poll() is not None,
                   timeout=180, what="the Celery worker's exports done",
                   state=lambda: log.read_text()[-2000:])
        assert worker.poll() is None, log.read_text()
        browser.get(f"http://{demo.address}/pool/")
        wait_until(lambda: {r["kind"] for r in rows(browser)} == {"gunicorn", "celery"}
                   and len(rows(browser)) == 3, timeout=60, what="two gunicorn workers and Celery's",
                   state=lambda: (rows(browser), sorted(p.name for p in pool_dir.iterdir())))

        def celery_row() -> dict:
            [row] = [r for r in rows(browser) if r["kind"] == "celery"]
            return row

        # 40 exports and 2 pool_stats tasks, each a checkout (published twice a second).
        wait_until(lambda: celery_row()["checkouts"] == 42, timeout=30, what="every task counted",
                   state=lambda: (celery_row(), log.read_text()[-2000:]))
        celery = celery_row()
        # The process the page names is the Celery worker, as the system knows it.
        command = Path(f"/proc/{celery['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"celery" in command and b"demo.celery" in command
        assert celery["opened"] >= 1 and celery["in_use"] == 0
        heading = browser.execute_script("return document.getElementById('worker-count').textContent")
        assert heading.startswith("(2 gunicorn, 1 Celery;")
        # The totals add the Celery worker's pool to the gunicorn workers'.
        total, per_row = browser.execute_script(
            "const t = document.querySelector('[data-alias=\"default\"] [data-field=\"opened\"]');"
            "const r = [...document.querySelectorAll('#workers [data-field=\"opened\"]')];"
            "return [Number(t.textContent), r.reduce((a, e) => a + Number(e.textContent), 0)];"
        )
        assert total == per_row >= celery["opened"]
        browser.set_window_size(1100, 1180)
        gevent.sleep(1.2)
        shot = (DOCS / "pool-page-celery.png" if os.environ.get("WSGI_DBPOOL_WRITE_DOCS")
                else tmp_path / "pool-page-celery.png")
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)  # as Ctrl-C: the worker's warm shutdown
            worker.wait(timeout=90)  # demo.worker gives Celery 30 s, then kills it
    # Its file is gone with it: the page drops it at once.
    left = [p.name for p in pool_dir.glob("*.json") if str(celery["pid"]) in p.name]
    assert not left, (left, log.read_text()[-3000:])
    assert demo.stop() == 0
