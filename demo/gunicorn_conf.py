"""gunicorn settings for the demo: gevent workers, and a clean pool on worker exit."""

worker_class = "gevent"
worker_connections = 1000
graceful_timeout = 10
accesslog = None
control_socket_disable = True  # gunicorn >= 24: no shared ~/.gunicorn control socket


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Share this worker's pool numbers with the live pool page (every worker's shows)."""
    from demo.workers import publish

    publish(worker.wsgi)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Close the pool's idle connections so the database sees a clean goodbye."""
    from demo.workers import remove

    remove()
    application = getattr(worker.wsgi, "close", None) and worker.wsgi
    if application is not None:
        application.close()
