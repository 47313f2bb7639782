"""``INSTALLED_APPS = [..., "wsgi_dbpool"]``: the pool's system checks in ``manage.py check``."""

from __future__ import annotations

from django.apps import AppConfig


class WsgiDbpoolConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    """No models; registers :func:`wsgi_dbpool.checks.check_pools` (tag ``wsgi_dbpool``)."""

    name = "wsgi_dbpool"
    verbose_name = "wsgi_dbpool"

    def ready(self) -> None:
        from django.core import checks as django_checks

        from .checks import check_pools

        django_checks.register(check_pools, "wsgi_dbpool")
