"""Django's system checks: ``manage.py check`` reports what the constructor refuses or
warns about, with ids ``SILENCED_SYSTEM_CHECKS`` accepts. Run for real, in a new project
whose settings ``manage.py`` imports and whose ``wsgi.py`` it does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.servers import child_env

SETTINGS = '''
import json, os
import pymysql
pymysql.install_as_MySQLdb()
SECRET_KEY = "checks"
INSTALLED_APPS = ["wsgi_dbpool"]
WSGI_APPLICATION = "proj.wsgi.application"
SILENCED_SYSTEM_CHECKS = json.loads(os.environ.get("SILENCED", "[]"))
DATABASES = json.loads(os.environ["DATABASES_JSON"])
'''
WSGI = '''
import os
from pathlib import Path
from django.core.wsgi import get_wsgi_application
from wsgi_dbpool import PoolingMiddleware
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
application = PoolingMiddleware(get_wsgi_application(), hold=os.environ["HOLD"], size=2)
Path(os.environ["MARKER"]).write_text("wsgi.py ran past the middleware")
'''
MANAGE = '''
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
'''
MYSQL = {"ENGINE": "django.db.backends.mysql", "NAME": "app", "HOST": "127.0.0.1", "PORT": "1"}
PG = {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "127.0.0.1", "PORT": "1"}
# Each alias breaks one rule: what manage.py check must name, and under which id.
WRONG = {
    "default": {**MYSQL, "CONN_MAX_AGE": 0},  # W001
    "manual": {**MYSQL, "CONN_MAX_AGE": 60, "AUTOCOMMIT": False},  # W002 with "transaction"
    "pg": {**PG, "CONN_MAX_AGE": 60, "OPTIONS": {"pool": True}},  # E001; E002 with "transaction"
}
RIGHT = {
    "default": {**MYSQL, "CONN_MAX_AGE": 60},
    "pg": {**PG, "CONN_MAX_AGE": 60, "DISABLE_SERVER_SIDE_CURSORS": True},
}


def manage_check(
    tmp_path: Path, databases: dict, hold: str, silenced: tuple[str, ...] | list[str] = ()
) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    (project / "__init__.py").write_text("")
    (project / "settings.py").write_text(SETTINGS)
    (project / "wsgi.py").write_text(WSGI)
    (tmp_path / "manage.py").write_text(MANAGE)
    env = child_env(
        DATABASES_JSON=json.dumps(databases), HOLD=hold, SILENCED=json.dumps(list(silenced)),
        MARKER=str(tmp_path / "marker"),
    )
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60,
    )


def test_check_names_every_rule_under_its_id(tmp_path):
    done = manage_check(tmp_path, WRONG, "transaction")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out  # errors stop the command
    assert "DATABASES['pg']: (wsgi_dbpool.E001) DATABASES['pg']['OPTIONS']['pool']" in out
    assert "DATABASES['pg']: (wsgi_dbpool.E002) hold='transaction' needs" in out
    assert "DATABASES['default']: (wsgi_dbpool.W001) DATABASES['default']['CONN_MAX_AGE'] is 0" in out
    assert "DATABASES['manual']: (wsgi_dbpool.W002) hold='transaction' on 'manual'" in out
    assert "(wsgi_dbpool.W001) DATABASES['manual']" not in out and "W000" not in out
    assert "identified 4 issues" in out
    # Read from wsgi.py, which stopped at the middleware: nothing after it ran.
    assert not (tmp_path / "marker").exists()


def test_the_rules_follow_hold(tmp_path):
    out = manage_check(tmp_path, WRONG, "lazy").stderr
    assert "wsgi_dbpool.E001" in out and "wsgi_dbpool.W001" in out
    assert "wsgi_dbpool.E002" not in out and "wsgi_dbpool.W002" not in out


@pytest.mark.parametrize("hold", ["request", "transaction"])
def test_a_right_configuration_passes_and_ids_can_be_silenced(tmp_path, hold):
    clean = manage_check(tmp_path, RIGHT, hold)
    assert clean.returncode == 0, clean.stderr
    assert "System check identified no issues (0 silenced)." in clean.stdout
    every = ["wsgi_dbpool.E001", "wsgi_dbpool.E002", "wsgi_dbpool.W001", "wsgi_dbpool.W002"]
    silenced = manage_check(tmp_path, WRONG, "transaction", silenced=every)
    assert silenced.returncode == 0, silenced.stderr
    assert "System check identified no issues (4 silenced)." in silenced.stdout


def test_an_unimportable_wsgi_application_is_a_warning(tmp_path):
    (tmp_path / "proj").mkdir()
    done = manage_check(tmp_path, RIGHT, "no-such-hold")  # the knob check raises ValueError
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "(wsgi_dbpool.W000) could not import WSGI_APPLICATION 'proj.wsgi.application'" in out
    assert "ValueError: hold" in out
