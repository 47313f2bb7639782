"""The demo's wsgi.py: exactly what a user writes, plus knobs read from the environment.

POOL=off serves without the middleware (for the before/after comparison);
POOL_SIZE, POOL_MAX_OUTSTANDING, POOL_TIMEOUT and POOL_HOLD (request, lazy,
transaction) set the pool.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

application = get_wsgi_application()

if os.environ.get("POOL", "on") != "off":
    from wsgi_dbpool import PoolingMiddleware

    max_outstanding = os.environ.get("POOL_MAX_OUTSTANDING", "20")
    application = PoolingMiddleware(
        application,
        size=int(os.environ.get("POOL_SIZE", "4")),
        max_outstanding=int(max_outstanding) if max_outstanding != "none" else None,
        timeout=float(os.environ.get("POOL_TIMEOUT", "10")),
        hold=os.environ.get("POOL_HOLD", "request"),  # type: ignore[arg-type]
        # Health checks and the pool's own pages never queue behind a saturated pool.
        skip=lambda environ: environ.get("PATH_INFO") in ("/health", "/pool/", "/pool.json"),
    )
