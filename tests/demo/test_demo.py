"""The demo, as a new user runs it: ``python -m demo`` under real gunicorn gevent workers."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.helpers import get, processes_mentioning, request

pytestmark = pytest.mark.demo


def exercise_every_page(address: str) -> None:
    page = get(address, "/")
    assert page.status == 200 and b"Guestbook" in page.body
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1).decode()
    cookie = page.headers["set-cookie"].split(";")[0]
    posted = request(
        address, "POST", "/",
        body=urlencode({"csrfmiddlewaretoken": token, "author": "pytest", "text": "signed by the suite"}),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie,
                 "Referer": f"http://{address}/"},
    )
    assert posted.status == 302, posted.body[:500]
    assert b"signed by the suite" in get(address, "/").body

    export = get(address, "/export.csv")
    assert export.status == 200 and export.headers["content-type"] == "text/csv"
    rows = list(csv.reader(io.StringIO(export.body.decode())))
    assert rows[0] == ["id", "author", "text", "created", "connection"]
    assert len(rows) == 1 + 501  # 500 seeded notes and ours, streamed in chunks of 100
    assert rows[-1][2] == "signed by the suite"
    assert len({row[4] for row in rows[1:]}) == 1  # one connection all through the stream

    slow = get(address, "/slow?seconds=0.2")
    assert slow.status == 200 and slow.json()["held_seconds"] == 0.2
    assert get(address, "/health").body == b"ok"
    assert b"Live pool" in get(address, "/pool/").body


def test_demo_on_sqlite_serves_every_page_and_stops_clean(start_demo):
    demo = start_demo()
    assert "SQLite" in demo.banner() and "size=4 max_outstanding=20" in demo.banner()
    before = get(demo.address, "/pool.json").json()
    assert before["pooling"] is True and before["database"] == "sqlite"
    exercise_every_page(demo.address)
    after = get(demo.address, "/pool.json").json()["aliases"]["default"]
    # GET, POST, GET, export, slow; /health and the pool pages are skipped by wsgi.py
    assert after["checkouts"] == before["aliases"]["default"]["checkouts"] + 5
    assert after["in_use"] == 0 and after["idle"] <= after["size"]
    assert after["opened"] >= 1
    assert demo.stop() == 0
    assert "demo stopped" in demo.banner()
    assert processes_mentioning(demo.address) == []  # no gunicorn left behind


def test_demo_on_mariadb_stops_its_server(start_demo):
    demo = start_demo("--db", "mariadb")
    datadir = re.search(r"datadir (\S+),", demo.banner()).group(1)
    assert Path(datadir).is_dir()
    state = get(demo.address, "/pool.json").json()
    assert state["database"] == "mysql"
    exercise_every_page(demo.address)
    stats = get(demo.address, "/pool.json").json()["aliases"]["default"]
    assert stats["opened"] <= stats["size"] and stats["in_use"] == 0
    assert demo.stop() == 0
    assert processes_mentioning(demo.address) == []
    assert processes_mentioning(datadir) == []  # the throwaway mariadbd is gone
    assert not Path(datadir).exists()


def test_demo_without_the_pool_says_so(start_demo):
    demo = start_demo(POOL="off")
    assert "pool:     off" in demo.banner()
    state = get(demo.address, "/pool.json").json()
    assert state["pooling"] is False and "aliases" not in state
    assert b"WITHOUT the middleware" in get(demo.address, "/pool/").body
    assert json.loads(get(demo.address, "/slow?seconds=0.05").body)["held_seconds"] == 0.05
    assert demo.stop() == 0
