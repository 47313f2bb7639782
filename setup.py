from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="wsgi_dbpool",
    version="0.1.0",
    description="A greenlet-shared Django database connection pool for gunicorn gevent workers, as WSGI middleware",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
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
