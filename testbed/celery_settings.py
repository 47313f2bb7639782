"""Django settings of the Celery test worker (``DJANGO_SETTINGS_MODULE``, so that
Celery installs its Django fixup, as in a real project)."""

from __future__ import annotations

import os

SECRET_KEY = "tests-only"
INSTALLED_APPS: list[str] = []
USE_TZ = True
LOGGING_CONFIG = None
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "app",
        "USER": os.environ.get("TEST_MARIADB_USER", "app"),
        "PASSWORD": os.environ.get("TEST_MARIADB_USER", "app"),
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("TEST_MARIADB_PORT", "3306"),
        "CONN_MAX_AGE": 60,
        "OPTIONS": {"charset": "utf8mb4", "connect_timeout": 5},
    }
}
