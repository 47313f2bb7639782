"""Settings for Django's ``tests/runtests.py`` against a throwaway MariaDB (its port in
``WSGI_DBPOOL_SUITE_PORT``), the same for the plain and the pooled runs."""

from __future__ import annotations

import os

import pymysql

pymysql.install_as_MySQLdb()


def _database(name: str) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.mysql",
        "NAME": name,
        "USER": "root",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": os.environ["WSGI_DBPOOL_SUITE_PORT"],
        "CONN_MAX_AGE": 60,  # what a pooled alias has; the plain run gets it too
        "OPTIONS": {"charset": "utf8mb4"},
        "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_general_ci"},
    }


DATABASES = {"default": _database("django_default"), "other": _database("django_other")}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
USE_TZ = False
TEST_RUNNER = "tests.django_suite.runner.PooledRunner"
