# The two commands a new user needs:  `make demo`  and  `make test`.
# Each creates its own virtualenv and installs what it needs (MariaDB via apt-get).

PYTHON ?= python3
DJANGO ?= 5.2
VENV ?= .venv-django$(DJANGO)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo storm worker test test-one lint bench bench-overhead clean

$(STAMP): setup.py requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt "Django~=$(DJANGO).0" -e .
	touch $@

## demo: the demo site on http://127.0.0.1:8000 (SQLite; DEMO_DB=mariadb for a throwaway MariaDB)
demo: $(STAMP)
	$(BIN)/python -m demo

## storm: the before/after burst against the demo on a throwaway MariaDB (the slow view, then the
## "external API" view in the three hold modes)
storm: $(STAMP)
	$(BIN)/python -m demo.storm
	$(BIN)/python -m demo.storm --view api --chart docs/storm-api.png

## worker: a Celery gevent worker making the guestbook's export in the background (throwaway Redis)
worker: $(STAMP)
	$(BIN)/python -m demo.worker

## test: lint, then the whole suite on Django 5.2 and 4.2, against a throwaway MariaDB
test:
	$(MAKE) lint DJANGO=5.2
	$(MAKE) test-one DJANGO=5.2
	$(MAKE) test-one DJANGO=4.2 PYTEST_ARGS="-m 'not slow and not demo'"  # the long, version-agnostic ones once

test-one: $(STAMP)
	$(BIN)/python -c "from tests.mariadb import ensure_installed; ensure_installed()"
	$(BIN)/python -m gevent.monkey --module pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check wsgi_dbpool tests bench demo
	$(BIN)/mypy

## bench: wsgi_dbpool beside the alternatives (about 15 minutes; BENCH_ARGS=--quick: 2)
bench: $(STAMP)
	$(BIN)/python -m bench.compare $(BENCH_ARGS)

## bench-overhead: the middleware's own cost per request beside SQLAlchemy's QueuePool
bench-overhead: $(STAMP)
	$(BIN)/python -m bench.overhead

clean:
	rm -rf .venv-django* build dist *.egg-info
