"""The live pool page in a real headless Chromium: it renders the numbers of every gunicorn
worker (each, and summed), refreshes them, and charts the last minute."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import gevent
import pytest

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
    gevent.joinall(holders, timeout=20, raise_error=True)
    wait_until(lambda: field("in_use") == "0" and field("idle") == "3", timeout=20,
               what="the page to show them back idle")
    assert int(field("opened")) == 3
    assert sum(w["opened"] for w in workers().values()) == 3
    assert demo.stop() == 0
