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
    python_requires=">=3.10",
    install_requires=["Django>=4.2,<6", "WebOb>=1.8"],
    extras_require={
        "gevent": ["gevent>=23.9", "gunicorn[gevent]>=22"],
        "mysql": ["PyMySQL>=1.1"],
        "prometheus": ["prometheus_client>=0.17"],
        "celery": ["celery>=5.4"],
    },
    classifiers=[
        "Framework :: Django",
        "Framework :: Django :: 4.2",
        "Framework :: Django :: 5.2",
        "Programming Language :: Python :: 3",
        "Topic :: Database",
        "Typing :: Typed",
    ],
)
