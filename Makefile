# The two commands a new user needs:  `make demo`  and  `make test`.
# Each creates its own virtualenv and installs what it needs (MariaDB and friends via apt-get).
#
# PY and DJANGO pick the pair (default: the newest, Django 6.1 on Python 3.13); the venv's name
# carries both, so two interpreters never share one. LOWEST=1 installs the lowest versions the
# requirements allow (requirements-lowest.txt) instead of the newest.

PY ?= 3.13
DJANGO ?= 6.1
LOWEST ?=
# The interpreter: python3.X on PATH (a real one, not a pyenv shim that is not active), else
# pyenv's. Empty when neither exists; the venv rule then says what is missing.
PYTHON ?= $(shell for p in "$$(pyenv root 2>/dev/null)"/versions/$(PY).*/bin/python$(PY) \
	"$$(command -v python$(PY) 2>/dev/null)"; do [ -x "$$p" ] && "$$p" -c '' 2>/dev/null && \
	{ echo "$$p"; break; }; done)
VENV ?= .venv-py$(PY)-django$(DJANGO)$(if $(LOWEST),-lowest)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_PINS := $(if $(LOWEST),-c requirements-lowest.txt,"Django~=$(DJANGO).0")

.PHONY: demo storm worker test test-others test-one lint bench bench-smoke bench-overhead bench-instructions clean

$(STAMP): setup.py requirements-dev.txt requirements-lowest.txt
	@[ -n "$(PYTHON)" ] || { echo "Python $(PY) was not found: neither python$(PY) on PATH nor" \
		"pyenv's $(PY).x. Install it (e.g. 'pyenv install $(PY)'), or choose another with" \
		"PY=3.11 / PY=3.12, or point PYTHON=/path/to/python$(PY) at one." >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt $(PIP_PINS) -e .
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

## test: lint and the whole suite on the newest pair, in two lanes (the second one starts with
## Django's own test suite through the pool); beside them, a core selection on the other supported
## pairs plus one run with the lowest versions the requirements allow (their venvs build
## meanwhile). Output of the lanes beside is printed at the end, with the total time.
CORE := -m 'not slow and not demo and not celery'
CORE_FILES := tests/test_internals.py tests/test_backends.py tests/test_hold.py tests/test_gunicorn.py \
	tests/test_clean.py
# The second lane: Django's own suite through the pool, then the other long files (Celery, the
# demo in Chromium, the bench smoke, the packaging); the first lane has the rest.
LANE2_FILES := tests/test_django_suite.py tests/test_bench_smoke.py tests/test_celery.py tests/demo \
	tests/test_packaging.py
# The third lane, after the other pairs' runs: a long file of the newest pair's suite (the
# lanes end closer together; the first was the longest).
LANE3_FILES := tests/test_isolation_table.py
MAIN_ARGS := -m 'not bench' $(foreach f,$(LANE2_FILES) $(LANE3_FILES),--ignore=$(f))
OTHERS := $(shell mktemp -u /tmp/wsgi_dbpool-others.XXXXXX)
test:
	@started=$$(date +%s); \
	$(MAKE) --no-print-directory $(STAMP) || exit 1; \
	( $(MAKE) --no-print-directory test-others OTHERS_WAIT=$(OTHERS).apt > $(OTHERS).log 2>&1; \
	  echo $$? > $(OTHERS).rc ) & \
	$(BIN)/python -c "from testbed.servers import ensure_all_installed; ensure_all_installed()"; \
	touch $(OTHERS).apt; \
	( $(MAKE) --no-print-directory test-one PYTEST_ARGS="-m 'not bench' $(LANE2_FILES)" \
	  > $(OTHERS).suite.log 2>&1; \
	  echo $$? > $(OTHERS).suite.rc ) & \
	$(MAKE) --no-print-directory lint && $(MAKE) --no-print-directory test-one PYTEST_ARGS="$(MAIN_ARGS)"; \
	main=$$?; wait; \
	echo; echo "== beside it: Django's own suite through the pool, and the long files (6.1, 3.13) =="; \
	cat $(OTHERS).suite.log; suite=$$(cat $(OTHERS).suite.rc 2>/dev/null || echo 1); \
	echo; echo "== beside it: Django 5.2/Python 3.11, 6.0/3.12, the lowest versions, then $(LANE3_FILES) (6.1, 3.13) =="; \
	cat $(OTHERS).log; others=$$(cat $(OTHERS).rc 2>/dev/null || echo 1); rm -f $(OTHERS).*; \
	echo "make test: $$(( $$(date +%s) - started )) s; exit: suite $$main, second lane $$suite," \
	  "other pairs $$others"; \
	[ $$main -eq 0 ] && [ $$suite -eq 0 ] && [ $$others -eq 0 ]

# The venvs first (pip only: they build while the first suite runs), then, once the servers
# are installed (OTHERS_WAIT names the file that says so), the runs one after the other.
test-others:
	$(MAKE) --no-print-directory .venv-py3.11-django5.2/.installed PY=3.11 DJANGO=5.2
	$(MAKE) --no-print-directory .venv-py3.12-django6.0/.installed PY=3.12 DJANGO=6.0
	$(MAKE) --no-print-directory .venv-py3.11-django5.2-lowest/.installed PY=3.11 DJANGO=5.2 LOWEST=1
	@while [ -n "$(OTHERS_WAIT)" ] && [ ! -e "$(OTHERS_WAIT)" ]; do sleep 1; done
	$(MAKE) --no-print-directory test-one PY=3.11 DJANGO=5.2 PYTEST_ARGS="$(CORE) $(CORE_FILES)"
	$(MAKE) --no-print-directory test-one PY=3.12 DJANGO=6.0 PYTEST_ARGS="$(CORE) $(CORE_FILES)"
	$(MAKE) --no-print-directory test-one PY=3.11 DJANGO=5.2 LOWEST=1 PYTEST_ARGS="$(CORE) $(CORE_FILES)"
	$(MAKE) --no-print-directory test-one PYTEST_ARGS="-m 'not bench' $(LANE3_FILES)"

test-one: $(STAMP)
	$(BIN)/python -c "from testbed.mariadb import ensure_installed; ensure_installed()"
	$(BIN)/python -m gevent.monkey --module pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check wsgi_dbpool testbed tests bench demo
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	touch $@

## bench: wsgi_dbpool beside the alternatives (about 15 minutes; BENCH_ARGS=--quick: 2;
## BENCH_ARGS="--backend postgresql" for the PostgreSQL stacks). See docs/numbers.md.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.compare $(BENCH_ARGS)

## bench-smoke: the benchmarks' smokes that make test leaves out (PostgreSQL, sweep, profiler)
bench-smoke: $(BENCH_STAMP)
	$(BIN)/python -m gevent.monkey --module pytest -m bench tests/test_bench_smoke.py

## bench-overhead: the middleware's own cost per request beside SQLAlchemy's QueuePool
bench-overhead: $(STAMP)
	$(BIN)/python -m bench.overhead

## bench-instructions: the worker's CPU per request in instructions, beside persistent connections
## and Django's own pool (valgrind's callgrind, one client: the same count every run; ~12 minutes)
bench-instructions: $(BENCH_STAMP)
	$(BIN)/python -m bench.instructions $(BENCH_ARGS)

clean:
	rm -rf .venv-* build dist *.egg-info
