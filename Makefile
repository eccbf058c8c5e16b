# The README's commands. Each sets up the virtualenv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test fleet lint migrations-check lock audit

# requirements-dev.txt is the product's locked tree plus the test tools, every
# package pinned with its hashes.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# Development server and a background worker: SQLite file and the offline
# echo provider unless the environment says otherwise. Ctrl-C stops both.
run: install
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput
	DEBUG=$${DEBUG:-1} $(PY) manage.py collectstatic --noinput --verbosity 0
	export DEBUG=$${DEBUG:-1}; \
	$(PY) manage.py worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/gunicorn -c gunicorn.conf.py --bind $(HOST):$(PORT) chatbot_project.wsgi

# Tests run with DEBUG off, as in production; the key below signs test tokens only.
test: install
	SECRET_KEY=$${SECRET_KEY:-test-only-insecure-signing-key-0123456789abcdef} $(PY) -m pytest $(PYTEST_ARGS)

# Web instances and workers behind nginx on this machine, on one PostgreSQL
# (DATABASE_URL) and one Redis; Ctrl-C stops them all (deploy/fleet.py --help).
WEB ?= 2
WORKERS ?= 2
fleet: install
	$(PY) deploy/fleet.py --web $(WEB) --workers $(WORKERS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

migrations-check: install
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

# Re-resolves requirements*.in into the hashed locks (needs the package index).
lock: install
	$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		-o requirements.txt requirements.in
	$(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		-o requirements-dev.txt requirements-dev.in

# Known advisories in the locked trees (needs internet: pip-audit asks the
# advisory databases, so it cannot run on a machine without it).
audit: install
	$(PY) -m pip install --quiet pip-audit
	$(VENV)/bin/pip-audit --strict --require-hashes -r requirements.txt
	$(VENV)/bin/pip-audit --strict --require-hashes -r requirements-dev.txt
