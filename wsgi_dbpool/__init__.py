"""wsgi_dbpool: a greenlet-shared Django database connection pool, as WSGI middleware.

::

    from wsgi_dbpool import PoolingMiddleware
    application = PoolingMiddleware(get_wsgi_application(), size=4)
"""

from .errors import (
    DatabaseUnavailable,
    MaxHoldExceeded,
    PoolError,
    PoolTimeout,
    SessionStateError,
    TooManyWaiting,
)
from .middleware import PoolingMiddleware

__all__ = [
    "DatabaseUnavailable", "MaxHoldExceeded", "PoolError", "PoolTimeout", "PoolingMiddleware",
    "SessionStateError", "TooManyWaiting",
]
__version__ = "0.1.0"
