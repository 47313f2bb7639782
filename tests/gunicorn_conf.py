"""gunicorn settings for the integration tests: what the README recommends, plus a probe.

``worker_exit`` closes the pool, so a graceful stop says goodbye to the database.
``post_worker_init`` notes every ``sendfile()`` gunicorn makes into ``SENDFILE_LOG``,
so a test can tell that a file response took the zero-copy path.
"""

import os

worker_class = "gevent"
control_socket_disable = True
graceful_timeout = 10


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("TEST_SKIP_WORKER_EXIT"):
        return
    worker.wsgi.close()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    if os.environ.get("TEST_PREWARM_HOOK"):
        worker.wsgi.prewarm()  # in the worker: the master never connects
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from wsgi_dbpool.prometheus import export_multiprocess

        export_multiprocess(worker.wsgi, interval=0.2)
    log = os.environ.get("SENDFILE_LOG")
    if not log:
        return
    from gunicorn.http import wsgi

    original = wsgi.Response.sendfile

    def sendfile(self, respiter):  # type: ignore[no-untyped-def]
        sent = original(self, respiter)
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {sent}\n")
        return sent

    wsgi.Response.sendfile = sendfile
