"""The connect path after a server restart, with an authentication method that needs a
package of its own: MariaDB's ed25519 (PyMySQL needs PyNaCl: ``PyMySQL[ed25519]``), the
nearest MariaDB has to MySQL 8.4's caching_sha2_password, whose full authentication
without TLS after a restart needs ``cryptography`` (``PyMySQL[rsa]``): docs/mysql-connect.md."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import get, serve

USER, PASSWORD = "edapp", "ed-secret"


@pytest.fixture
def ed25519(db) -> Iterator[str]:
    """An alias whose user authenticates with ed25519 only; yields its name."""
    from django.conf import settings

    if not db.admin_query("SELECT 1 FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'ed25519'"):
        db.admin_query("INSTALL SONAME 'auth_ed25519'")  # kept in mysql.plugin: loaded after restarts
    db.admin_query(f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED VIA ed25519 "
                   f"USING PASSWORD('{PASSWORD}')")
    db.admin_query(f"GRANT ALL ON app.* TO '{USER}'@'127.0.0.1'")
    settings.DATABASES["ed"] = {**settings.DATABASES["default"], "USER": USER, "PASSWORD": PASSWORD}
    try:
        yield "ed"
    finally:
        del settings.DATABASES["ed"]
        db.kill_user(USER)


def _plugin_of(db, connection_id: int) -> str:
    """Who the server says holds ``connection_id``, and how that user authenticates."""
    [(user,)] = db.admin_query(
        "SELECT USER FROM information_schema.PROCESSLIST WHERE ID = %s", [connection_id]
    )
    [(plugin,)] = db.admin_query("SELECT plugin FROM mysql.user WHERE user = %s", [user])
    return f"{user} via {plugin}"


def test_a_reconnect_after_a_restart_authenticates_with_ed25519(make_app, db, ed25519):
    app = make_app(aliases=[ed25519], ping_after=0)
    with serve(app) as address:
        first = get(address, f"/id/?alias={ed25519}")
        assert first.status == 200 and _plugin_of(db, first.json()["id"]) == "edapp via ed25519"
        db.restart()
        again = get(address, f"/id/?alias={ed25519}")
    assert again.status == 200
    assert _plugin_of(db, again.json()["id"]) == "edapp via ed25519"
    assert app.stats()[ed25519]["stale"] == 1 and app.stats()[ed25519]["opened"] == 2


def test_a_missing_auth_package_is_named_once(make_app, db, ed25519, monkeypatch, caplog):
    import pymysql._auth

    app = make_app(aliases=[ed25519], size=1)
    with serve(app) as address, caplog.at_level(logging.WARNING, logger="wsgi_dbpool"):
        with monkeypatch.context() as hidden:  # as on a machine without PyMySQL[ed25519]
            hidden.setitem(sys.modules, "nacl", None)
            hidden.setattr(pymysql._auth, "_nacl_bindings", False)
            failed = [get(address, f"/id/?alias={ed25519}") for _ in range(3)]
            assert db.connection_count(USER) == 0
        installed = get(address, f"/id/?alias={ed25519}")  # requirements-dev: PyMySQL[ed25519]
    assert [r.status for r in failed] == [500] * 3
    named = [r.getMessage() for r in caplog.records if "pip install" in r.getMessage()]
    assert len(named) == 1, named
    assert named[0].startswith(f"cannot connect {ed25519!r}: the server asked for MariaDB's ed25519")
    assert "pip install 'PyMySQL[ed25519]'" in named[0]
    # The same pool connects once the package is there.
    assert installed.status == 200 and _plugin_of(db, installed.json()["id"]) == "edapp via ed25519"
    assert app.stats()[ed25519]["connects"] == 4
