"""wsgi_dbpool: a greenlet-shared Django database connection pool, as WSGI middleware.

::

    from wsgi_dbpool import PoolingMiddleware
    application = PoolingMiddleware(get_wsgi_application(), size=4)
"""

from .errors import PoolError, PoolTimeout, SessionStateError
from .middleware import PoolingMiddleware

__all__ = ["PoolError", "PoolTimeout", "PoolingMiddleware", "SessionStateError"]
__version__ = "0.1.0"
