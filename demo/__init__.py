"""The demo: a small Django site on gunicorn gevent workers, pooled by wsgi_dbpool.

``python -m demo`` (or ``make demo``) migrates, seeds and serves it on
http://127.0.0.1:8000; ``python -m demo.storm`` shows the before/after under a burst.
"""
