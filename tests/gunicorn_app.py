"""The test site as gunicorn serves it: settings from the environment, then the one line.

``TEST_MARIADB_PORT`` points at the session's server. The module is imported by
gunicorn (in the master with ``--preload``, else in each worker after gevent patched).
"""

from __future__ import annotations

import os

from tests._proc_common import setup_django

setup_django()

from django.core.wsgi import get_wsgi_application  # noqa: E402

from wsgi_dbpool import PoolingMiddleware  # noqa: E402

application = PoolingMiddleware(
    get_wsgi_application(),
    size=int(os.environ.get("TEST_POOL_SIZE", "2")),
    max_outstanding=int(os.environ.get("TEST_POOL_MAX_OUTSTANDING", "4")),
    timeout=10,
    hold=os.environ.get("TEST_POOL_HOLD", "request"),  # type: ignore[arg-type]
    skip=lambda environ: environ["PATH_INFO"] == "/metrics/",
    prewarm=int(os.environ.get("TEST_PREWARM", "0")),
)
PID = os.getpid()
