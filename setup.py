import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# One version source: wsgi_dbpool/__init__.py (read as text: importing it needs Django).
VERSION = re.search(
    r'^__version__ = "([^"]+)"$', (HERE / "wsgi_dbpool" / "__init__.py").read_text(encoding="utf-8"), re.M
).group(1)

setup(
    name="wsgi_dbpool",
    version=VERSION,
    description="A greenlet-shared Django database connection pool for gunicorn gevent workers, as WSGI middleware",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["wsgi_dbpool", "wsgi_dbpool.*"]),
    package_data={"wsgi_dbpool": ["py.typed"]},
    python_requires=">=3.11",
    # The floors are the lowest versions that really work (make test runs them once):
    # - Django 5.2 LTS is the oldest Django still supported upstream (4.2 ended April 2026).
    #   "<7": Django numbers its releases by year after 6.x (the next major is 2027's), so the
    #   bound means "the releases this version was tested against, and their patch releases";
    #   a new Django major gets a release of ours after the suite ran on it.
    # - asgiref 3.8.1: Django 5.2's own floor; both shapes of its thread-local are handled.
    # - WebOb 1.8.9: the first that runs on Python 3.13, where the cgi module is gone.
    install_requires=["Django>=5.2,<7", "asgiref>=3.8.1", "WebOb>=1.8.9"],
    extras_require={
        "gevent": ["gevent>=24.2.1", "gunicorn[gevent]>=22"],
        # PyMySQL 1.1.0-1.1.2 say they are mysqlclient 1.4.6, which Django 6 refuses.
        "mysql": ["PyMySQL>=1.1.3"],
        "postgresql": ["psycopg>=3.1.14"],
        "prometheus": ["prometheus_client>=0.17"],
        # 1.23: the first API with explicit_bucket_boundaries_advisory (the pool's buckets)
        "otel": ["opentelemetry-api>=1.23"],
        "celery": ["celery>=5.4"],
    },
    classifiers=[
        "Framework :: Django",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "Framework :: Django :: 6.1",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Database",
        "Typing :: Typed",
    ],
)
