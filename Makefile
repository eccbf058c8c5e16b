# The README's commands. Each sets up the virtualenv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint migrations-check

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
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

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

migrations-check: install
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run
